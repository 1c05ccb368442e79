"""The consumer's side of paid calls: a ticket for each call, and acknowledgements only for calls answered.

Each expert gets its own running account: a counter, the bytes and the rao of every call it answered validly (its
reply decoded and checked). Call n carries ticket n (moe.ledger.ticket), signed over those totals and the price
the call is made at, so the expert is paid for what it answered and never for a call that failed, timed out or sent
a bad reply. `closing_tickets` acknowledges the calls after the last ticket sent, for experts to settle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from moe.identity import Hotkey
from moe.ledger.ticket import Ticket, call_cost, sign_ticket


@dataclass
class ExpertAccount:
    counter: int = 0
    acked_bytes: int = 0
    owed: int = 0
    """Rao for every call this expert answered (at each call's price)."""
    sent_owed: int = 0
    """`owed` as of the last ticket sent, so a closing ticket is needed only when it moved since."""


@dataclass
class Payer:
    """Tickets for one consumer hotkey on one chain; thread-safe."""

    hotkey: Hotkey
    chain: bytes
    free: bool = False
    """Sign every call's ticket at price 0: a staked validator's pass, which priced experts serve for nothing."""
    accounts: dict[str, ExpertAccount] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ticket(self, expert: str, price_rao_per_mbyte: int) -> Ticket:
        """The next call's ticket to `expert` (hex address), agreeing to `price_rao_per_mbyte`."""
        with self._lock:
            acct = self.accounts.setdefault(expert, ExpertAccount())
            acct.counter += 1
            acct.sent_owed = acct.owed
            counter, acked, owed = acct.counter, acct.acked_bytes, acct.owed
        return sign_ticket(self.hotkey, self.chain, expert, counter, price_rao_per_mbyte, acked, owed)

    def answered(self, ticket: Ticket, positions: int) -> None:
        """The call `ticket` came with was answered validly: acknowledge it in the next ticket."""
        with self._lock:
            acct = self.accounts[ticket.expert_address]
            acct.acked_bytes += positions
            acct.owed += call_cost(positions, ticket.price)

    def closing_tickets(self) -> dict[str, Ticket]:
        """Expert -> a ticket (price 0, no call) acknowledging everything answered, for each expert owed more than
        its last ticket said."""
        with self._lock:
            due = [(e, a) for e, a in self.accounts.items() if a.owed > a.sent_owed]
            out = {}
            for expert, acct in due:
                acct.counter += 1
                acct.sent_owed = acct.owed
                out[expert] = sign_ticket(
                    self.hotkey, self.chain, expert, acct.counter, 0, acct.acked_bytes, acct.owed
                )
        return out

    def spent(self) -> dict[str, int]:
        """Expert -> rao owed for its answered calls."""
        with self._lock:
            return {e: a.owed for e, a in self.accounts.items()}
