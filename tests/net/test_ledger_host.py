"""Tests for moe/net/ledger_host.py and moe/net/ledger_client.py: the ledger host fed over a real DHT."""

from __future__ import annotations

import logging

import pytest

from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, Ledger, WeightSubmission, verify_ledger
from moe.net.dht_records import publish_signed
from moe.net.ledger_client import (
    INBOX_CONTEXT,
    INBOX_KEY,
    WEIGHTS_CONTEXT,
    WEIGHTS_KEY,
    publish_weights,
    read_head,
    register_on_ledger,
)
from moe.net.ledger_host import LedgerHost, LedgerHostConfig, local_genesis

NETUID = 1


@pytest.fixture
def ledger_net(tmp_path):
    """A loopback DHT with a running ledger host; a funded validator key and a miner key. Reaps everything."""
    from moe.net.join import start_bootstrap_dht

    dht = start_bootstrap_dht()
    validator, miner, host = Hotkey.from_seed(b"v" * 32), Hotkey.from_seed(b"m" * 32), Hotkey.from_seed(b"h" * 32)
    lh = LedgerHostConfig(block_interval_seconds=0.1, tempo=10, difficulty=4, commit_reveal=False)
    genesis = local_genesis(lh, [NETUID], {validator.address: 10 * RAO_PER_TAO})
    feed = LedgerHost(dht, tmp_path / "ledger.sqlite", genesis, host, 0.1, poll_interval=0.05).start()
    try:
        yield dht, feed, validator, miner, host
    finally:
        feed.stop()
        dht.shutdown()


def test_host_accepts_signed_weights_and_rejects_forged_ones(ledger_net, tmp_path, caplog):
    """Nodes register through the DHT inbox; genuine weights land in the ledger, forged/tampered ones are logged,
    never stored, and the file verifies."""
    dht, feed, validator, miner, host = ledger_net
    m_uid = register_on_ledger(dht, miner, 0, timeout=30, host=host.address, netuids=[NETUID])[0][NETUID][0]
    mine, head = register_on_ledger(dht, validator, 5 * RAO_PER_TAO, timeout=30, host=host.address, netuids=[NETUID])
    v_uid = mine[NETUID][0]
    assert m_uid != v_uid and head.stakes[validator.address] == 5 * RAO_PER_TAO

    attacker = Hotkey.from_seed(b"a" * 32)
    tampered = WeightSubmission.create(validator, NETUID, head.epoch, [m_uid], [1.0])
    tampered.weights = [123]  # altered after signing
    impostor = WeightSubmission.create(
        validator, NETUID, head.epoch, [m_uid], [1.0]
    )  # genuine, but relayed by another
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_host"):
        publish_signed(
            dht, WEIGHTS_KEY, attacker, {"submissions": [impostor.to_dict()]}, WEIGHTS_CONTEXT, 30
        )  # filed under the attacker's own key
        publish_signed(dht, WEIGHTS_KEY, validator, {"submissions": [tampered.to_dict()]}, WEIGHTS_CONTEXT, 30)
        assert feed.wait(lambda f: len(f.rejected) >= 2, 10)
    assert "signature does not verify" in caplog.text and "names validator" in caplog.text

    head = read_head(dht, host.address)
    good = WeightSubmission.create(validator, NETUID, head.epoch, [m_uid], [1.0])
    assert good.verify()
    publish_weights(dht, validator, [good])
    assert feed.wait(lambda f: ("weights", validator.address) in f.accepted, 10)
    tempo = 10
    assert feed.wait(lambda f: f.height >= (f.last_weights_height // tempo + 1) * tempo, 15)
    assert feed.wait(lambda f: read_head(dht, host.address).incentive().get(miner.address) == 1.0, 10)
    assert read_head(dht, host.address).incentive()[validator.address] == 0.0  # the router learns whom they paid
    feed.stop()

    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        stored = [r for b in ledger.blocks() for r in b.records if r.get("kind") == "weights"]
        assert [r["signature"] for r in stored] == [good.signature]  # only the genuine one is on chain
        assert ledger.balance(miner.address) > 0  # the weighted miner was paid at the epoch's end
    assert verify_ledger(tmp_path / "ledger.sqlite", workers=0).ok


def test_inbox_refuses_records_acting_for_another_hotkey(ledger_net, caplog):
    """A registration signed by one hotkey but posted in another's inbox entry is refused and logged."""
    from moe.ledger.records import registration_record

    dht, feed, validator, miner, host = ledger_net
    assert feed.wait(lambda f: read_head(dht, host.address) is not None, 10)
    head = read_head(dht, host.address)
    rec = registration_record(miner, NETUID, head.head_hash, nonce=0)
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_host"):
        publish_signed(dht, INBOX_KEY, validator, {"records": [rec]}, INBOX_CONTEXT, 30)
        assert feed.wait(lambda f: len(f.rejected) >= 1, 10)
    assert "acts for another hotkey" in caplog.text
    assert miner.address not in read_head(dht, host.address).registered()


def test_host_pins_the_seed_publishers_seed_in_its_head(tmp_path):
    """Given the seed publisher's key, the host pins the sha256 that key announces in every head it signs, ignoring
    a seed another hotkey announced first; a node reading the pinned seed gets that sha256."""
    from moe.net.join import start_bootstrap_dht
    from moe.net.ledger_client import LedgerAccessConfig, pinned_seed_sha256
    from moe.net.seed_transfer import SeedRecord, announce_seed

    peer = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
    host, publisher, mallory = (Hotkey.from_seed(bytes([i]) * 32) for i in (51, 52, 53))
    dht = start_bootstrap_dht()
    feed = None
    try:
        assert announce_seed(dht, SeedRecord(mallory.address, "ee" * 32, 10, peer), mallory, ttl=30)
        genesis = local_genesis(LedgerHostConfig(block_interval_seconds=0.1, tempo=10, difficulty=4), [NETUID], {})
        feed = LedgerHost(dht, tmp_path / "l.sqlite", genesis, host, 0.1, 0.05, seed_publisher=publisher.address)
        feed.start()
        assert feed.wait(lambda f: read_head(dht, host.address) is not None, 10)
        assert read_head(dht, host.address).seed_sha256 is None  # the publisher announced nothing yet
        assert announce_seed(dht, SeedRecord(publisher.address, "5e" * 32, 10, peer), publisher, ttl=30)
        ledger = LedgerAccessConfig(enabled=True, host=host.address)
        assert pinned_seed_sha256(dht, ledger, timeout=10) == "5e" * 32
        assert announce_seed(dht, SeedRecord(publisher.address, "77" * 32, 10, peer), publisher, ttl=30)
        height = read_head(dht, host.address).height
        assert feed.wait(lambda f: read_head(dht, host.address).height > height + 2, 10)
        assert read_head(dht, host.address).seed_sha256 == "5e" * 32  # pinned once, for the run
        assert pinned_seed_sha256(dht, LedgerAccessConfig(), timeout=1) is None  # no ledger, no pin
    finally:
        if feed is not None:
            feed.stop()
        dht.shutdown()
