"""Background threads of a node: a private asyncio loop for hivemind's async P2P, and a periodic worker.

Training, routing and validation loops are plain synchronous code; the P2P objects they talk through are bound to
one event loop. `LoopThread` owns that loop: coroutines are submitted with `run` (blocking) or `submit` (future).
`replicate_p2p` gives each loop its own connection to a DHT's daemon (hivemind's `DHT.replicate_p2p` caches one
replica per process, which breaks as soon as a server and a client in one process sit on different loops).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hivemind.dht import DHT, DHTNode
from hivemind.p2p import P2P
from hivemind.utils.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # hivemind depends on it; noticeably lower per-call overhead than the default loop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class LoopThread:
    """An event loop running forever on its own daemon thread until `stop()`."""

    def __init__(self, name: str = "hivemoe-loop"):
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; the returned future carries its result or exception."""
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("event loop thread is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for it; raises its exception, or TimeoutError after `timeout` seconds."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop: this would deadlock")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None

    def stop(self) -> None:
        """Cancel what is still running on the loop, then stop and join the thread (idempotent)."""
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(5)
        except Exception as e:  # a stuck task must not keep the process from exiting
            logger.debug("loop cancel on stop: %r", e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _daemon_maddr(_dht: DHT, node: DHTNode) -> Multiaddr:
    return node.p2p.daemon_listen_maddr


async def replicate_p2p(dht: DHT) -> P2P:
    """A new P2P client of `dht`'s daemon bound to the running loop; shut it down to close the connection only."""
    maddr = await asyncio.get_running_loop().run_in_executor(None, dht.run_coroutine, _daemon_maddr)
    return await P2P.replicate(maddr)


class PeriodicThread:
    """A daemon thread calling `step()` every `interval` seconds until `stop()`; errors are logged, not fatal."""

    def __init__(self, name: str, interval: float):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:
                logger.warning("%s: %s", self._thread.name, e, exc_info=logger.isEnabledFor(logging.DEBUG))
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
