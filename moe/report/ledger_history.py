"""TAO issuance and account balances block by block, replayed read-only from a run's ledger file.

The file is opened with SQLite's read-only mode (never the writer's `moe.ledger.chain.connect`, which sets pragmas
and creates tables) and replayed with the ledger's own transition code (`check_block`); signatures are not checked
here, `hivemoe ledger verify` does that. A block that does not replay ends the history there (logged): the plot
shows what verified.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from moe.ledger import RAO_PER_TAO, LedgerError
from moe.ledger.chain import GENESIS_PREV_HASH, check_block, read_blocks
from moe.ledger.state import LedgerState
from moe.report.run_data import Missing

logger = logging.getLogger(__name__)


@dataclass
class LedgerHistory:
    """One sample per block (height order)."""

    heights: list[int] = field(default_factory=list)
    issuance_tao: list[float] = field(default_factory=list)
    """Total TAO in existence after each block."""
    holdings_tao: dict[str, list[float]] = field(default_factory=dict)
    """Address → free balance plus stake, in TAO, after each block (only the addresses asked for)."""
    stopped: str = ""
    """Why the replay stopped before the last stored block ("" when it reached it)."""


def read_ledger_history(path: Path, addresses: list[str]) -> LedgerHistory:
    """Replay `path` read-only and sample issuance and the holdings of `addresses` after every block; Missing when
    the file is absent or not a ledger at all."""
    if not path.is_file():
        raise Missing(f"no ledger file {path.name}")
    history = LedgerHistory(holdings_tao={a: [] for a in addresses})
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise Missing(f"cannot open {path.name}: {e}") from None
    state: LedgerState | None = None
    prev, last_ts = GENESIS_PREV_HASH, float("-inf")
    try:
        for blk in read_blocks(conn):
            result = check_block(blk, state, prev, last_ts, check_signatures=False)
            if isinstance(result, str):
                history.stopped = f"block {blk.height}: {result}"
                break
            state, prev, last_ts = result, blk.hash, blk.timestamp
            _sample(history, state)
    except (LedgerError, sqlite3.Error) as e:
        history.stopped = str(e).splitlines()[0] if str(e) else type(e).__name__
    finally:
        conn.close()
    if history.stopped:
        logger.warning("ledger %s replayed up to height %s only: %s", path, state and state.height, history.stopped)
    if not history.heights:
        raise Missing(f"{path.name} holds no block that replays ({history.stopped or 'empty'})")
    return history


def _sample(history: LedgerHistory, state: LedgerState) -> None:
    history.heights.append(state.height)
    history.issuance_tao.append(state.total_issuance / RAO_PER_TAO)
    for address, series in history.holdings_tao.items():
        series.append((state.balances.get(address, 0) + state.stakes.get(address, 0)) / RAO_PER_TAO)
