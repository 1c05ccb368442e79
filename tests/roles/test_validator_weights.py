"""Tests for moe/roles/validator_weights.py: per-subnet weights committed, revealed and paid through a real ledger
host over a real DHT, and root reports splitting the emission by contribution."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, Ledger, verify_ledger
from moe.ledger.records import reveal_record
from moe.net.expert_record import ExpertRecord
from moe.net.ledger_client import LedgerHead, SubnetHead, read_head, register_on_ledger, submit_records
from moe.net.ledger_host import LedgerHost, LedgerHostConfig, local_genesis
from moe.roles.validator_weights import WeightSetter, paid_shares, root_weights, subnet_weights

ENGLISH, CODE = 1, 2


def record(hotkey: str, netuid: int) -> ExpertRecord:
    model = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=260, params=9000)
    return ExpertRecord(0, hotkey, "english" if netuid == ENGLISH else "code", netuid, "12D3KooW" + "x" * 44, model)


def test_weights_are_per_subnet_over_the_uids_registered_there():
    """Each subnet's vector holds only the experts registered on the subnet their record names, by that subnet's
    uid; an all-zero subnet is left out; the root report sums each subnet's contributions."""
    a, b, c, stranger = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    head = LedgerHead(host="f" * 64, height=1, head_hash="ab" * 32, epoch=0, tempo=10, block_interval=0.1)
    head.subnets = {ENGLISH: SubnetHead(1, uids={a: (3, 1), b: (5, 1)}), CODE: SubnetHead(1, uids={c: (3, 1)})}
    records = [record(a, ENGLISH), record(b, ENGLISH), record(c, CODE), record(stranger, CODE)]
    contribution = {a: 0.5, b: 0.2, c: 0.0, stranger: 0.3}
    assert subnet_weights(head, records, contribution) == {ENGLISH: ([3, 5], [0.5, 0.2])}
    assert root_weights(head, records, contribution) == {ENGLISH: pytest.approx(0.7), CODE: 0.0}


def test_paid_shares_are_the_subnet_share_times_the_share_within_it():
    """A miner asks for its subnet's root share times its part of the subnet's weights; an unregistered or unweighted
    miner asks for nothing, and the shares sum to 1 over the weighted miners."""
    a, b, c, stranger = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    head = LedgerHead(host="f" * 64, height=1, head_hash="ab" * 32, epoch=0, tempo=10, block_interval=0.1)
    head.subnets = {ENGLISH: SubnetHead(1, uids={a: (3, 1), b: (5, 1)}), CODE: SubnetHead(1, uids={c: (3, 1)})}
    records = [record(a, ENGLISH), record(b, ENGLISH), record(c, CODE), record(stranger, CODE)]
    per_subnet = {ENGLISH: ([3, 5], [3.0, 1.0]), CODE: ([3], [2.0])}
    paid = paid_shares(head, records, per_subnet, {ENGLISH: 0.6, CODE: 0.2})
    assert paid == pytest.approx({a: 0.75 * 0.75, b: 0.75 * 0.25, c: 0.25, stranger: 0.0})


@pytest.fixture
def ledger_net(tmp_path):
    """A loopback DHT and a ledger host with two commit-reveal subnets and the contribution split. Reaps all."""
    from moe.net.join import start_bootstrap_dht

    dht = start_bootstrap_dht()
    validator, host = Hotkey.from_seed(b"v" * 32), Hotkey.from_seed(b"h" * 32)
    lh = LedgerHostConfig(block_interval_seconds=0.1, tempo=10, difficulty=4, emission_split="contribution")
    genesis = local_genesis(lh, [ENGLISH, CODE], {validator.address: 10 * RAO_PER_TAO})
    feed = LedgerHost(dht, tmp_path / "ledger.sqlite", genesis, host, 0.1, poll_interval=0.05).start()
    try:
        yield dht, feed, validator, host
    finally:
        feed.stop()
        dht.shutdown()


def test_commit_then_reveal_pays_the_miners_and_splits_emission_by_contribution(ledger_net, tmp_path):
    """Committed weights are invisible on the ledger until revealed an epoch later; a reveal with altered weights is
    refused; the genuine reveal pays each subnet's miners, and the root report (English 3x code) becomes the emission
    split; the ledger file verifies."""
    dht, feed, validator, host = ledger_net
    miners = {ENGLISH: Hotkey.from_seed(b"e" * 32), CODE: Hotkey.from_seed(b"c" * 32)}
    uids = {n: register_on_ledger(dht, k, 0, 30, host=host.address, netuids=[n])[0][n][0] for n, k in miners.items()}
    _, head = register_on_ledger(dht, validator, 5 * RAO_PER_TAO, 30, host=host.address, netuids=[ENGLISH, CODE])
    setter = WeightSetter(dht, validator, host.address)
    sent = setter.set(head, {n: ([uids[n]], [1.0]) for n in miners}, {ENGLISH: 0.75, CODE: 0.25})
    assert sent == {ENGLISH: {uids[ENGLISH]: 65535}, CODE: {uids[CODE]: 65535}}
    assert feed.wait(lambda f: ("commit", validator.address) in f.accepted, 10)

    forged = setter.pending[0]
    bad = reveal_record(validator, forged.netuid, forged.epoch, forged.uids, [1], forged.salt)  # altered weights
    assert feed.wait(lambda f: read_head(dht, host.address).epoch == forged.reveal_epoch, 10)
    submit_records(dht, validator, [bad])
    assert feed.wait(lambda f: any(r[0] == "reveal" for r in f.rejected), 10)
    assert setter.reveal_due(timeout=10) == 2
    assert feed.wait(lambda f: sum(k == "reveal" for k, _ in f.accepted) == 2, 10)
    tempo = 10
    assert feed.wait(lambda f: f.height >= (f.last_weights_height // tempo + 1) * tempo, 15)
    assert feed.wait(lambda f: read_head(dht, host.address).subnets[ENGLISH].emission_share > 0.7, 10)
    shares = read_head(dht, host.address).subnets
    assert shares[ENGLISH].emission_share == pytest.approx(0.75, abs=1e-3)
    assert shares[CODE].emission_share == pytest.approx(0.25, abs=1e-3)
    height = feed.height
    assert feed.wait(lambda f: f.height >= height + tempo, 15)  # one more epoch pays by the revealed weights
    feed.stop()  # the ledger is the host thread's until then: read it only now
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        records = [(b.height, r) for b in ledger.blocks() for r in b.records]
        kinds = [r["kind"] for _, r in records]
        assert kinds.count("commit") == 2 and kinds.count("reveal") == 2 and "split" in kinds
        revealed_at = max(h for h, r in records if r["kind"] == "reveal")
        paid = [h for h, r in records if r["kind"] == "epoch" and sum(r["miner_payouts"]) > 0]
        assert paid and min(paid) >= revealed_at  # committed weights paid nobody until revealed
        assert all(ledger.balance(k.address) > 0 for k in miners.values())
    assert verify_ledger(tmp_path / "ledger.sqlite", workers=0).ok
