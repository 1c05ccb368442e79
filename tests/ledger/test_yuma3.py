"""Tests for Yuma 3 and liquid alpha in moe/ledger/yuma.py: a plain-Python loop reference, subtensor's own Yuma 3
scenario vectors (pallets/subtensor/src/tests/epoch.rs), and hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe.ledger.yuma import liquid_alphas, yuma_epoch
from tests.ledger.test_yuma import ref_col_normalize, ref_consensus, ref_normalize


def ref_alpha(c, w, b, lo, hi, steep):
    """subtensor's alpha_sigmoid for one bond, in plain floats."""
    buy = min(max(w - c, 0.0), 1.0)
    sell = min(max(b - w, 0.0), 1.0)
    d = buy if w >= b else sell
    x = min(max(steep / -100.0 * (d - 0.5), -20.0), 20.0)  # exp_safe
    sig = 1.0 / (1.0 + math.exp(x))
    return min(max(lo + sig * (hi - lo), lo), hi)


def reference_yuma3(W, S, B, kappa, alpha, penalty, liquid, lo, hi, steep):
    """One Yuma 3 epoch with lists and loops, step by step as subtensor's epoch_mechanism with Yuma3On."""
    V, M = len(W), len(W[0])
    s = ref_normalize(S)
    W = [ref_normalize(row) for row in W]
    C = ref_consensus(W, s, kappa)
    Wc = [[min(W[i][j], C[j]) for j in range(M)] for i in range(V)]
    inc = ref_normalize([sum(s[i] * Wc[i][j] for i in range(V)) for j in range(M)])
    trust = [sum(row) for row in Wc]
    if penalty == 0.0:  # interpolate_sparse returns either matrix unchanged at the ends
        Wb = W
    elif penalty == 1.0:
        Wb = Wc
    else:
        Wb = [[W[i][j] + penalty * (Wc[i][j] - W[i][j]) for j in range(M)] for i in range(V)]
    B = B or [[0.0] * M for _ in range(V)]
    liquid = liquid and any(c != 0 for c in C)
    ema = [[0.0] * M for _ in range(V)]
    for i in range(V):
        for j in range(M):
            a = ref_alpha(C[j], Wb[i][j], B[i][j], lo, hi, steep) if liquid else alpha
            ema[i][j] = min(a * Wb[i][j] + (1 - a) * B[i][j], 1.0)
    Bn = ref_col_normalize(ema, V, M)
    per_validator = [sum(Bn[i][j] * inc[j] for j in range(M)) for i in range(V)]
    div = ref_normalize([per_validator[i] * s[i] for i in range(V)])
    return C, inc, div, ema, trust


@pytest.mark.parametrize("seed", range(60))
def test_yuma3_matches_reference_on_random_cases(seed):
    """Vectorized Yuma 3, with and without liquid alpha, equals the plain-Python loop to 1e-9 on random inputs."""
    rng = np.random.default_rng(1000 + seed)
    V, M = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    W = rng.random((V, M)) * (rng.random((V, M)) > 0.3)
    if seed % 3 == 0:
        W = np.round(W * 4) / 4
    S = rng.random(V) * (rng.random(V) > 0.2)
    B = None if seed % 4 == 1 else rng.random((V, M)) * (rng.random((V, M)) > 0.4)
    kappa, alpha = float(rng.choice([0.5, rng.random()])), float(rng.random())
    penalty = float(rng.choice([0.0, 1.0, rng.random()]))
    lo, hi = sorted(rng.random(2).tolist())
    steep = float(rng.choice([0.0, 1000.0, 5000.0 * rng.random(), 20000.0]))
    liquid = bool(seed % 2)
    got = yuma_epoch(
        W,
        S,
        B,
        kappa=kappa,
        bond_alpha=alpha,
        bond_penalty=penalty,
        yuma_version=3,
        liquid_alpha=liquid,
        alpha_low=lo,
        alpha_high=hi,
        alpha_sigmoid_steepness=steep,
    )
    Bl = None if B is None else B.tolist()
    C, inc, div, ema, trust = reference_yuma3(W.tolist(), S.tolist(), Bl, kappa, alpha, penalty, liquid, lo, hi, steep)
    np.testing.assert_allclose(got.consensus, C, atol=1e-9)
    np.testing.assert_allclose(got.incentive, inc, atol=1e-9)
    np.testing.assert_allclose(got.dividends, div, atol=1e-9)
    np.testing.assert_allclose(got.bonds, ema, atol=1e-9)
    np.testing.assert_allclose(got.validator_trust, trust, atol=1e-9)


@pytest.mark.parametrize("steep", [0.0, 300.0, 1000.0, 10000.0])
def test_liquid_alphas_match_alpha_sigmoid(steep):
    """liquid_alphas equals subtensor's per-bond alpha_sigmoid, and C=None equals passing a consensus above Wb."""
    rng = np.random.default_rng(int(steep))
    Wb = np.round(rng.random((6, 9)) * 4) / 4  # ties with B and C exercise the weight >= bond branch
    B = np.round(rng.random((6, 9)) * 4) / 4
    C = np.round(rng.random(9) * 4) / 4
    ref = [[ref_alpha(C[j], Wb[i, j], B[i, j], 0.2, 0.6, steep) for j in range(9)] for i in range(6)]
    np.testing.assert_allclose(liquid_alphas(Wb, B, C, 0.2, 0.6, steep), ref, atol=1e-12)
    Wc = np.minimum(Wb, C)
    np.testing.assert_allclose(liquid_alphas(Wc, B, None, 0.2, 0.6, steep), liquid_alphas(Wc, B, C, 0.2, 0.6, steep))


# subtensor's test_yuma_3_* scenarios: stakes, weights per epoch (None keeps the last), bonds and dividends per epoch,
# with kappa 32767/65535, bonds penalty 0, steepness 1000, liquid alpha (0.1, 0.3) or bond_alpha 0.025 when disabled.
A1, A2 = [1.0, 0.0], [0.0, 1.0]
SCENARIOS = {
    "kappa_moves_first": (
        [8, 1, 1],
        [[A1, A1, A1], [A2, A1, A1], [A2, A2, A1], [A2, A2, A2], None, None],
        [
            [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
            [[0.0908, 0.1013], [0.3697, 0.0], [0.3697, 0.0]],
            [[0.0815, 0.1924], [0.3170, 0.1013], [0.5580, 0.0]],
            [[0.0731, 0.2742], [0.2765, 0.1924], [0.4306, 0.1013]],
            [[0.0656, 0.3478], [0.2435, 0.2742], [0.3589, 0.1924]],
            [[0.0588, 0.4139], [0.2157, 0.3478], [0.3089, 0.2742]],
        ],
        [
            [0.8, 0.1, 0.1],
            [1.0, 0.0, 0.0],
            [0.9382, 0.0618, 0.0],
            [0.8819, 0.0773, 0.0407],
            [0.8564, 0.0844, 0.0592],
            [0.8418, 0.0884, 0.0697],
        ],
    ),
    "kappa_moves_second": (
        [8, 1, 1],
        [[A1, A1, A1], [A1, A2, A1], [A2, A2, A1], [A2, A2, A2], None, None],
        [
            [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
            [[0.1924, 0.0], [0.0908, 0.2987], [0.1924, 0.0]],
            [[0.1715, 0.1013], [0.0815, 0.3697], [0.4336, 0.0]],
            [[0.1531, 0.1924], [0.0731, 0.4336], [0.3608, 0.1013]],
            [[0.1369, 0.2742], [0.0656, 0.4910], [0.3103, 0.1924]],
            [[0.1225, 0.3478], [0.0588, 0.5426], [0.2712, 0.2742]],
        ],
        [
            [0.8, 0.1, 0.1],
            [0.8446, 0.0498, 0.1056],
            [0.6868, 0.3132, 0.0],
            [0.7421, 0.2090, 0.0489],
            [0.7625, 0.1706, 0.0669],
            [0.7730, 0.1508, 0.0762],
        ],
    ),
    "kappa_moves_last": (
        [8, 1, 1],
        [[A1, A1, A1], [A1, A2, A1], [A1, A2, A2], [A2, A2, A2], None, None],
        [
            [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
            [[0.1924, 0.0], [0.0908, 0.2987], [0.1924, 0.0]],
            [[0.2742, 0.0], [0.0815, 0.5081], [0.1715, 0.2987]],
            [[0.2416, 0.1013], [0.0731, 0.5580], [0.1531, 0.3697]],
            [[0.2141, 0.1924], [0.0656, 0.6028], [0.1369, 0.4336]],
            [[0.1903, 0.2742], [0.0588, 0.6430], [0.1225, 0.4910]],
        ],
        [
            [0.8, 0.1, 0.1],
            [0.8446, 0.0498, 0.1056],
            [0.8966, 0.0333, 0.0701],
            [0.4663, 0.3210, 0.2127],
            [0.5976, 0.2340, 0.1683],
            [0.6592, 0.1932, 0.1475],
        ],
    ),
    "one_epoch_switch": (
        [33, 33, 34],
        [[A1, A1, A1], None, [A1, A1, A2], [A1, A1, A1], None, None],
        [
            [[0.1013, 0.0], [0.1013, 0.0], [0.1013, 0.0]],
            [[0.1924, 0.0], [0.1924, 0.0], [0.1924, 0.0]],
            [[0.2742, 0.0], [0.2742, 0.0], [0.1715, 0.2987]],
            [[0.3478, 0.0], [0.3478, 0.0], [0.2554, 0.2618]],
            [[0.4139, 0.0], [0.4139, 0.0], [0.3309, 0.2312]],
            [[0.4733, 0.0], [0.4733, 0.0], [0.3987, 0.2051]],
        ],
        [
            [0.33, 0.33, 0.34],
            [0.33, 0.33, 0.34],
            [0.3782, 0.3782, 0.2436],
            [0.3628, 0.3628, 0.2745],
            [0.3541, 0.3541, 0.2917],
            [0.3487, 0.3487, 0.3026],
        ],
    ),
    "liquid_alpha_disabled": (
        [33, 33, 34],
        [[A1, A1, A1], None, [A1, A1, A2], [A1, A1, A1], None, None],
        [
            [[0.0250, 0.0], [0.0250, 0.0], [0.0250, 0.0]],
            [[0.0494, 0.0], [0.0494, 0.0], [0.0494, 0.0]],
            [[0.0731, 0.0], [0.0731, 0.0], [0.0481, 0.0250]],
            [[0.0963, 0.0], [0.0963, 0.0], [0.0719, 0.0244]],
            [[0.1189, 0.0], [0.1189, 0.0], [0.0951, 0.0238]],
            [[0.1409, 0.0], [0.1409, 0.0], [0.1178, 0.0232]],
        ],
        [
            [0.33, 0.33, 0.34],
            [0.33, 0.33, 0.34],
            [0.3734, 0.3734, 0.2532],
            [0.3611, 0.3611, 0.2779],
            [0.3541, 0.3541, 0.2919],
            [0.3495, 0.3495, 0.3009],
        ],
    ),
    "stable_miner": (
        [8, 1, 1],
        [
            [[0.5, 0.0, 0.5]] * 3,
            [[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]],
            [[0.0, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]],
            [[0.0, 0.5, 0.5]] * 3,
            None,
            None,
        ],
        [
            [[0.0507, 0.0, 0.0507]] * 3,
            [[0.0962, 0.0, 0.0962], [0.0455, 0.1000, 0.0962], [0.0962, 0.0, 0.0962]],
            [[0.0863, 0.0507, 0.1371], [0.0408, 0.1405, 0.1371], [0.1770, 0.0, 0.1371]],
            [[0.0774, 0.0962, 0.1739], [0.0367, 0.1770, 0.1739], [0.1579, 0.0507, 0.1739]],
            [[0.0694, 0.1371, 0.2069], [0.0329, 0.2097, 0.2069], [0.1411, 0.0962, 0.2069]],
            [[0.0623, 0.1739, 0.2366], [0.0296, 0.2391, 0.2366], [0.1263, 0.1371, 0.2366]],
        ],
        [
            [0.8, 0.1, 0.1],
            [0.8226, 0.0745, 0.1028],
            [0.7750, 0.1685, 0.0565],
            [0.7864, 0.1372, 0.0764],
            [0.7912, 0.1241, 0.0847],
            [0.7937, 0.1173, 0.0890],
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_matches_subtensor_yuma3_scenarios(name):
    """Over six epochs, bonds and dividends match subtensor's own Yuma 3 test targets (4 decimals, fixed point)."""
    stakes, schedule, target_bonds, target_dividends = SCENARIOS[name]
    B, W = None, None
    for epoch, weights in enumerate(schedule):
        W = W if weights is None else np.array(weights)
        r = yuma_epoch(
            W,
            np.array(stakes, dtype=float),
            B,
            kappa=32767 / 65535,
            bond_alpha=0.025,
            bond_penalty=0.0,
            yuma_version=3,
            liquid_alpha=name != "liquid_alpha_disabled",
            alpha_low=0.1,
            alpha_high=0.3,
            alpha_sigmoid_steepness=1000.0,
        )
        B = r.bonds
        np.testing.assert_allclose(r.bonds, target_bonds[epoch], atol=2e-4, err_msg=f"epoch {epoch}")
        np.testing.assert_allclose(r.dividends, target_dividends[epoch], atol=2e-4, err_msg=f"epoch {epoch}")


def test_yuma3_bonds_are_absolute_not_stake_scaled():
    """Two validators with stakes 100:1 and identical weights hold identical bonds in [0, 1], converging to W_b."""
    W, S = np.array([[1.0, 3.0], [1.0, 3.0]]), np.array([100.0, 1.0])
    r = yuma_epoch(W, S, yuma_version=3, bond_alpha=0.1)
    np.testing.assert_allclose(r.bonds, [[0.025, 0.075], [0.025, 0.075]])  # alpha * normalized weights
    np.testing.assert_allclose(r.dividends, [100 / 101, 1 / 101])  # equal bonds: dividends follow stake
    for _ in range(300):
        r = yuma_epoch(W, S, r.bonds, yuma_version=3, bond_alpha=0.1)
    np.testing.assert_allclose(r.bonds, [[0.25, 0.75], [0.25, 0.75]])
    assert r.bonds.max() <= 1.0


def test_liquid_alpha_fast_far_from_consensus_slow_at_it():
    """alpha (weight of the new bond weights) is near alpha_high for a weight far above consensus or a bond far above
    its weight, near alpha_low for a weight at consensus."""
    W = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # validator 2 alone on miner 1: consensus [1, 0]
    S = np.array([0.45, 0.45, 0.1])
    B = np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # validator 0 holds a full bond on a miner it dropped
    r = yuma_epoch(W, S, B, yuma_version=3, liquid_alpha=True, bond_penalty=0.0, alpha_low=0.7, alpha_high=0.9)
    np.testing.assert_allclose(r.consensus, [1.0, 0.0])
    fast, slow = 0.7 + 0.2 / (1 + math.exp(-5)), 0.7 + 0.2 / (1 + math.exp(5))  # steepness 1000: sigmoid(+-5)
    assert r.bonds[2, 1] == pytest.approx(fast) and fast > 0.898  # buys at alpha ~ alpha_high
    assert r.bonds[0, 0] == pytest.approx(slow) and slow < 0.702  # at consensus: alpha ~ alpha_low
    assert r.bonds[0, 1] == pytest.approx(1 - fast)  # sells at alpha ~ alpha_high


def test_liquid_alpha_ignored_for_version_1_and_without_consensus():
    """Version 1 ignores liquid_alpha, as subtensor's original Yuma does; with no consensus Yuma 3 uses bond_alpha."""
    rng = np.random.default_rng(3)
    W, S, B = rng.random((4, 5)), rng.random(4), rng.random((4, 5))
    a, b = yuma_epoch(W, S, B, liquid_alpha=True), yuma_epoch(W, S, B)
    np.testing.assert_array_equal(a.bonds, b.bonds)
    W = np.eye(2)
    a = yuma_epoch(W, np.ones(2), B[:2, :2], kappa=1.0, yuma_version=3, liquid_alpha=True, bond_penalty=0.0)
    b = yuma_epoch(W, np.ones(2), B[:2, :2], kappa=1.0, yuma_version=3, bond_penalty=0.0)
    assert not a.consensus.any()
    np.testing.assert_array_equal(a.bonds, b.bonds)


def early_and_late_dividends(**kw) -> tuple[float, float]:
    """Total dividends per stake of an early and a late validator over 30 epochs while a new miner earns consensus.

    A big validator (stake 8) moves its weight from miner 0 to a new miner 1 over ten epochs. The early validator
    (stake 1) weights miner 1 from the start; the late one (stake 1) stays on miner 0 until consensus has moved.
    """
    S, B, total = np.array([8.0, 1.0, 1.0]), None, np.zeros(3)
    for t in range(30):
        big = min(1.0, t / 10)
        late = 1.0 if big == 1.0 else 0.0
        W = np.array([[1 - big, big], [0.0, 1.0], [1 - late, late]])
        r = yuma_epoch(W, S, B, **kw)
        B, total = r.bonds, total + r.dividends
    return total[1] / S[1], total[2] / S[2]


@pytest.mark.parametrize(
    "kw",
    [
        {"yuma_version": 3},
        {"yuma_version": 3, "bond_penalty": 0.0},
        {"yuma_version": 3, "liquid_alpha": True, "alpha_low": 0.1, "alpha_high": 0.3},
        {"yuma_version": 3, "liquid_alpha": True, "alpha_low": 0.1, "alpha_high": 0.3, "bond_penalty": 0.0},
        {"yuma_version": 1},
        {"yuma_version": 1, "bond_penalty": 0.0},
    ],
)
def test_early_validator_out_earns_late_one(kw):
    """A validator that backs a rising miner early earns more dividends per stake than one that follows late.

    Liquid alpha uses subtensor's test alphas (0.1, 0.3); at the defaults (0.7, 0.9) bonds follow the current weights
    within an epoch or two, keep almost no memory, and the early validator's missed bonds on the old miner cost more
    than its head start earns, so the ordering is not asserted there.
    """
    early, late = early_and_late_dividends(**kw)
    assert early > late * 1.1


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"yuma_version": 2}, "yuma_version must be 1 or 3"),
        ({"alpha_low": 0.95}, "alpha_low"),
        ({"alpha_low": -0.1}, "alpha_low must be in"),
        ({"alpha_high": 1.5}, "alpha_high must be in"),
        ({"alpha_high": float("nan")}, "alpha_high must be in"),
        ({"alpha_sigmoid_steepness": -1.0}, "alpha_sigmoid_steepness"),
        ({"alpha_sigmoid_steepness": float("inf")}, "alpha_sigmoid_steepness"),
        ({"bond_alpha": 1.1}, "bond_alpha"),
        ({"yuma_version": 3, "bonds": np.full((2, 3), 1.5)}, r"bonds must be in \[0, 1\] for yuma_version=3"),
    ],
)
def test_bad_yuma3_parameters_raise_one_line_value_error(kw, msg):
    """Unknown versions, alpha bounds out of [0, 1] or crossed, bad steepness and Yuma 3 bonds above 1 raise."""
    bonds = kw.pop("bonds", None)
    with pytest.raises(ValueError, match=msg) as e:
        yuma_epoch(np.ones((2, 3)), np.ones(2), bonds, **kw)
    assert "\n" not in str(e.value)
