"""Escrow and settlement: consumers prepay into escrow, experts settle the consumers' tickets from it, exactly once.

Records (all signed; shapes in moe.ledger.records):

- `escrow` {hotkey, amount, nonce}: a positive amount moves rao from the consumer's balance into its escrow; a
  negative one announces a withdrawal of that much, which `withdraw` completes `escrow_unlock_blocks` later. Until
  then settlements still draw on the whole escrow, and the ledger head shows experts only what is not being
  withdrawn, so an expert that checked the head before answering is never outrun by a withdrawal.
- `withdraw` {hotkey, nonce}: after the unlock height, moves what is left of the announced amount back to balance.
- `settle` {hotkey, claims}: the expert's claims, one per consumer: [ticket, bytes, amount]. Each ticket
  (moe.ledger.ticket) must be the consumer's, name this expert and this chain, and carry a counter above the last
  one settled between the two; `bytes` and `amount` may not exceed what the ticket acknowledges, nor fall below what
  was already settled. The ledger pays `amount` minus what it paid before, from the consumer's escrow. A forged,
  replayed or older ticket, an over-claim, or a payment the escrow cannot cover refuses the whole record, naming the
  consumer and the reason; what was settled earlier is never touched.

Invariant kept by every handler: balances + stakes + escrows + pending emission = total issuance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moe.ledger.fields import RecordError
from moe.ledger.ticket import Ticket, TicketError, chain_digest

if TYPE_CHECKING:
    from moe.ledger.records import Record
    from moe.ledger.state import LedgerState

MAX_CLAIMS = 256
"""Consumers one settle record may claim from."""


def coverable(st: LedgerState, consumer: str) -> int:
    """Rao of the consumer's escrow not announced for withdrawal: what an expert may count on."""
    unlocking = st.unlocking.get(consumer, (0, 0))[0]
    return max(0, st.escrow.get(consumer, 0) - unlocking)


def apply_escrow(st: LedgerState, rec: Record, height: int) -> None:
    """Deposit into escrow (amount > 0) or announce a withdrawal (amount < 0)."""
    hotkey, amount = rec["hotkey"], rec["amount"]
    if amount == 0:
        raise RecordError("escrow amount must be non-zero")
    st.consume_nonce(hotkey, rec)
    if amount > 0:
        if st.balances.get(hotkey, 0) < amount:
            raise RecordError(f"balance of {hotkey[:16]} cannot cover an escrow deposit of {amount} rao")
        st.credit(hotkey, -amount)
        st.put(st.escrow, hotkey, st.escrow.get(hotkey, 0) + amount)
        return
    if hotkey in st.unlocking:
        raise RecordError(f"{hotkey[:16]} already has a withdrawal pending")
    if st.escrow.get(hotkey, 0) < -amount:
        raise RecordError(f"escrow of {hotkey[:16]} cannot cover a withdrawal of {-amount} rao")
    st.put(st.unlocking, hotkey, (-amount, height + st.config.escrow_unlock_blocks))


def apply_withdraw(st: LedgerState, rec: Record, height: int) -> None:
    """Complete an announced withdrawal once its unlock height is reached (what settlements left of it)."""
    hotkey = rec["hotkey"]
    pending = st.unlocking.get(hotkey)
    if pending is None:
        raise RecordError(f"{hotkey[:16]} has no withdrawal pending")
    amount, unlock_at = pending
    if height < unlock_at:
        raise RecordError(f"withdrawal of {hotkey[:16]} unlocks at block {unlock_at}, not {height}")
    st.consume_nonce(hotkey, rec)
    paid_out = min(amount, st.escrow.get(hotkey, 0))
    st.put(st.escrow, hotkey, st.escrow.get(hotkey, 0) - paid_out)
    st.credit(hotkey, paid_out)
    st.drop(st.unlocking, hotkey)


def apply_settle(st: LedgerState, rec: Record, height: int) -> None:
    """Pay each claim from its consumer's escrow to the expert; RecordError naming the first bad claim."""
    expert = rec["hotkey"]
    chain = chain_digest(st.chain_id)
    seen: set[str] = set()
    for ticket_hex, claimed_bytes, amount in rec["claims"]:
        try:
            t = Ticket.from_hex(ticket_hex)
        except TicketError as e:
            raise RecordError(f"settle claim: {e}") from None
        consumer = t.consumer_address
        who = f"ticket {t.counter} of consumer {consumer[:16]}"
        if consumer in seen:
            raise RecordError(f"{who}: one claim per consumer in a settle record")
        seen.add(consumer)
        if t.expert_address != expert:
            raise RecordError(f"{who} names another expert ({t.expert_address[:16]})")
        if t.chain != chain:
            raise RecordError(f"{who} is for another chain")
        if not t.verify():
            raise RecordError(f"{who} is not signed by its consumer (forged)")
        counter, settled_bytes, settled = st.settled.get((consumer, expert), (-1, 0, 0))
        if t.counter <= counter:
            raise RecordError(f"{who} replayed: ticket {counter} was already settled")
        if claimed_bytes > t.acked_bytes or amount > t.owed:
            raise RecordError(
                f"{who} claims {claimed_bytes} bytes / {amount} rao, more than it covers "
                f"({t.acked_bytes} bytes / {t.owed} rao)"
            )
        if claimed_bytes < settled_bytes or amount < settled:
            raise RecordError(f"{who} claims less than was already settled ({settled_bytes} bytes / {settled} rao)")
        due = amount - settled
        if due > st.escrow.get(consumer, 0):
            raise RecordError(f"{who}: escrow {st.escrow.get(consumer, 0)} rao cannot cover {due} rao (over escrow)")
        st.put(st.escrow, consumer, st.escrow.get(consumer, 0) - due)
        st.credit(expert, due)
        st.put(st.settled, (consumer, expert), (t.counter, claimed_bytes, amount))
        st.put(st.paid, expert, st.paid.get(expert, 0) + due)
