"""Double-entry check of a ledger: emissions + payments = balance changes, to the rao, for every address.

The replay (moe.ledger.state) moves rao between balances, stakes and escrows as each record says. This module does
not reuse that code: it tallies each address's holdings (balance + stake + escrow) straight from the recorded
blocks, from genesis allocations, epoch payouts (miners, validators, subnet owners), transfers, settlements (each
claim pays its amount minus the pair's previous claim) and registration burns, and compares them with the replayed
state. A disagreement means the transition code moved rao that no record accounts for. Moves inside one address
(stake, escrow deposit, withdrawal) change no holdings, so they are not tallied.
"""

from __future__ import annotations

from collections.abc import Iterable

from moe.ledger.state import LedgerState
from moe.ledger.ticket import Ticket


class Tally:
    """Holdings per address and the rao paid out of thin air (emission) or destroyed (burns), from records alone."""

    def __init__(self) -> None:
        self.holdings: dict[str, int] = {}
        self.emitted = 0
        """Rao paid out by epochs (what minting reached accounts)."""
        self.payments = 0
        """Rao moved from consumers' escrows to experts by settlements."""
        self.burned = 0
        self._claims: dict[tuple[str, str], int] = {}

    def _add(self, address: str, amount: int) -> None:
        self.holdings[address] = self.holdings.get(address, 0) + amount

    def record(self, rec: dict) -> None:
        """Account for one stored record (only accepted records are stored)."""
        kind = rec.get("kind")
        if kind == "genesis":
            for table in ("balances", "stakes"):
                for address, amount in rec[table].items():
                    self._add(address, amount)
        elif kind == "epoch":
            payouts = [
                *zip(rec["hotkeys"], rec["miner_payouts"], strict=True),
                *zip(rec["validators"], rec["validator_payouts"], strict=True),
            ]
            if rec.get("owner") and rec.get("owner_payout"):
                payouts.append((rec["owner"], rec["owner_payout"]))
            for address, amount in payouts:
                self._add(address, amount)
                self.emitted += amount
        elif kind == "transfer":
            self._add(rec["src"], -rec["amount"])
            self._add(rec["dst"], rec["amount"])
        elif kind == "register" and "burn" in rec:
            self._add(rec["hotkey"], -rec["burn"])
            self.burned += rec["burn"]
        elif kind == "settle":
            for ticket_hex, _, amount in rec["claims"]:
                consumer = Ticket.from_hex(ticket_hex).consumer_address
                key = (consumer, rec["hotkey"])
                due = amount - self._claims.get(key, 0)
                self._claims[key] = amount
                self._add(consumer, -due)
                self._add(rec["hotkey"], due)
                self.payments += due

    def mismatch(self, st: LedgerState) -> str:
        """A one-line description of the first address whose tallied holdings differ from the replayed state, or
        ""."""
        return _first_difference(self.holdings, st)


def reconcile(records: Iterable[dict], st: LedgerState) -> str:
    """`Tally.mismatch` of the records of a whole chain, genesis first."""
    tally = Tally()
    for rec in records:
        tally.record(rec)
    return tally.mismatch(st)


def _first_difference(holdings: dict[str, int], st: LedgerState) -> str:
    replayed: dict[str, int] = {}
    for table in (st.balances, st.stakes, st.escrow):
        for address, amount in table.items():
            replayed[address] = replayed.get(address, 0) + amount
    for address in sorted(set(replayed) | set(holdings)):
        want, got = holdings.get(address, 0), replayed.get(address, 0)
        if want != got:
            return (
                f"holdings of {address[:16]} are {got} rao but emissions, payments and transfers give {want} "
                f"(off by {got - want})"
            )
    return ""
