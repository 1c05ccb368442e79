"""Tests for moe/roles/validator.py: validators on a tiny network with adversaries."""

from __future__ import annotations

import json

import pytest

from moe.ledger import verify_ledger
from moe.net.expert_record import ExpertRecord
from moe.net.ledger_client import LedgerHead, SubnetHead
from moe.roles.validator import _registration, scorable


@pytest.mark.slow
def test_tiny_network_with_adversaries(procs, tmp_path):
    """On a tiny local network with a copycat, a noise, a peek-ahead, a hijacking, a two-faced and a memorising
    expert, validators flag all six (the two-faced one by re-sending the router's sampled calls, the memoriser by its
    gap between public and route windows) and give them zero weight, adversaries earn
    under 1% of the miners' emission, the weights are signed on the ledger, the ledger file verifies, and the
    router, which reads the validators' consensus from the ledger, routes to the honest experts only (less any the
    validators found redundant, a market verdict)."""
    adversaries = "adversaries=copycat,noise,peek,hijack,twofaced,memorizer"
    args = [f"out_dir={tmp_path}", "run_id=v", "baselines=false", "students=[]", adversaries, "validator.epochs=2"]
    proc = procs.run(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "v" / "summary.json").read_text())
    adversaries = {e["adversary"]: e for e in s["experts"] if e["adversary"]}
    assert set(adversaries) == {"copycat", "noise", "peek", "hijack", "twofaced", "memorizer"}
    assert "noncausal" in adversaries["peek"]["flags"] and "identity" in adversaries["hijack"]["flags"]
    assert "twofaced" in adversaries["twofaced"]["flags"] and "memorised" in adversaries["memorizer"]["flags"]
    assert all(e["flags"] for e in adversaries.values())
    assert s["checks"]["every_adversary_flagged"] and s["checks"]["no_honest_expert_flagged"]
    for weights in s["weights"].values():
        assert weights, "every validator published weights"
        for e in adversaries.values():
            assert weights.get(e["hotkey"], 0) == 0
    for e in adversaries.values():
        assert s["contribution"].get(e["hotkey"], 0.0) == 0.0  # the hijacker is never even scored
    assert s["checks"]["adversaries_below_1pct"]
    assert s["checks"]["ledger_verifies"]
    assert verify_ledger(tmp_path / "v" / "ledger.sqlite", workers=0).ok
    router = json.loads((tmp_path / "v" / "router" / "result.json").read_text())
    honest = {e["hotkey"] for e in s["experts"] if not e["adversary"]}
    # a miner the validators found adding nothing beyond earlier ones (a market verdict, as in the summary's checks)
    # is not called either; on 30 training steps one validator epoch can find that of an honest one
    outvoted = set(s["checks"]["honest_redundant"])
    assert set(router["distrusted"]) <= {e["hotkey"] for e in adversaries.values()} | outvoted  # no hijacker
    assert set(router["experts"]) == honest - outvoted and len(outvoted) < len(honest)


def _record(hotkey: str, registered_at: float, uid: int = 9) -> ExpertRecord:
    model = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=260, params=9000)
    return ExpertRecord(uid, hotkey, "code", 1, "12D3KooW" + "x" * 44, model, registered_at=registered_at)


def test_validators_score_only_ledger_registered_hotkeys_in_ledger_order():
    """With a ledger, a record not registered on its own subnet is not scored (however early it claims to have
    registered) and the order copies are judged by comes from the ledger's registration blocks, never from a record's
    own claim."""
    me, early, late, stranger = "0" * 64, "a" * 64, "b" * 64, "c" * 64
    uids = {early: (3, 5), late: (4, 8), me: (1, 2), stranger: (6, 1)}
    head = LedgerHead(host="f" * 64, height=10, head_hash="ab" * 32, epoch=1, tempo=4, block_interval=0.5)
    head.subnets = {1: SubnetHead(difficulty=1, uids={hk: uids[hk] for hk in (early, late, me)}), 2: SubnetHead(1)}
    head.subnets[2].uids[stranger] = uids[stranger]  # registered, but on another subnet than its record names
    records = [_record(late, registered_at=0.0), _record(stranger, registered_at=0.0), _record(early, 99.0)]
    got = scorable(records + [_record(me, 0.0)], me, head)
    assert [r.hotkey for r in got] == [late, early]
    assert _registration(got, head) == [(8.0, 4), (5.0, 3)]  # the backdated claim of `late` changes nothing
    assert [r.hotkey for r in scorable(records, me, None)] == [late, stranger, early]  # no ledger: all
    assert _registration(records[:1], None) == [(float("inf"), 9)]  # no claim at all sorts last
