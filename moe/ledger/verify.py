"""Independent check of a ledger file: every hash, every signature, every epoch and emission re-derived.

Opens the file read-only and replays it from genesis with the same transition code the producer uses; the first
block that fails (hash, link, height gap, signature, invalid record, or derived record that differs from replay)
is named with its height and a one-line reason, also for crafted content (NaN, huge or deeply nested values, wrong
types), never an exception. The accounts table must also agree with the replayed balances, and every address's
holdings with a double-entry tally of the records (moe.ledger.reconcile: emissions + payments = balance changes).
A file cannot vouch for its own genesis: pass the expected `genesis` config or `genesis_hash` to catch a rewritten,
re-hashed chain. On a long ledger the signatures are checked by worker processes ahead of the replay
(`moe.ledger.sigcheck`); the report is the same as a sequential check's.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from moe.ledger.chain import GENESIS_PREV_HASH, LedgerError, check_block, genesis_mismatch, read_blocks
from moe.ledger.fields import describe
from moe.ledger.genesis import GenesisConfig
from moe.ledger.reconcile import Tally
from moe.ledger.sigcheck import ParallelSignatures, default_workers
from moe.ledger.state import LedgerState

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Outcome of `verify_ledger`."""

    ok: bool
    """True when every block and the accounts table check out."""
    blocks: int
    """Blocks that verified before the first bad one (all of them when ok)."""
    head_hash: str
    """Hash of the last good block."""
    bad_height: int | None = None
    """Height of the first bad block, or None."""
    reason: str = ""
    """Why that block is bad, in one line."""
    seconds: float = 0.0
    """Wall time of the check."""
    state: LedgerState | None = None
    """Replayed state after the last good block."""
    emitted: int = 0
    """Rao the epochs paid out, by the tally."""
    payments: int = 0
    """Rao settlements moved from consumers' escrows to experts, by the tally."""

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.blocks} blocks, head {self.head_hash}"
        return f"bad block {self.bad_height}: {self.reason}"


def verify_ledger(
    path: str | os.PathLike,
    *,
    genesis: GenesisConfig | None = None,
    genesis_hash: str | None = None,
    workers: int | None = None,
    chunk_blocks: int = 1000,
) -> VerifyReport:
    """Verify the ledger at `path`; never raises for a bad file, the report says what is wrong.

    `genesis` (the expected record; the timestamp may differ) or `genesis_hash` (the expected block 0 hash) pin the
    chain: a block 0 that differs is reported bad. `workers` processes check signatures ahead of the replay,
    `chunk_blocks` blocks at a time (None: one per core but the replay's when the ledger spans more than two chunks;
    0: all inline); the replay checks inline any chunk it reaches before a worker has claimed it.
    The report does not depend on either.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if not path.exists():
        return VerifyReport(False, 0, "", 0, f"no ledger file at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    state: LedgerState | None = None
    prev, last_ts, n = GENESIS_PREV_HASH, float("-inf"), 0
    sigs: ParallelSignatures | None = None
    tally = Tally()

    def bad(height: int, reason: str) -> VerifyReport:
        logger.warning("ledger %s: bad block %d: %s", path, height, reason)
        return VerifyReport(False, n, prev, height, reason, time.perf_counter() - t0, state)

    try:
        try:
            sigs = _start_workers(conn, path, workers, chunk_blocks)
            for blk in read_blocks(conn, share_repeats=True):
                expected = 0 if state is None else state.height + 1
                if type(blk.height) is int and blk.height > expected:
                    return bad(expected, f"block {expected} is missing (next stored block is {blk.height})")
                verdicts = sigs.bad_at(blk.height) if sigs is not None and type(blk.height) is int else None
                result = check_block(blk, state, prev, last_ts, bad_signatures=verdicts)
                if isinstance(result, str):
                    return bad(expected, result)
                mismatch = genesis_mismatch(blk, genesis, genesis_hash) if state is None else ""
                if mismatch:
                    return bad(0, mismatch)
                state, prev, last_ts, n = result, blk.hash, blk.timestamp, n + 1
                for rec in blk.records:
                    tally.record(rec)
            if state is None:
                return bad(0, "ledger holds no blocks")
            mismatch = _accounts_mismatch(conn, state) or tally.mismatch(state)
            if mismatch:
                return bad(state.height, mismatch)
        except (LedgerError, sqlite3.DatabaseError) as e:
            return bad(0 if state is None else state.height + 1, str(e))
    finally:
        if sigs is not None:
            sigs.close()
        conn.close()
    return VerifyReport(
        True, n, prev, None, "", time.perf_counter() - t0, state, emitted=tally.emitted, payments=tally.payments
    )


def _start_workers(
    conn: sqlite3.Connection, path: Path, workers: int | None, chunk_blocks: int
) -> ParallelSignatures | None:
    """Signature workers for the stored height range, or None when checking inline is the better deal."""
    first, last = conn.execute("SELECT MIN(height), MAX(height) FROM blocks").fetchone()
    if not isinstance(first, int) or not isinstance(last, int):
        return None
    if workers is None:
        workers = default_workers() if last - first + 1 > 2 * chunk_blocks else 0
    if workers <= 0 or last - first < chunk_blocks:
        return None
    try:
        return ParallelSignatures(path, first, last, workers, chunk_blocks)
    except Exception as e:  # e.g. inside a daemonic process, which may not start children: check inline
        logger.warning("cannot start signature workers (%s); checking signatures inline", e)
        return None


def _accounts_mismatch(conn: sqlite3.Connection, st: LedgerState) -> str:
    """A one-line description of the first accounts row that disagrees with the replayed state, or ""."""
    stored: dict[str, tuple[int, int]] = {}
    for addr, balance, stake in conn.execute("SELECT address, balance, stake FROM accounts"):
        if type(addr) is not str or type(balance) is not int or type(stake) is not int:
            return f"accounts table has a malformed row for {describe(addr)}"
        stored[addr] = (balance, stake)
    for addr in sorted(set(stored) | set(st.balances) | set(st.stakes)):
        want = (st.balances.get(addr, 0), st.stakes.get(addr, 0))
        if stored.get(addr, (0, 0)) != want:
            return f"accounts table disagrees with replay for {addr[:16]}: {stored.get(addr)} != {want}"
    return ""
