"""Signature checks of stored blocks in worker processes, so `verify_ledger` uses every core.

Ed25519 verification is most of a replay's cost and needs no state: a record's signature is good or bad whatever
came before it. Workers read ranges of blocks from the file themselves (read-only) and return, per block, the
indices of signed records whose signature is bad; the replay consults those verdicts in block order, so the first
bad block and its reason are exactly what a sequential check would report. A block no worker vouched for (the
first chunk, which the replay checks itself while the workers start; a failed worker; a block appended after a
worker read the file) is simply checked inline.

Workers are forked when this process runs a single thread (nothing can hold a lock across the fork, and a fork
costs milliseconds where a spawned worker spends a second importing numpy and the crypto libraries), spawned
otherwise. A block whose text holds no "signature" (and no escape that could spell it) has no signature to check
and is not parsed: every signed record needs that field, and one without it is refused by the replay's field
checks before any verdict is consulted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Container
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from moe.ledger.fields import RecordError, strict_json
from moe.ledger.records import SIGNED_KINDS, signature_ok

logger = logging.getLogger(__name__)


def check_range(path: str, lo: int, hi: int) -> tuple[list[int], dict[int, list[int]]]:
    """Heights in [lo, hi] that were read, and per height the indices of signed records with a bad signature.

    Blocks whose records do not parse as a JSON list are left out of the heights (the replay reports them).
    """
    checked: list[int] = []
    bad: dict[int, list[int]] = {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT height, records FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height", (lo, hi))
        for height, text in cur:
            if type(text) is str and "signature" not in text and "\\" not in text:
                checked.append(height)  # nothing here can carry a signature (see the module docstring)
                continue
            try:
                records = strict_json(text)
            except RecordError:
                continue
            if not isinstance(records, list):
                continue
            for i, rec in enumerate(records):
                if isinstance(rec, dict) and rec.get("kind") in SIGNED_KINDS and not signature_ok(rec):
                    bad.setdefault(height, []).append(i)
            checked.append(height)
    finally:
        conn.close()
    return checked, bad


def default_workers() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ParallelSignatures:
    """Verdicts on every stored signature, computed ahead of the replay by `workers` processes in chunks."""

    def __init__(self, path: str | os.PathLike, first: int, last: int, workers: int, chunk_blocks: int = 1000):
        self.first, self.chunk = first, max(1, chunk_blocks)
        method = (
            "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        self._futures: dict[int, Future] = {}
        try:
            for c in range(1, (last - first) // self.chunk + 1):  # chunk 0 is checked inline while workers start
                lo = first + c * self.chunk
                self._futures[c] = self._pool.submit(check_range, str(Path(path)), lo, lo + self.chunk - 1)
        except BaseException:
            self.close()
            raise
        self._current = -1
        self._checked: set[int] = set()
        self._bad: dict[int, list[int]] = {}

    def bad_at(self, height: int) -> Container[int] | None:
        """Indices of block `height`'s records with bad signatures, or None if no worker checked that block."""
        c = (height - self.first) // self.chunk
        if c != self._current:
            self._current, self._checked, self._bad = c, set(), {}
            fut = self._futures.pop(c, None)
            if fut is not None:
                try:
                    checked, self._bad = fut.result()
                    self._checked = set(checked)
                except Exception as e:  # a dead worker only costs speed: the replay checks these blocks itself
                    logger.warning("signature worker failed on blocks from %d (%s); checking inline", height, e)
        if height not in self._checked:
            return None
        return self._bad.get(height, ())

    def close(self) -> None:
        for fut in self._futures.values():
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
