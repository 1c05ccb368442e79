"""Tests for moe/ledger/yuma.py against a plain-Python transcription of subtensor's epoch, and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from moe.ledger.yuma import weighted_median_col, yuma_epoch


def ref_weighted_median(stake, score, idx, minority, lo, hi):
    """subtensor's mid-pivot weighted median search, as a plain recursive loop."""
    if not idx:
        return 0.0
    if len(idx) == 1:
        return score[idx[0]]
    pivot = score[idx[len(idx) // 2]]
    lo_s = hi_s = 0.0
    lower, upper = [], []
    for i in idx:
        if score[i] == pivot:
            continue
        if score[i] < pivot:
            lo_s += stake[i]
            lower.append(i)
        else:
            hi_s += stake[i]
            upper.append(i)
    if lo + lo_s <= minority < hi - hi_s:
        return pivot
    if minority < lo + lo_s and lower:
        return ref_weighted_median(stake, score, lower, minority, lo, lo + lo_s)
    if hi - hi_s <= minority and upper:
        return ref_weighted_median(stake, score, upper, minority, hi - hi_s, hi)
    return pivot


def ref_normalize(x):
    t = sum(x)
    return [v / t for v in x] if t > 0 else [0.0] * len(x)


def ref_col_normalize(m, V, M):
    out = [[0.0] * M for _ in range(V)]
    for j in range(M):
        t = sum(m[i][j] for i in range(V))
        for i in range(V):
            out[i][j] = m[i][j] / t if t > 0 else 0.0
    return out


def ref_consensus(W, s, kappa):
    """Per miner, subtensor's weighted median of the staked validators' weights at `kappa`, one column at a time."""
    V, M = len(W), len(W[0])
    C = []
    for j in range(M):
        us = [s[i] for i in range(V) if s[i] > 0]
        sc = [W[i][j] for i in range(V) if s[i] > 0]
        if not us:
            C.append(0.0)
            continue
        us = ref_normalize(us)
        total = sum(us)
        C.append(ref_weighted_median(us, sc, list(range(len(us))), total - kappa, 0.0, total))
    return C


def reference_yuma(W, S, B, kappa, alpha, penalty):
    """One epoch with Python lists and loops, step by step as subtensor's run_epoch (original Yuma)."""
    V, M = len(W), len(W[0])
    s = ref_normalize(S)
    W = [ref_normalize(row) for row in W]
    C = ref_consensus(W, s, kappa)
    Wc = [[min(W[i][j], C[j]) for j in range(M)] for i in range(V)]
    ranks = [sum(s[i] * Wc[i][j] for i in range(V)) for j in range(M)]
    inc = ref_normalize(ranks)
    Wb = [[W[i][j] + penalty * (Wc[i][j] - W[i][j]) for j in range(M)] for i in range(V)]
    dB = ref_col_normalize([[Wb[i][j] * s[i] for j in range(M)] for i in range(V)], V, M)
    if B is None:
        ema = [[alpha * dB[i][j] for j in range(M)] for i in range(V)]
    else:
        Bn = ref_col_normalize(B, V, M)
        ema = [[alpha * dB[i][j] + (1 - alpha) * Bn[i][j] for j in range(M)] for i in range(V)]
    ema = ref_col_normalize(ema, V, M)
    div = ref_normalize([sum(ema[i][j] * inc[j] for j in range(M)) for i in range(V)])
    return C, inc, div, ema


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_on_random_cases(seed):
    """Vectorized yuma_epoch equals the plain-Python reference on random weights, stakes, bonds and parameters."""
    rng = np.random.default_rng(seed)
    V, M = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    W = rng.random((V, M)) * (rng.random((V, M)) > 0.3)
    if seed % 3 == 0:
        W = np.round(W * 4) / 4  # many ties in the median
    S = rng.random(V) * (rng.random(V) > 0.2)
    B = None if seed % 2 else rng.random((V, M)) * (rng.random((V, M)) > 0.4)
    kappa, alpha, penalty = float(rng.choice([0.5, rng.random()])), float(rng.random()), float(rng.random())
    got = yuma_epoch(W, S, B, kappa=kappa, bond_alpha=alpha, bond_penalty=penalty)
    C, inc, div, ema = reference_yuma(W.tolist(), S.tolist(), None if B is None else B.tolist(), kappa, alpha, penalty)
    np.testing.assert_allclose(got.consensus, C, atol=1e-12)
    np.testing.assert_allclose(got.incentive, inc, atol=1e-12)
    np.testing.assert_allclose(got.dividends, div, atol=1e-12)
    np.testing.assert_allclose(got.bonds, ema, atol=1e-12)


def test_honest_majority():
    """Validators that agree give the agreed weights as consensus and incentive, and dividends follow stake."""
    W = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    r = yuma_epoch(W, np.array([4.0, 3.5, 2.5]))
    np.testing.assert_allclose(r.consensus, [0.5, 0.5])
    np.testing.assert_allclose(r.incentive, [0.5, 0.5])
    np.testing.assert_allclose(r.dividends, [0.4, 0.35, 0.25])


def test_colluding_minority_gets_nothing():
    """A 30% validator voting only for its own miner: that miner and the colluder get nothing."""
    W = np.array([[1.0, 0.0], [0.0, 1.0]])  # honest 70% -> miner 0, colluder 30% -> miner 1
    r = yuma_epoch(W, np.array([0.7, 0.3]))
    np.testing.assert_allclose(r.consensus, [1.0, 0.0])
    np.testing.assert_allclose(r.incentive, [1.0, 0.0])
    np.testing.assert_allclose(r.dividends, [1.0, 0.0])
    assert r.validator_trust[1] == 0.0


def test_colluding_majority_at_and_above_kappa():
    """Colluders holding exactly kappa of stake keep their miner's weight; above kappa they zero the honest miner."""
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    at = yuma_epoch(W, np.array([0.5, 0.5]), kappa=0.5)
    np.testing.assert_allclose(at.consensus, [1.0, 1.0])
    np.testing.assert_allclose(at.incentive, [0.5, 0.5])
    above = yuma_epoch(W, np.array([0.4, 0.6]), kappa=0.5)
    np.testing.assert_allclose(above.consensus, [0.0, 1.0])
    np.testing.assert_allclose(above.incentive, [0.0, 1.0])
    np.testing.assert_allclose(above.dividends, [0.0, 1.0])


def test_unweighted_miner_and_zero_row_validator():
    """A miner nobody weights earns nothing; a validator with a zero row earns no dividends and breaks nothing."""
    W = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 0.0]])
    r = yuma_epoch(W, np.array([0.3, 0.7]))
    np.testing.assert_allclose(r.consensus, [0.75, 0.25, 0.0])
    np.testing.assert_allclose(r.incentive, [0.75, 0.25, 0.0])
    np.testing.assert_allclose(r.dividends, [0.0, 1.0])
    assert np.all(r.bonds[0] == 0.0)


def test_bonds_carry_over_epochs():
    """A validator that starts agreeing later earns dividends that grow by the bond EMA: 0.05, then 0.095, ..."""
    W1 = np.array([[1.0], [0.0]])
    r = yuma_epoch(W1, np.array([1.0, 1.0]))
    np.testing.assert_allclose(r.dividends, [1.0, 0.0])
    W2 = np.array([[1.0], [1.0]])
    late = []
    for _ in range(5):
        r = yuma_epoch(W2, np.array([1.0, 1.0]), r.bonds, bond_alpha=0.1)
        late.append(r.dividends[1])
    np.testing.assert_allclose(late, [0.5 - 0.5 * 0.9**k for k in range(1, 6)])
    np.testing.assert_allclose(r.bonds.sum(axis=0), [1.0])


def test_no_stake_gives_zero_consensus():
    """With no stake at all nothing has consensus and nothing is paid."""
    r = yuma_epoch(np.ones((2, 3)), np.zeros(2))
    assert np.all(r.consensus == 0) and np.all(r.incentive == 0) and np.all(r.dividends == 0)


@pytest.mark.parametrize(
    "W,S,B,kw,msg",
    [
        (np.ones(3), np.ones(3), None, {}, "2-D"),
        (np.ones((2, 3)), np.ones(3), None, {}, "stakes must have shape"),
        (-np.ones((2, 3)), np.ones(2), None, {}, "non-negative"),
        (np.full((2, 3), np.nan), np.ones(2), None, {}, "finite"),
        (np.ones((2, 3)), np.array([1.0, np.inf]), None, {}, "finite"),
        (np.ones((2, 3)), np.array([1.0, -1.0]), None, {}, "non-negative"),
        (np.ones((2, 3)), np.ones(2), np.ones((3, 2)), {}, "bonds must have shape"),
        (np.ones((2, 3)), np.ones(2), None, {"kappa": 1.5}, "kappa"),
    ],
)
def test_bad_input_is_a_clear_value_error(W, S, B, kw, msg):
    """Shape mismatches, negative or non-finite values and out-of-range parameters raise a one-line ValueError."""
    with pytest.raises(ValueError, match=msg) as e:
        yuma_epoch(W, S, B, **kw)
    assert "\n" not in str(e.value)


def argsort_median(s, W, kappa):
    """The previous weighted_median_col: a full argsort per column, kept as the reference for the faster one."""
    voting = s > 0
    if not voting.any():
        return np.zeros(W.shape[1])
    s = s[voting] / s[voting].sum()
    Wt = np.ascontiguousarray(W[voting].T)  # (M, V')
    idx = np.argsort(Wt, axis=1)
    Ws = np.take_along_axis(Wt, idx, axis=1)
    above = np.cumsum(s[idx], axis=1) > s.sum() - kappa
    rows = np.arange(Wt.shape[0])
    return np.where(above.any(axis=1), Ws[rows, above.argmax(axis=1)], Ws[rows, -1])


def previous_yuma_v1(W, S, B, kappa, alpha, penalty):
    """The previous vectorized yuma_epoch (original Yuma only), to show version 1 did not change."""
    s = S / S.sum() if S.sum() > 0 else np.zeros_like(S)
    t = W.sum(axis=1, keepdims=True)
    W = np.divide(W, t, out=np.zeros_like(W), where=t > 0)

    def coln(x):
        c = x.sum(axis=0, keepdims=True)
        return np.divide(x, c, out=np.zeros_like(x), where=c > 0)

    C = argsort_median(s, W, kappa)
    Wc = np.minimum(W, C[None, :])
    ranks = s @ Wc
    inc = ranks / ranks.sum() if ranks.sum() > 0 else np.zeros_like(ranks)
    dB = coln((W + penalty * (Wc - W)) * s[:, None])
    ema = coln(alpha * dB if B is None else alpha * dB + (1.0 - alpha) * coln(B))
    d = ema @ inc
    return C, inc, d / d.sum() if d.sum() > 0 else d, ema, Wc.sum(axis=1)


@pytest.mark.parametrize("kind", ["random", "sparse", "ties", "near-equal"])
def test_large_median_matches_argsort(kind):
    """At 64x2048 the packed-key median returns exactly the previous argsort median, also for -0.0 and weights that
    differ only in their last mantissa bits."""
    rng = np.random.default_rng(7)
    V, M = 64, 2048
    W = rng.random((V, M))
    if kind == "sparse":
        W *= rng.random((V, M)) > 0.6
        W[rng.random((V, M)) > 0.9] = -0.0
    elif kind == "ties":
        W = np.round(W * 5) / 5
    elif kind == "near-equal":
        W = rng.random(M) * (1 + rng.integers(0, 8, (V, M)) * 2.0**-51)
    S = rng.random(V) * (rng.random(V) > 0.1)
    for kappa in (0.5, 0.2, 0.0):
        np.testing.assert_array_equal(weighted_median_col(S, W, kappa), argsort_median(S, W, kappa))


def test_large_v1_matches_previous_implementation():
    """At 64x2048 version 1 gives the previous implementation's consensus exactly and every other output to 1e-12."""
    rng = np.random.default_rng(8)
    W = rng.random((64, 2048)) * (rng.random((64, 2048)) > 0.5)
    S, B = rng.random(64), rng.random((64, 2048))
    for penalty in (1.0, 0.3):
        got = yuma_epoch(W, S, B, kappa=0.5, bond_alpha=0.1, bond_penalty=penalty)
        C, inc, div, ema, trust = previous_yuma_v1(W, S, B, 0.5, 0.1, penalty)
        np.testing.assert_array_equal(got.consensus, C)
        np.testing.assert_allclose(got.incentive, inc, atol=1e-12)
        np.testing.assert_allclose(got.dividends, div, atol=1e-12)
        np.testing.assert_allclose(got.bonds, ema, atol=1e-12)
        np.testing.assert_allclose(got.validator_trust, trust, atol=1e-12)
