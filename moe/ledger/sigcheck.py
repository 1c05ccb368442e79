"""Signature checks of stored blocks in worker processes, so `verify_ledger` uses every core.

Ed25519 verification is most of a replay's cost and needs no state: a record's signature is good or bad whatever
came before it. The height range is cut into chunks; workers claim chunks in order from a shared counter, read
them from the file themselves (read-only) and return, per block, the indices of signed records whose signature is
bad. The replay consults those verdicts in block order, so the first bad block and its reason are exactly what a
sequential check would report. When the replay reaches a chunk no worker has claimed yet, it claims it and checks
those blocks inline: the replay never waits on a worker that has fallen behind, and the work balances itself
between the replay and the workers whatever their relative speed. One worker per core but the replay's is the
default, so the replay, the one sequential part, keeps a core to itself. A block no worker vouched for (the first
chunk, a stolen chunk, a failed worker, a block appended after a worker read the file) is simply checked inline.

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
import queue
import sqlite3
import threading
from collections.abc import Container
from pathlib import Path
from typing import Any

from moe.ledger.fields import RecordError, strict_json
from moe.ledger.records import SIGNED_KINDS, signature_ok

logger = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 0.5
"""How often the replay, waiting for a chunk a worker claimed, checks that the worker is still alive."""


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


def claim_chunks(
    path: str, first: int, chunk: int, n_chunks: int, slot: int, counter: Any, claimed: Any, out: Any
) -> None:
    """A worker's loop: claim the next unclaimed chunk from `counter` (noting it in `claimed[slot]`), check it and
    put (chunk, check_range's result, or None when the check failed) on `out`, until no chunk is left."""
    while True:
        with counter.get_lock():
            c = counter.value
            if c >= n_chunks:
                return
            counter.value = c + 1
            claimed[slot] = c
        lo = first + c * chunk
        try:
            result = check_range(path, lo, lo + chunk - 1)
        except Exception as e:  # the replay checks this chunk itself
            logger.warning("signature check of blocks %d to %d failed (%s)", lo, lo + chunk - 1, e)
            result = None
        out.put((c, result))


def default_workers() -> int:
    """Worker processes for the cores this process may run on: all but the replay's own."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(cores - 1, 1)


class ParallelSignatures:
    """Verdicts on every stored signature, computed ahead of the replay by `workers` processes in chunks.

    Ask `bad_at` in increasing height order, as a replay does: reaching a chunk nobody claimed makes it the caller's.
    """

    def __init__(self, path: str | os.PathLike, first: int, last: int, workers: int, chunk_blocks: int = 1000):
        self.first, self.chunk = first, max(1, chunk_blocks)
        n_chunks = (last - first) // self.chunk + 1
        method = (
            "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        ctx = multiprocessing.get_context(method)
        self._counter = ctx.Value("q", 1)  # chunk 0 is the replay's: it checks it while the workers start
        self._claimed = ctx.Array("q", [-1] * workers, lock=False)
        self._results: Any = ctx.Queue()
        self._workers = [
            ctx.Process(
                target=claim_chunks,
                args=(str(Path(path)), first, self.chunk, n_chunks, i, self._counter, self._claimed, self._results),
                daemon=True,
            )
            for i in range(workers)
        ]
        try:
            for w in self._workers:
                w.start()
        except BaseException:
            self.close()
            raise
        self._done: dict[int, tuple[list[int], dict[int, list[int]]] | None] = {}
        self._current = -1
        self._checked: set[int] = set()
        self._bad: dict[int, list[int]] = {}

    def bad_at(self, height: int) -> Container[int] | None:
        """Indices of block `height`'s records with bad signatures, or None if no worker checked that block."""
        c = (height - self.first) // self.chunk
        if c != self._current:
            self._current, self._checked, self._bad = c, set(), {}
            result = self._result_of(c)
            if result is not None:
                checked, self._bad = result
                self._checked = set(checked)
        if height not in self._checked:
            return None
        return self._bad.get(height, ())

    def _result_of(self, c: int) -> tuple[list[int], dict[int, list[int]]] | None:
        """A worker's verdicts on chunk `c`, waiting for them if a live worker holds it; None when the replay
        checks it itself (it claims the chunk when nobody has)."""
        if c <= 0:  # before the range, or chunk 0, which the workers leave to the replay
            return None
        with self._counter.get_lock():
            if self._counter.value <= c:
                self._counter.value = c + 1  # nobody holds it (chunks are claimed in order): the replay's now
                return None
        while c not in self._done:
            try:
                got, result = self._results.get(timeout=WAIT_SLICE_SECONDS)
            except queue.Empty:
                held = zip(self._workers, self._claimed, strict=True)
                if any(h == c and not w.is_alive() for w, h in held) or not any(w.is_alive() for w in self._workers):
                    logger.warning("signature worker lost blocks from %d; checking inline", self._first_of(c))
                    return None
                continue
            self._done[got] = result
        result = self._done.pop(c)
        if result is None:
            logger.warning("signature worker failed on blocks from %d; checking inline", self._first_of(c))
        return result

    def _first_of(self, c: int) -> int:
        return self.first + c * self.chunk

    def close(self) -> None:
        """Stop the workers: they only read the file, so ending one mid-chunk loses nothing."""
        for w in self._workers:
            if w.pid is not None:
                if w.is_alive():
                    w.terminate()  # a worker blocked writing results nobody will read would never exit by itself
                w.join()
        self._results.close()
        self._results.cancel_join_thread()
