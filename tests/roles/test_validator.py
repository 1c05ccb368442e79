"""Tests for moe/roles/validator.py: querying experts in batches, and validators on a tiny network."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from moe.ledger import verify_ledger
from moe.roles.validator import query_windows


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


@pytest.mark.slow
def test_tiny_network_with_adversaries(procs, tmp_path):
    """On a tiny local network with a copycat and a noise expert, validators give both zero weight, adversaries earn
    under 1% of the miners' emission, the weights are signed on the ledger, the ledger file verifies, and the
    router, which reads the validators' consensus from the ledger, routes to the honest experts only."""
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
    router = json.loads((tmp_path / "v" / "router" / "result.json").read_text())
    honest = {e["hotkey"] for e in s["experts"] if not e["adversary"]}
    assert set(router["distrusted"]) == {e["hotkey"] for e in adversaries.values()}
    assert set(router["experts"]) == honest
