"""Tests for moe/net/ticket_desk.py and moe/net/payer.py: an expert checks each call's ticket offline, a consumer
acknowledges only answered calls, and the expert's claims settle on a real ledger for exactly what was answered."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.records import escrow_record, settle_record
from moe.ledger.ticket import Ticket, call_cost, chain_digest
from moe.net.payer import Payer
from moe.net.ticket_desk import PaymentRefused, TicketDesk

TAO = 10**9
PRICE = 5 * TAO  # rao per million bytes: 5 TAO per MB
CONSUMER, EXPERT, OTHER = (Hotkey.from_seed(bytes([i]) * 32) for i in (1, 2, 3))


@pytest.fixture
def led(tmp_path):
    cfg = LedgerConfig(tempo=100, subnet_shares={1: 1.0})
    g = GenesisConfig(ledger=cfg, balances={CONSUMER.address: 100 * TAO}, timestamp=1.0)
    with Ledger.open(tmp_path / "ledger.sqlite", g) as ledger:
        assert ledger.submit(escrow_record(CONSUMER, 10 * TAO, 0))
        ledger.produce_block()
        yield ledger


def desk_for(led: Ledger, price: int = PRICE, expert: Hotkey = EXPERT) -> TicketDesk:
    return TicketDesk(expert.address, chain_digest(led.state.chain_id), price, lambda c: led.state.escrow.get(c, 0))


def paid_call(payer: Payer, desk: TicketDesk, positions: int, answered: bool = True, price: int = PRICE) -> Ticket:
    """One call as the client and server make it: ticket, admission, the expert's tally, the consumer's ack."""
    t = payer.ticket(desk.expert, price)
    admitted = desk.admit(t.to_bytes(), positions)
    desk.answered(admitted, positions)
    if answered:
        payer.answered(t, positions)
    return t


def test_answered_calls_settle_for_exactly_what_they_cost(led):
    """Three calls answered and one whose reply never arrived: the claims (with the closing ticket) settle the three
    calls' cost to the rao, and nothing for the fourth."""
    payer, desk = Payer(CONSUMER, chain_digest(led.state.chain_id)), desk_for(led)
    for n in (1000, 2500, 700):
        paid_call(payer, desk, n)
    paid_call(payer, desk, 4000, answered=False)
    for t in payer.closing_tickets().values():
        desk.close(t.to_bytes())
    expected = sum(call_cost(n, PRICE) for n in (1000, 2500, 700))
    assert payer.spent() == {EXPERT.address: expected}
    claims = desk.claims()
    assert [(b, a) for _, b, a in claims] == [(4200, expected)]
    assert led.submit(settle_record(EXPERT, claims))
    led.produce_block()
    assert led.state.paid[EXPERT.address] == expected and desk.claims() == []


@pytest.mark.parametrize("attack", ["no escrow", "old price", "replay", "other expert", "forged", "unacknowledged"])
def test_a_ticket_that_does_not_pay_is_refused_before_the_call(led, attack):
    """Each way a consumer might not pay gets a one-line PaymentRefused naming it; an honest call then still goes
    through (nothing was recorded by the refusal)."""
    payer, desk = Payer(CONSUMER, chain_digest(led.state.chain_id)), desk_for(led)
    first = paid_call(payer, desk, 1000)
    if attack == "no escrow":
        broke = Payer(OTHER, chain_digest(led.state.chain_id))
        raw, match = broke.ticket(desk.expert, PRICE).to_bytes(), "escrow of .* covers 0 rao"
    elif attack == "old price":
        raw, match = payer.ticket(desk.expert, PRICE - 1).to_bytes(), "price is now"
    elif attack == "replay":
        raw, match = first.to_bytes(), "already used"
    elif attack == "other expert":
        raw, match = payer.ticket(OTHER.address, PRICE).to_bytes(), "another expert"
    elif attack == "forged":
        t = payer.ticket(desk.expert, PRICE)
        raw, match = Ticket(**{**t.__dict__, "owed": t.owed + 1}).to_bytes(), "not signed"
    else:  # answered calls never acknowledged, beyond the expert's credit
        desk.credit_rao = 0
        desk.answered(first, 10**6)
        raw, match = payer.ticket(desk.expert, PRICE).to_bytes(), "acknowledges"
    with pytest.raises(PaymentRefused, match=match):
        desk.admit(raw, 1000)
    if attack != "unacknowledged":
        paid_call(payer, desk, 1000)


def test_a_call_bigger_than_the_escrow_is_refused():
    """The escrow must cover what is unsettled plus this call."""
    desk = TicketDesk(EXPERT.address, chain_digest("c"), PRICE, lambda c: call_cost(1000, PRICE))
    payer = Payer(CONSUMER, chain_digest("c"))
    paid_call(payer, desk, 1000)
    with pytest.raises(PaymentRefused, match="this call needs"):
        desk.admit(payer.ticket(desk.expert, PRICE).to_bytes(), 1)


def test_free_experts_take_calls_without_tickets_and_paid_ones_do_not():
    """Price 0 needs no ticket; a priced expert refuses a call without one, naming its price."""
    assert TicketDesk(EXPERT.address, chain_digest("c"), 0, lambda c: 0).admit(None, 100) is None
    with pytest.raises(PaymentRefused, match=f"charges {PRICE} rao"):
        TicketDesk(EXPERT.address, chain_digest("c"), PRICE, lambda c: 0).admit(None, 100)


def test_a_staked_validators_price_0_pass_is_served_free_and_nobody_elses(led):
    """A price-0 ticket signed by a hotkey the ledger shows staked is admitted and owes nothing; the same from a
    consumer without stake is refused as below the price, escrow or not."""
    desk = desk_for(led)
    desk.is_validator = lambda hotkey: hotkey == OTHER.address
    validator = Payer(OTHER, chain_digest(led.state.chain_id), free=True)
    for _ in range(3):
        paid_call(validator, desk, 5000, price=0)
    assert desk.accounts[OTHER.address].answered_rao == 0 and desk.claims() == []
    with pytest.raises(PaymentRefused, match="price is now"):
        desk.admit(Payer(CONSUMER, chain_digest(led.state.chain_id)).ticket(desk.expert, 0).to_bytes(), 1000)
