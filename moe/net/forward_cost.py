"""What a forward costs this server, learned from the ones it ran, so short ones can skip the worker thread.

A forward handed to the worker pool and back crosses two threads (about 0.3 ms each way on a loaded 2-core machine,
more than a small expert's whole forward). A server computing a forward it expects to be short on its event loop
itself saves both hand-offs, and stalls the loop, which also reads other callers' requests, for no longer than the
forward. The estimate is an exponential average of seconds per position: per-call overheads make it overestimate
small requests, which errs on the side of the worker thread.
"""

from __future__ import annotations

import threading


class ForwardCost:
    """Seconds per request position, averaged over recent forwards (thread-safe)."""

    def __init__(self, smoothing: float = 0.2):
        self.smoothing = smoothing
        self._seconds_per_position: float | None = None
        self._lock = threading.Lock()

    def observe(self, positions: int, seconds: float) -> None:
        if positions <= 0 or seconds < 0:
            return
        rate = seconds / positions
        with self._lock:
            old = self._seconds_per_position
            self._seconds_per_position = rate if old is None else old + self.smoothing * (rate - old)

    def expected_seconds(self, positions: int) -> float | None:
        """Expected seconds of a forward over `positions`, or None before the first forward was measured."""
        rate = self._seconds_per_position
        return None if rate is None else rate * positions

    def is_short(self, positions: int, limit_seconds: float) -> bool:
        """True when a forward over `positions` is expected to take at most `limit_seconds` (never before a first
        measurement, nor for a limit of 0)."""
        expected = self.expected_seconds(positions)
        return expected is not None and limit_seconds > 0 and expected <= limit_seconds
