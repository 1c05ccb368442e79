"""moe/net/serial_pipe.py: many threads sending kilobyte messages down one pipe at once, as a node's threads call its
hivemind DHT process. Through a SerialSender every message arrives whole; the DHT nodes use one (`OwnedDHT`)."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from hivemind.utils import get_dht_time

from moe.net.join import start_bootstrap_dht
from moe.net.serial_pipe import SerialSender, WholeMessageReceiver

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


def _recv_while_a_message_is_half_written(receive) -> object:
    """What `receive(reader)` gets when the reader's fd is non-blocking (as uvloop leaves hivemind's DHT process's
    pipe) and only the first half of a message has been written, the rest following 2 s later: True if the whole
    message, else what was raised."""
    import os
    import pickle
    import struct

    reader, writer = Pipe(duplex=False)
    os.set_blocking(reader.fileno(), False)
    body = bytes(range(256)) * 64  # 16 KiB: fits the pipe's buffer, so the writes below never block
    payload = pickle.dumps(body)
    half = len(payload) // 2
    os.write(writer.fileno(), struct.pack("!i", len(payload)) + payload[:half])  # multiprocessing's framing
    rest = threading.Timer(2.0, os.write, args=(writer.fileno(), payload[half:]))
    rest.start()
    try:
        got = receive(reader)
    except BlockingIOError as e:
        got = e
    rest.join()
    return got == body if isinstance(got, bytes) else got


def test_a_non_blocking_reader_fails_mid_message_and_the_whole_message_receiver_does_not():
    """The attack (a kilobytes-large DHT call on a loaded machine killed a router's DHT process): hivemind reads its
    pipe from a non-blocking fd, so a message still being written raises BlockingIOError half read, and the stream is
    lost. WholeMessageReceiver waits for the rest."""
    assert isinstance(_recv_while_a_message_is_half_written(lambda r: r.recv()), BlockingIOError)
    assert _recv_while_a_message_is_half_written(lambda r: WholeMessageReceiver(r).recv()) is True


def test_the_dht_process_receives_through_a_whole_message_receiver():
    """A 200 KB value stored and read back through a real DHT node: every message crosses the pipe whole."""
    dht = start_bootstrap_dht()
    try:
        value = bytes(range(256)) * 800
        assert dht.store("hivemoe-test/large", value, expiration_time=get_dht_time() + 60)
        assert dht.get("hivemoe-test/large", latest=True).value == value
    finally:
        dht.shutdown()
