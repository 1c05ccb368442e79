"""Sending to a hivemind DHT process from many threads without corrupting the pipe between them.

hivemind's `DHT.get` and `DHT.store` pickle each call onto one multiprocessing pipe with no lock. A message longer
than the pipe's atomic write size (4 KiB) goes out in several writes, so two threads sending at once interleave
their bytes; the DHT process then fails to unpickle the stream, dies, and every call after that waits forever. A
node sends from several threads (the directory refresh, the heartbeat, the main work), and a router's traffic slots
are kilobytes each: the default `adversaries=all` run lost its router's DHT this way. Every send goes through one lock.
"""

from __future__ import annotations

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
