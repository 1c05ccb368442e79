"""Tests for moe/roles/settlement.py: a priced expert, a consumer with escrow, a real DHT and ledger host; the calls
the consumer got answers to are settled on the ledger, through the inbox, for exactly their cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, Ledger, verify_ledger
from moe.ledger.records import escrow_record
from moe.ledger.ticket import call_cost
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.ledger_client import read_head, submit_records
from moe.net.ledger_host import LedgerHost, LedgerHostConfig, local_genesis
from moe.net.payer import Payer
from moe.net.server import ExpertServer, ServerConfig
from moe.net.ticket_desk import PaymentRefused
from moe.roles.settlement import start_paid_serving

PRICE_TAO = 20.0  # per million bytes
EXPERT, CONSUMER, HOST = (Hotkey.from_seed(bytes([i]) * 32) for i in (21, 22, 23))
X = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def network(tmp_path):
    """A loopback DHT, a ledger host where CONSUMER holds 5 TAO, and a served tiny model. Reaps all."""
    from moe.net.join import start_bootstrap_dht

    dht = start_bootstrap_dht()
    lh = LedgerHostConfig(block_interval_seconds=0.1, tempo=10, difficulty=4)
    genesis = local_genesis(lh, [1], {CONSUMER.address: 5 * RAO_PER_TAO})
    feed = LedgerHost(dht, tmp_path / "ledger.sqlite", genesis, HOST, 0.1, poll_interval=0.05).start()
    torch.manual_seed(0)
    server = ExpertServer(nn.Sequential(nn.Embedding(256, 16), nn.Linear(16, 260)), ServerConfig(max_tokens=256))
    server.start()
    server.prove_identity(EXPERT)
    client = SyncExpertClient(ClientConfig(), initial_peers=server.maddrs)
    try:
        yield dht, feed, server, client
    finally:
        client.shutdown()
        server.shutdown()
        feed.stop()
        dht.shutdown()


def test_a_priced_expert_is_paid_on_the_ledger_for_the_calls_it_answered(network, tmp_path):
    """Before the consumer funds its escrow a call is refused; after, three calls are answered, the consumer's
    closing ticket reaches the expert, and the settler's claim pays the expert their cost from the escrow; the
    ledger file verifies and reconciles."""
    dht, feed, server, client = network
    settler = start_paid_serving(dht, server, EXPERT, HOST.address, PRICE_TAO, interval=0.2, timeout=10)
    head = read_head(dht, HOST.address)
    client.client.payer = Payer(CONSUMER, bytes.fromhex(head.chain))
    client.client.prices = {server.peer_id: (EXPERT.address, round(PRICE_TAO * RAO_PER_TAO))}
    with pytest.raises(PaymentRefused, match="covers 0 rao"):
        client.call(server.peer_id, X)
    submit_records(dht, CONSUMER, [escrow_record(CONSUMER, RAO_PER_TAO, 0)])
    assert feed.wait(lambda f: ("escrow", CONSUMER.address) in f.accepted, 10)
    assert feed.wait(lambda f: settler.view.escrow.get(CONSUMER.address, 0) == RAO_PER_TAO, 10)
    for _ in range(3):
        client.call(server.peer_id, X)
    assert client.close_accounts() == 1
    settler.stop()
    assert feed.wait(lambda f: ("settle", EXPERT.address) in f.accepted, 10)
    height = feed.height
    assert feed.wait(lambda f: f.height >= height + 2, 10)  # accepted records enter the next block
    feed.stop()
    cost = 3 * call_cost(X.numel(), round(PRICE_TAO * RAO_PER_TAO))
    report = verify_ledger(tmp_path / "ledger.sqlite", workers=0)
    assert report.ok, report
    assert report.state.paid == {EXPERT.address: cost} and report.payments == cost > 0
    with Ledger.open(tmp_path / "ledger.sqlite") as led:
        assert led.balance(EXPERT.address) >= cost
