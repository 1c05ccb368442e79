"""Independent check of a ledger file: every hash, every signature, every epoch and emission re-derived.

Opens the file read-only and replays it from genesis with the same transition code the producer uses; the first
block that fails (hash, link, height gap, signature, invalid record, or derived record that differs from replay)
is named with its height and a one-line reason. The accounts table must also agree with the replayed balances.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from moe.ledger.chain import GENESIS_PREV_HASH, LedgerError, check_block, read_blocks
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

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.blocks} blocks, head {self.head_hash}"
        return f"bad block {self.bad_height}: {self.reason}"


def verify_ledger(path: str | os.PathLike) -> VerifyReport:
    """Verify the ledger at `path`; never raises for a bad file, the report says what is wrong."""
    t0 = time.perf_counter()
    path = Path(path)
    if not path.exists():
        return VerifyReport(False, 0, "", 0, f"no ledger file at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    state: LedgerState | None = None
    prev, last_ts, n = GENESIS_PREV_HASH, float("-inf"), 0

    def bad(height: int, reason: str) -> VerifyReport:
        logger.warning("ledger %s: bad block %d: %s", path, height, reason)
        return VerifyReport(False, n, prev, height, reason, time.perf_counter() - t0, state)

    try:
        try:
            for blk in read_blocks(conn):
                expected = 0 if state is None else state.height + 1
                if blk.height > expected:
                    return bad(expected, f"block {expected} is missing (next stored block is {blk.height})")
                result = check_block(blk, state, prev, last_ts)
                if isinstance(result, str):
                    return bad(blk.height, result)
                state, prev, last_ts, n = result, blk.hash, blk.timestamp, n + 1
            if state is None:
                return bad(0, "ledger holds no blocks")
            mismatch = _accounts_mismatch(conn, state)
            if mismatch:
                return bad(state.height, mismatch)
        except (LedgerError, sqlite3.DatabaseError) as e:
            return bad(0 if state is None else state.height + 1, str(e))
    finally:
        conn.close()
    return VerifyReport(True, n, prev, None, "", time.perf_counter() - t0, state)


def _accounts_mismatch(conn: sqlite3.Connection, st: LedgerState) -> str:
    """A one-line description of the first accounts row that disagrees with the replayed state, or ""."""
    stored = {a: (b, s) for a, b, s in conn.execute("SELECT address, balance, stake FROM accounts")}
    for addr in sorted(set(stored) | set(st.balances) | set(st.stakes)):
        want = (st.balances.get(addr, 0), st.stakes.get(addr, 0))
        if stored.get(addr, (0, 0)) != want:
            return f"accounts table disagrees with replay for {addr[:16]}: {stored.get(addr)} != {want}"
    return ""
