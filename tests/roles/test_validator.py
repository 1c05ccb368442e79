"""Tests for moe/roles/validator.py and moe/net/ledger_feed.py: scoring, the DHT ledger feed, a tiny network."""

from __future__ import annotations

import json
import logging

import pytest
import torch

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
from moe.net.ledger_host import LedgerHost, local_genesis
from moe.roles.run_config import ValidatorConfig
from moe.roles.validator import query_windows, score_experts


def _replies(seed: int = 0, W: int = 12, T: int = 16):
    """Three honest experts of different quality (each good on its own third of the windows), a copy, and noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 256, (W, T), generator=g)
    honest = []
    for k in range(3):
        logits = torch.randn(W, T, 256, generator=g)
        good = torch.zeros(W, dtype=torch.bool)
        good[k * W // 3 : (k + 1) * W // 3] = True
        boost = torch.where(good, 6.0 - k, 1.0)[:, None].expand(W, T)  # expert k is sharpest on its own windows
        logits.scatter_add_(-1, y[..., None], boost[..., None])
        honest.append(torch.log_softmax(logits, -1))
    copy = torch.log_softmax(honest[0] + 1e-4 * torch.randn(W, T, 256, generator=g), -1)
    noise = torch.log_softmax(torch.randn(W, T, 256, generator=g), -1)
    dists = torch.stack([*honest, copy, noise])  # (5, W, T, 256)
    return dists, y


def test_noise_and_copy_get_zero_weight_and_honest_experts_share_the_rest():
    """Scoring flags the later-registered copy and the noise expert (weight 0) and shares weight among the honest."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    registration = [(10.0, 0), (11.0, 1), (12.0, 2), (20.0, 3), (21.0, 4)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    s = score_experts(hotkeys, registration, dists, y, present, ValidatorConfig())
    assert s.contribution[hotkeys[3]] == 0.0 and "copy" in s.flags[hotkeys[3]]
    assert s.contribution[hotkeys[4]] == 0.0 and "uninformative" in s.flags[hotkeys[4]]
    assert all(s.contribution[h] > 0 for h in hotkeys[:3])
    assert sum(s.contribution.values()) == pytest.approx(1.0)
    assert s.contribution[hotkeys[0]] > s.contribution[hotkeys[2]]  # the sharpest expert contributes most


def test_copy_registered_first_keeps_the_credit():
    """When the copy registered before the original, the original is the one flagged (registration order decides)."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    registration = [(30.0, 0), (11.0, 1), (12.0, 2), (5.0, 3), (21.0, 4)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    s = score_experts(hotkeys, registration, dists, y, present, ValidatorConfig())
    assert "copy" in s.flags[hotkeys[0]] and s.contribution[hotkeys[3]] > 0


def test_silent_expert_is_flagged_for_timeouts():
    """An expert that answered no window is flagged (timeout) and earns nothing; the others are scored normally."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    present[1] = False
    s = score_experts(hotkeys, [(i, i) for i in range(5)], dists, y, present, ValidatorConfig())
    assert "timeout" in s.flags[hotkeys[1]] and s.contribution[hotkeys[1]] == 0.0
    assert s.contribution[hotkeys[0]] > 0


def test_query_windows_drops_malformed_and_missing_replies(caplog):
    """Replies of the wrong shape and experts that did not answer count as absent for exactly those windows."""
    x = torch.randint(0, 256, (6, 8))

    def call(inputs):
        out = {}
        for hk, xb in inputs.items():
            if hk == "good":
                out[hk] = torch.log_softmax(torch.zeros(xb.shape[0], 8, 256), -1)
            elif hk == "bad":
                out[hk] = torch.zeros(xb.shape[0], 8, 3)
        return out

    with caplog.at_level(logging.WARNING):
        dists, present = query_windows(call, ["good", "bad", "silent"], x, batch_size=4)
    assert present[0].all() and not present[1].any() and not present[2].any()
    assert dists.shape == (3, 6, 8, 256)
    assert "reply of shape" in caplog.text


@pytest.fixture
def feed_net(tmp_path):
    """A loopback DHT with a running ledger feed; a funded validator key and a miner key. Reaps everything."""
    from moe.net.join import start_bootstrap_dht

    dht = start_bootstrap_dht()
    validator, miner, host = Hotkey.from_seed(b"v" * 32), Hotkey.from_seed(b"m" * 32), Hotkey.from_seed(b"h" * 32)
    genesis = local_genesis(0, 0.1, 10, 4, {validator.address: 10 * RAO_PER_TAO})
    feed = LedgerHost(dht, tmp_path / "ledger.sqlite", genesis, host, 0, 0.1, poll_interval=0.05).start()
    try:
        yield dht, feed, validator, miner, host
    finally:
        feed.stop()
        dht.shutdown()


def test_ledger_feed_accepts_signed_weights_and_rejects_forged_ones(feed_net, tmp_path, caplog):
    """Nodes register through the DHT inbox; genuine weights land in the ledger, forged/tampered ones are logged,
    never stored, and the file verifies."""
    dht, feed, validator, miner, host = feed_net
    m_uid, m_block, _ = register_on_ledger(dht, miner, 0, timeout=30, host=host.address)
    v_uid, _, head = register_on_ledger(dht, validator, 5 * RAO_PER_TAO, timeout=30, host=host.address)
    assert m_uid != v_uid and head.stakes[validator.address] == 5 * RAO_PER_TAO

    attacker = Hotkey.from_seed(b"a" * 32)
    tampered = WeightSubmission.create(validator, 0, head.epoch, [m_uid], [1.0])
    tampered.weights = [123]  # altered after signing
    impostor = WeightSubmission.create(validator, 0, head.epoch, [m_uid], [1.0])  # genuine, but relayed by another
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_host"):
        publish_signed(
            dht, WEIGHTS_KEY, attacker, {"submissions": [impostor.to_dict()]}, WEIGHTS_CONTEXT, 30
        )  # filed under the attacker's own key
        publish_signed(dht, WEIGHTS_KEY, validator, {"submissions": [tampered.to_dict()]}, WEIGHTS_CONTEXT, 30)
        assert feed.wait(lambda f: len(f.rejected) >= 2, 10)
    assert "signature does not verify" in caplog.text and "names validator" in caplog.text

    head = read_head(dht, host.address)
    good = WeightSubmission.create(validator, 0, head.epoch, [m_uid], [1.0])
    assert good.verify()
    publish_weights(dht, validator, [good])
    assert feed.wait(lambda f: ("weights", validator.address) in f.accepted, 10)
    tempo = 10
    assert feed.wait(lambda f: f.height >= (f.last_weights_height // tempo + 1) * tempo, 15)
    feed.stop()

    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        stored = [r for b in ledger.blocks() for r in b.records if r.get("kind") == "weights"]
        assert [r["signature"] for r in stored] == [good.signature]  # only the genuine one is on chain
        assert ledger.balance(miner.address) > 0  # the weighted miner was paid at the epoch's end
    assert verify_ledger(tmp_path / "ledger.sqlite", workers=0).ok


def test_inbox_refuses_records_acting_for_another_hotkey(feed_net, caplog):
    """A registration signed by one hotkey but posted in another's inbox entry is refused and logged."""
    from moe.ledger.records import registration_record

    dht, feed, validator, miner, host = feed_net
    head = read_head(dht, host.address) or (feed.wait(lambda f: read_head(dht) is not None, 10) and read_head(dht))
    rec = registration_record(miner, 0, head.head_hash, nonce=0)
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_host"):
        publish_signed(dht, INBOX_KEY, validator, {"records": [rec]}, INBOX_CONTEXT, 30)
        assert feed.wait(lambda f: len(f.rejected) >= 1, 10)
    assert "acts for another hotkey" in caplog.text
    assert miner.address not in read_head(dht, host.address).uids


@pytest.mark.slow
def test_tiny_network_with_adversaries(procs, tmp_path):
    """On a tiny local network with a copycat and a noise expert, validators give both zero weight, adversaries earn
    under 1% of the miners' emission, the weights are signed on the ledger, and the ledger file verifies."""
    args = [f"out_dir={tmp_path}", "run_id=v", "baselines=false", "adversaries=copycat,noise", "validator.epochs=2"]
    proc = procs.run(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "v" / "summary.json").read_text())
    adversaries = {e["adversary"]: e for e in s["experts"] if e["adversary"]}
    assert set(adversaries) == {"copycat", "noise"}
    for weights in s["weights"].values():
        assert weights, "every validator published weights"
        for e in adversaries.values():
            assert weights.get(str(e["uid"]), 0) == 0
    for e in adversaries.values():
        assert s["contribution"][e["hotkey"]] == 0.0
    assert s["checks"]["adversaries_below_1pct"]
    assert s["checks"]["ledger_verifies"]
    assert verify_ledger(tmp_path / "v" / "ledger.sqlite", workers=0).ok


def test_special_token_targets_are_not_scored():
    """Windows whose next token is EOS (id ≥ 256) score without error, and those positions change no contribution."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    reg = [(i, i) for i in range(5)]
    y2 = y.clone()
    y2[:, 0] = 257
    dists2 = dists.clone()
    dists2[:, :, 0] = torch.log_softmax(torch.randn(5, y.shape[0], 256), -1)  # whatever experts say there is ignored
    dists2[3, :, 0] = dists2[0, :, 0]  # (the copy still copies)
    a = score_experts(hotkeys, reg, dists2, y2, present, ValidatorConfig())
    b = score_experts(hotkeys, reg, dists, y2, present, ValidatorConfig())
    assert a.contribution == pytest.approx(b.contribution)
