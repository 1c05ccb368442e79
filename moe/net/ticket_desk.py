"""The expert's side of paid calls: check each call's ticket before answering, tally what was answered, and hand the
latest tickets to settlement.

A paid request is `PAID_MAGIC` ‖ ticket (moe.ledger.ticket) ‖ the ordinary request. Before computing, the expert
checks offline, in microseconds and without the ledger: the consumer's signature, that the ticket is for this expert
on this chain, that its counter is new, that it agrees to the current price, that it acknowledges all but at most
`credit_rao` of what was already answered (concurrent calls may overtake each other's acknowledgements), and that
the consumer's escrow, as the ledger head last showed it, covers what is unsettled plus this call. Any failure is a
`PaymentRefused` whose one line the consumer sees; nothing is computed. After the reply is computed, `answered`
adds the call to the tally; the ticket with the highest counter acknowledges the most and is what settlement claims
(`claims`). A consumer's closing ticket, which comes with no call, is taken by `close`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from moe.ledger.ticket import TICKET_BYTES, Ticket, TicketError, call_cost

PAYMENT_REFUSED = "payment refused"
"""How every refusal's message starts, so a client can tell it from a fault of the peer."""
PAID_MAGIC = b"HMP1"
"""First bytes of a request that carries a ticket."""
SEEN_WINDOW = 256
"""Counters below the highest seen minus this are refused as too old (a bound on the replay set)."""


class PaymentRefused(ValueError):
    """A call's ticket does not pay for it; the message says why, in one line."""


def split_paid(raw: bytes) -> tuple[bytes | None, bytes]:
    """(ticket bytes or None, the inner request) of a request payload."""
    if raw[:4] != PAID_MAGIC:
        return None, raw
    if len(raw) < 4 + TICKET_BYTES:
        raise PaymentRefused(f"{PAYMENT_REFUSED}: paid request shorter than its ticket")
    return bytes(raw[4 : 4 + TICKET_BYTES]), raw[4 + TICKET_BYTES :]


def paid_request(ticket: Ticket, raw: bytes) -> bytes:
    return PAID_MAGIC + ticket.to_bytes() + raw


@dataclass
class ConsumerAccount:
    """What one consumer has been answered and has acknowledged."""

    answered_bytes: int = 0
    answered_rao: int = 0
    latest: Ticket | None = None
    """The ticket with the highest counter seen: it acknowledges the most."""
    claimed_rao: int = 0
    """Rao of the last claim handed to settlement."""
    seen: set[int] = field(default_factory=set)


@dataclass
class TicketDesk:
    """Ticket checks and tallies for one expert; thread-safe (the server answers on a pool of threads)."""

    expert: str
    """This expert's hotkey address."""
    chain: bytes
    """chain_digest of the ledger it settles on."""
    price_rao_per_mbyte: int
    coverable: Callable[[str], int]
    """Consumer address -> rao of its escrow an expert may count on (from the latest ledger head)."""
    credit_rao: int = 10**7
    """Most rao of answered calls a consumer may leave unacknowledged (calls in flight at once); 0.01 TAO."""
    is_validator: Callable[[str], bool] = lambda consumer: False
    """Whether a hotkey is a staked validator, whose tickets at price 0 are served free (validators evaluate
    experts for nothing, as on Bittensor; they still sign, so nobody else can pass as one)."""
    accounts: dict[str, ConsumerAccount] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, ticket_bytes: bytes | None, positions: int) -> Ticket | None:
        """Check the ticket of a call for `positions` bytes; None for a free call (price 0, no ticket). Raises
        PaymentRefused (one line) when the ticket does not pay for the call."""
        if ticket_bytes is None:
            if self.price_rao_per_mbyte > 0:
                raise PaymentRefused(
                    f"{PAYMENT_REFUSED}: this expert charges {self.price_rao_per_mbyte} rao per million bytes; "
                    "send a ticket"
                )
            return None
        t = self._parse(ticket_bytes)
        cost = call_cost(positions, t.price)
        with self._lock:
            acct = self.accounts.setdefault(t.consumer_address, ConsumerAccount())
            self._check_new(t, acct)
            free = t.price == 0 and self.is_validator(t.consumer_address)
            if t.price < self.price_rao_per_mbyte and not free:
                raise PaymentRefused(
                    f"{PAYMENT_REFUSED}: price is now {self.price_rao_per_mbyte} rao per million bytes, "
                    f"ticket offers {t.price}"
                )
            if acct.answered_rao - t.owed > self.credit_rao or t.owed > acct.answered_rao:
                raise PaymentRefused(
                    f"{PAYMENT_REFUSED}: ticket acknowledges {t.owed} rao of {acct.answered_rao} answered"
                )
            need = acct.answered_rao + cost - acct.claimed_rao
            have = self.coverable(t.consumer_address)
            if have < need:
                raise PaymentRefused(
                    f"{PAYMENT_REFUSED}: escrow of {t.consumer_address[:16]} covers {have} rao, this call needs {need}"
                )
            self._remember(t, acct)
        return t

    def answered(self, ticket: Ticket | None, positions: int) -> None:
        """Add an answered call to its consumer's tally (nothing for a free call)."""
        if ticket is None:
            return
        with self._lock:
            acct = self.accounts[ticket.consumer_address]
            acct.answered_bytes += positions
            acct.answered_rao += call_cost(positions, ticket.price)

    def close(self, ticket_bytes: bytes) -> Ticket:
        """Take a consumer's closing ticket (no call comes with it); PaymentRefused if it is not a valid new ticket
        of this consumer or acknowledges more than was answered."""
        t = self._parse(ticket_bytes)
        with self._lock:
            acct = self.accounts.setdefault(t.consumer_address, ConsumerAccount())
            self._check_new(t, acct)
            if t.owed > acct.answered_rao or t.acked_bytes > acct.answered_bytes:
                raise PaymentRefused(
                    f"{PAYMENT_REFUSED}: closing ticket acknowledges {t.owed} rao of {acct.answered_rao} answered"
                )
            self._remember(t, acct)
        return t

    def claims(self) -> list[tuple[bytes, int, int]]:
        """(ticket, bytes, amount) per consumer whose latest ticket acknowledges more than was last claimed; marks
        them claimed (a claim the ledger refuses is claimed again, in full, next time: claims are running totals)."""
        out = []
        with self._lock:
            for acct in self.accounts.values():
                t = acct.latest
                if t is not None and t.owed > acct.claimed_rao:
                    out.append((t.to_bytes(), t.acked_bytes, t.owed))
                    acct.claimed_rao = t.owed
        return out

    def _parse(self, ticket_bytes: bytes) -> Ticket:
        try:
            t = Ticket.from_bytes(ticket_bytes)
        except TicketError as e:
            raise PaymentRefused(f"{PAYMENT_REFUSED}: {e}") from None
        if t.expert_address != self.expert:
            raise PaymentRefused(f"{PAYMENT_REFUSED}: ticket is made out to another expert")
        if t.chain != self.chain:
            raise PaymentRefused(f"{PAYMENT_REFUSED}: ticket is for another chain")
        if not t.verify():
            raise PaymentRefused(f"{PAYMENT_REFUSED}: ticket is not signed by the consumer it names")
        return t

    @staticmethod
    def _check_new(t: Ticket, acct: ConsumerAccount) -> None:
        top = acct.latest.counter if acct.latest is not None else -1
        if t.counter in acct.seen or t.counter <= top - SEEN_WINDOW:
            raise PaymentRefused(f"{PAYMENT_REFUSED}: ticket {t.counter} was already used")

    @staticmethod
    def _remember(t: Ticket, acct: ConsumerAccount) -> None:
        acct.seen.add(t.counter)
        if acct.latest is None or t.counter > acct.latest.counter:
            acct.latest = t
            acct.seen = {c for c in acct.seen if c > t.counter - SEEN_WINDOW}
