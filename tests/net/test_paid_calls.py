"""Paid calls over real P2P and the direct path: a priced expert answers calls whose tickets pay, refuses the others
with a clear error the consumer sees (and does not back the expert off for), and its claims settle on a real ledger
for exactly the calls the consumer got valid answers to."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.records import escrow_record, settle_record
from moe.ledger.ticket import call_cost, chain_digest
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.payer import Payer
from moe.net.server import ExpertServer, ServerConfig
from moe.net.ticket_desk import PaymentRefused, TicketDesk

from .conftest import X, tiny_lm

TAO = 10**9
PRICE = 50 * TAO  # rao per million bytes
EXPERT, CONSUMER, BROKE = (Hotkey.from_seed(bytes([i]) * 32) for i in (11, 12, 13))


@pytest.fixture
def market(tmp_path):
    """A ledger where CONSUMER holds 1 TAO in escrow, a priced expert reading it, and a direct and a P2P client."""
    cfg = LedgerConfig(tempo=100, subnet_shares={1: 1.0})
    g = GenesisConfig(ledger=cfg, balances={CONSUMER.address: 10 * TAO}, timestamp=1.0)
    led = Ledger.open(tmp_path / "ledger.sqlite", g)
    assert led.submit(escrow_record(CONSUMER, TAO, 0))
    led.produce_block()
    chain = chain_digest(led.state.chain_id)
    escrow = dict(led.state.escrow)
    server = ExpertServer(tiny_lm(0), ServerConfig(max_tokens=256)).start()
    server.prove_identity(EXPERT)
    server.ticket_desk = TicketDesk(EXPERT.address, chain, PRICE, lambda c: escrow.get(c, 0))
    clients = [SyncExpertClient(ClientConfig(direct=d), initial_peers=server.maddrs) for d in (True, False)]
    try:
        yield led, chain, server, clients
    finally:
        for c in clients:
            c.shutdown()
        server.shutdown()
        led.close()


def pay_as(client: SyncExpertClient, hotkey: Hotkey, chain: bytes, server: ExpertServer, price: int = PRICE) -> Payer:
    client.client.payer = Payer(hotkey, chain)
    client.client.prices = {server.peer_id: (EXPERT.address, price)}
    return client.client.payer


@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_paid_calls_are_answered_and_settle_for_what_was_answered(market, path):
    """Three paid calls are answered; the consumer's closing ticket and the expert's claim settle exactly their
    cost on the ledger."""
    led, chain, server, clients = market
    payer = pay_as(clients[path], CONSUMER, chain, server)
    for _ in range(3):
        assert clients[path].call(server.peer_id, X).shape == (*X.shape, 256)
    cost = 3 * call_cost(X.numel(), PRICE)
    assert payer.spent() == {EXPERT.address: cost} and cost > 0
    assert clients[path].close_accounts() == 1  # over the wire: the closing ticket acknowledges the third call
    assert led.submit(settle_record(EXPERT, server.ticket_desk.claims()))
    led.produce_block()
    assert led.state.paid[EXPERT.address] == cost and led.state.escrow[CONSUMER.address] == TAO - cost


def test_a_consumer_without_escrow_or_with_a_stale_price_is_refused_and_the_expert_is_not_backed_off(market):
    """No escrow, or a price below the expert's, is a PaymentRefused naming the reason; nothing is computed for it,
    the expert is not backed off, and a paying call right after is answered."""
    led, chain, server, (client, _) = market
    pay_as(client, BROKE, chain, server)
    with pytest.raises(PaymentRefused, match="escrow of .* covers 0 rao"):
        client.call(server.peer_id, X)
    pay_as(client, CONSUMER, chain, server, price=PRICE - 1)
    with pytest.raises(PaymentRefused, match="price is now"):
        client.call(server.peer_id, X)
    assert client.client.health.available(server.peer_id)
    payer = pay_as(client, CONSUMER, chain, server)
    client.call(server.peer_id, X)
    assert payer.spent() == {EXPERT.address: call_cost(X.numel(), PRICE)}
    assert server.ticket_desk.accounts[BROKE.address].answered_rao == 0


def test_a_validator_replays_a_paid_call_with_its_own_free_pass(market):
    """A recorded paid request carries its consumer's spent ticket; a validator re-sending it swaps in its own price-0
    pass, is served free, and gets exactly the reply bytes the expert signed for the consumer."""
    from moe.net.receipt import digest

    led, chain, server, (consumer, validator) = market
    pay_as(consumer, CONSUMER, chain, server)
    seen = []
    consumer.client.on_receipt = lambda peer, raw, receipt: seen.append((raw, receipt))
    consumer.call(server.peer_id, X)
    raw, receipt = seen[-1]
    server.ticket_desk.is_validator = lambda hotkey: hotkey == BROKE.address
    validator.client.payer = Payer(BROKE, chain, free=True)
    validator.client.prices = {server.peer_id: (EXPERT.address, PRICE)}
    reply, again = validator.replay(server.peer_id, raw)
    assert digest(reply) == receipt.reply and server.ticket_desk.accounts[BROKE.address].answered_rao == 0
