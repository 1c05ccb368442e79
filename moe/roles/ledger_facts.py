"""What a run's summary reads from its ledger: one verified replay and one pass over the stored records.

The validation, market and payments parts of `summary.json` each need the replayed state (balances, trust,
settlements) and totals over the records (miner emission, dividends, owner payouts, the last emission split).
Reading them here once, from `verify_ledger`'s replay, means the file is replayed (and its signatures checked)
once per summary instead of once per part.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from moe.ledger.chain import read_blocks
from moe.ledger.state import LedgerState
from moe.ledger.verify import VerifyReport, verify_ledger
from moe.roles.layout import RunLayout

logger = logging.getLogger(__name__)


@dataclass
class LedgerFacts:
    """A verified replay of a ledger file and the record totals the summary reports."""

    report: VerifyReport
    """The verification; `report.state` is the replayed state after the last good block."""
    miner_emission: int = 0
    """Rao the epochs paid to miners."""
    dividends: dict[str, int] = field(default_factory=dict)
    """Validator hotkey -> rao the epochs paid it."""
    owner_paid: dict[int, int] = field(default_factory=dict)
    """Netuid -> rao its owner was paid."""
    shares: dict[int, float] = field(default_factory=dict)
    """Netuid -> its share of the latest block that minted anything."""

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def state(self) -> LedgerState:
        assert self.report.state is not None, "a ledger with no good block has no state"
        return self.report.state


def read_ledger_facts(path: Path) -> LedgerFacts:
    """Verify the file and total its records; when it does not verify, the report says why and no totals are read
    (a part of the summary that needs them is left out, the rest is kept)."""
    report = verify_ledger(path, workers=0)
    facts = LedgerFacts(report)
    if not report.ok:
        logger.warning("ledger %s does not verify: %s", path, report)
        return facts
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for blk in read_blocks(conn, share_repeats=True):
            for rec in blk.records:
                kind = rec.get("kind")
                if kind == "emission" and rec["minted"] > 0:
                    facts.shares = {int(n): a / rec["minted"] for n, a in rec["subnets"].items()}
                elif kind == "epoch":
                    facts.miner_emission += sum(rec["miner_payouts"])
                    for hk, amt in zip(rec["validators"], rec["validator_payouts"], strict=True):
                        facts.dividends[hk] = facts.dividends.get(hk, 0) + amt
                    if rec.get("owner_payout"):
                        n = rec["netuid"]
                        facts.owner_paid[n] = facts.owner_paid.get(n, 0) + rec["owner_payout"]
    finally:
        conn.close()
    return facts


def facts_for(layout: RunLayout, facts: LedgerFacts | None = None) -> LedgerFacts | None:
    """`facts` when the caller has read them, else the run's ledger read here; None when the run has no ledger."""
    if facts is None and layout.ledger.is_file():
        return read_ledger_facts(layout.ledger)
    return facts
