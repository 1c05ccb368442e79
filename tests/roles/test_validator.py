"""Tests for moe/roles/validator.py: validators on a tiny network with adversaries."""

from __future__ import annotations

import json

import pytest

from moe.ledger import verify_ledger


@pytest.mark.slow
def test_tiny_network_with_adversaries(procs, tmp_path):
    """On a tiny local network with a copycat, a noise and a peek-ahead expert, validators flag and give all three
    zero weight, adversaries earn
    under 1% of the miners' emission, the weights are signed on the ledger, the ledger file verifies, and the
    router, which reads the validators' consensus from the ledger, routes to the honest experts only."""
    adversaries = "adversaries=copycat,noise,peek"
    args = [f"out_dir={tmp_path}", "run_id=v", "baselines=false", adversaries, "validator.epochs=2"]
    proc = procs.run(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "v" / "summary.json").read_text())
    adversaries = {e["adversary"]: e for e in s["experts"] if e["adversary"]}
    assert set(adversaries) == {"copycat", "noise", "peek"}
    assert "noncausal" in adversaries["peek"]["flags"] and all(e["flags"] for e in adversaries.values())
    assert s["checks"]["every_adversary_flagged"] and s["checks"]["no_honest_expert_flagged"]
    for weights in s["weights"].values():
        assert weights, "every validator published weights"
        for e in adversaries.values():
            assert weights.get(str(e["uid"]), 0) == 0
    for e in adversaries.values():
        assert s["contribution"][e["hotkey"]] == 0.0
    assert s["checks"]["adversaries_below_1pct"]
    assert s["checks"]["ledger_verifies"]
    assert verify_ledger(tmp_path / "v" / "ledger.sqlite", workers=0).ok
    router = json.loads((tmp_path / "v" / "router" / "result.json").read_text())
    honest = {e["hotkey"] for e in s["experts"] if not e["adversary"]}
    assert set(router["distrusted"]) == {e["hotkey"] for e in adversaries.values()}
    assert set(router["experts"]) == honest
