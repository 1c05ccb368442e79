"""moe/net/serial_pipe.py: many threads sending kilobyte messages down one pipe at once, as a node's threads call its
hivemind DHT process. Through a SerialSender every message arrives whole; the DHT nodes use one (`OwnedDHT`)."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from moe.net.join import start_bootstrap_dht
from moe.net.serial_pipe import SerialSender

THREADS, MESSAGES, SIZE = 4, 25, 20_000  # five times the pipe's atomic write size


def _send_from_threads(send) -> None:
    def run(t: int) -> None:
        for i in range(MESSAGES):
            send((t, i, bytes([t]) * SIZE))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_concurrent_large_sends_arrive_whole():
    reader, writer = Pipe(duplex=False)
    sender = SerialSender(writer)
    received = []
    drain = threading.Thread(
        target=lambda: received.extend(reader.recv() for _ in range(THREADS * MESSAGES)), daemon=True
    )
    drain.start()
    _send_from_threads(sender.send)
    drain.join(timeout=60)
    assert not drain.is_alive() and len(received) == THREADS * MESSAGES
    assert all(body == bytes([t]) * SIZE for t, _, body in received)
    assert sorted((t, i) for t, i, _ in received) == [(t, i) for t in range(THREADS) for i in range(MESSAGES)]


def test_every_dht_node_sends_through_one_lock():
    dht = start_bootstrap_dht()
    try:
        assert isinstance(dht._outer_pipe, SerialSender)
    finally:
        dht.shutdown()


def test_serial_sender_passes_everything_but_send_through():
    a, b = Pipe()
    sender = SerialSender(a)
    sender.send({"x": 1})
    assert b.recv() == {"x": 1} and sender.poll() is False and sender.fileno() == a.fileno()
