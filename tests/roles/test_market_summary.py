"""Tests for moe/roles/market_summary.py: subnets' emission against contribution, and competition within a subnet."""

from __future__ import annotations

from moe.roles.market_summary import _contribution_shares, _measured_bpb, market_checks


def result(stake: float, root: dict[str, float], bpb: dict[str, float]) -> dict:
    """A validator result.json reduced to what the market summary reads."""
    return {"stake_tao": stake, "epochs": [{"root_weights": {"1": 9.0}}, {"root_weights": root}], "bpb": bpb}


def test_contribution_shares_are_the_stake_weighted_mean_of_last_normalised_reports():
    """Each validator's last root report is normalised to sum 1 and weighed by stake; earlier epochs are ignored."""
    results = [result(300.0, {"1": 3.0, "2": 1.0}, {}), result(100.0, {"1": 0.0, "2": 2.0}, {})]
    shares = _contribution_shares(results, {"english": 1, "code": 2})
    assert shares == {1: (300 * 0.75 + 0) / 400, 2: (300 * 0.25 + 100 * 1.0) / 400}


def test_no_reports_give_no_contribution_shares():
    """Validators that never reported a positive root row leave the contribution share unknown (None), not 0."""
    assert _contribution_shares([result(1.0, {"1": 0.0}, {})], {"english": 1}) is None


def test_measured_bpb_is_stake_weighted():
    """The validators' measurements of one expert average by stake; non-numbers are skipped."""
    out = _measured_bpb(
        [result(3.0, {}, {"a": 2.0, "b": "x"}), result(1.0, {}, {"a": 3.0})], lambda r, hk: r["bpb"].get(hk)
    )
    assert out == {"a": 2.25}


STEPS = {"strong": 400, "weak": 150}


def summary(rewards: dict[str, float], bpb: dict[str, float], emission: float, contribution: float) -> dict:
    return {
        "emission_split": "contribution",
        "experts": [{"hotkey": hk, "subnet": "english", "train_steps": STEPS[hk]} for hk in rewards],
        "subnets": {
            "english": {"emission_share": emission, "contribution_share": contribution, "miners": list(rewards)},
            "code": {"emission_share": 1 - emission, "contribution_share": 1 - contribution, "miners": []},
        },
        "rewards": rewards,
        "home_bpb": bpb,
    }


def test_checks_pass_when_the_better_miner_earns_more_and_shares_follow_contribution():
    """More steps, lower validator-measured bits per byte on its subnet and more TAO, shares within 0.05: both
    checks hold."""
    checks = market_checks(summary({"strong": 5.0, "weak": 1.0}, {"strong": 2.1, "weak": 2.6}, 0.62, 0.60))
    assert checks["stronger_miners_earn_more"] and checks["subnet_shares_match_contribution"]


def test_checks_fail_when_the_weaker_miner_earns_more_or_shares_drift():
    """The weaker miner out-earning the stronger one, or a 0.1 share gap, fails the corresponding check."""
    checks = market_checks(summary({"strong": 1.0, "weak": 5.0}, {"strong": 2.1, "weak": 2.6}, 0.70, 0.60))
    assert checks["stronger_miners_earn_more"] is False
    assert checks["subnet_shares_match_contribution"] is False
    assert checks["subnet_share_gap"] == {"english": 0.1, "code": 0.1}


def test_more_compute_that_does_not_lower_bits_per_byte_fails_the_check():
    """The miner with more steps earning more is not enough: its home bits per byte must also be the lower one."""
    checks = market_checks(summary({"strong": 5.0, "weak": 1.0}, {"strong": 2.7, "weak": 2.6}, 0.60, 0.60))
    assert checks["stronger_miners_earn_more"] is False
