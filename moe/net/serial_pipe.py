"""Sending to a hivemind DHT process from many threads without corrupting the pipe between them.

hivemind's `DHT.get` and `DHT.store` pickle each call onto one multiprocessing pipe with no lock. A message longer
than the pipe's atomic write size (4 KiB) goes out in several writes, so two threads sending at once interleave
their bytes; the DHT process then fails to unpickle the stream, dies, and every call after that waits forever. A
node sends from several threads (the directory refresh, the heartbeat, the main work), and a router's traffic slots
are kilobytes each: the default `adversaries=all` run lost its router's DHT this way. Every send goes through one lock.

The DHT process reads its end from a non-blocking file descriptor (uvloop watches it), so a message still being
written when the reader wakes raises BlockingIOError half read; hivemind logs it and reads on from the middle of the
message, fails to unpickle, and its process dies (a loaded machine killed a router's DHT this way, mid-publication of
its traffic). `WholeMessageReceiver` reads each message in blocking mode: once one has begun, the rest is coming.
"""

from __future__ import annotations

import os
import threading
from multiprocessing.connection import Connection


class SerialSender:
    """The sending end of a pipe whose `send`s never interleave; everything else passes through."""

    def __init__(self, connection: Connection):
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, obj: object) -> None:
        with self._lock:
            self._connection.send(obj)

    def __getattr__(self, name: str):
        return getattr(self._connection, name)


class WholeMessageReceiver:
    """The receiving end of a pipe whose `recv` waits for the whole message even when its fd is non-blocking."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def recv(self) -> object:
        fd = self._connection.fileno()
        was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, True)
        try:
            return self._connection.recv()
        finally:
            os.set_blocking(fd, was_blocking)

    def __getattr__(self, name: str):
        return getattr(self._connection, name)
