"""Tests for moe/training/network_metrics.py: each role's metrics against a plain recomputation from its inputs."""

from __future__ import annotations

import pytest

from moe.poi.epoch import EpochScore
from moe.training.network_metrics import ledger_epoch_metrics, routing_metrics, validator_epoch_metrics

A, B = "aa" * 32, "bb" * 32


def test_routing_load_is_the_mean_share_over_input_subnets():
    """router/load/<hotkey> is the plain mean over input subnets of the expert's share, next to each subnet's own."""
    routing = {"code": {A: 0.75, B: 0.25}, "math": {A: 0.25, B: 0.75}, "english": {A: 0.5, B: 0.5}}
    m = routing_metrics(routing)
    for hk in (A, B):
        assert m[f"router/load/{hk[:8]}"] == pytest.approx(sum(r[hk] for r in routing.values()) / 3)
        for subnet, shares in routing.items():
            assert m[f"router/load/{subnet}/{hk[:8]}"] == shares[hk]
    assert len(m) == 2 + 2 * 3
    assert routing_metrics({}) == {}


def test_validator_weights_are_shares_of_the_signed_u16_weights():
    """validator/weight/<hotkey> is each expert's u16 weight over their sum; contribution, bits and counts pass
    through, and an expert with no bits per byte gets no bpb key."""
    score = EpochScore(
        contribution={A: 0.7, B: 0.3},
        shapley_bits={A: 0.2, B: 0.1},
        flags={B: ["noise"]},
        bpb={A: 4.0, B: None},
        mixture_bpb=3.5,
    )
    m = validator_epoch_metrics(score, {A: 65535, B: 21845}, seconds=1.5)
    assert m[f"validator/weight/{A[:8]}"] == pytest.approx(0.75, abs=1e-5)
    assert m[f"validator/weight/{B[:8]}"] == pytest.approx(0.25, abs=1e-5)
    assert m[f"validator/contribution/{A[:8]}"] == 0.7 and m[f"validator/shapley_bits/{B[:8]}"] == 0.1
    assert m[f"validator/bpb/{A[:8]}"] == 4.0 and f"validator/bpb/{B[:8]}" not in m
    assert (m["validator/mixture_bpb"], m["validator/experts"], m["validator/flags"]) == (3.5, 2, 1)
    assert not any(k.startswith("validator/weight/") for k in validator_epoch_metrics(score, {}, 0.0))


def test_ledger_epoch_in_tao():
    """An epoch record's emission and payouts become TAO, with the issuance and height given and each uid's
    incentive by hotkey."""
    rec = {
        "epoch": 7,
        "hotkeys": [A, B],
        "incentive": [0.6, 0.4],
        "emission": 20_000_000_000,
        "miner_payouts": [9_000_000_000, 6_000_000_000],
        "validator_payouts": [5_000_000_000],
    }
    m = ledger_epoch_metrics(rec, height=159, issuance_rao=1_460_000_000_000, rao_per_tao=1_000_000_000)
    assert (m["ledger/height"], m["ledger/epoch"], m["ledger/issuance"], m["ledger/emission"]) == (159, 7, 1460, 20)
    assert (m["ledger/miner_payouts"], m["ledger/validator_payouts"]) == (15, 5)
    assert (m[f"ledger/incentive/{A[:8]}"], m[f"ledger/incentive/{B[:8]}"]) == (0.6, 0.4)
