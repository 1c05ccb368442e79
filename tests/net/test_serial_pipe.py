"""moe/net/serial_pipe.py: many threads storing kilobyte values into one real DHT at once. Without the lock their
pickled calls interleave on hivemind's pipe and the DHT process dies (every later call hangs); with it every store
lands."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from hivemind.utils import get_dht_time

from moe.net.join import start_bootstrap_dht
from moe.net.serial_pipe import SerialSender


def test_concurrent_large_stores_all_land_and_the_dht_stays_up():
    dht = start_bootstrap_dht()
    try:
        futures, lock = [], threading.Lock()

        def store_many(t: int) -> None:
            for i in range(20):
                value = bytes([t]) * 20_000  # five times the pipe's atomic write size
                f = dht.store(f"serial-test/{t}/{i}", value, get_dht_time() + 60, return_future=True)
                with lock:
                    futures.append(f)

        threads = [threading.Thread(target=store_many, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert all(f.result(timeout=60) for f in futures) and len(futures) == 80
        assert dht.is_alive() and dht.get("serial-test/3/19").value == bytes([3]) * 20_000
    finally:
        dht.shutdown()


def test_serial_sender_passes_everything_but_send_through():
    a, b = Pipe()
    sender = SerialSender(a)
    sender.send({"x": 1})
    assert b.recv() == {"x": 1} and sender.poll() is False and sender.fileno() == a.fileno()
