"""Tests for moe/poi/cheats.py: every kind of cheater is flagged and ends with zero weight."""

from __future__ import annotations

import math

import pytest
import torch

from moe.poi.cheats import (
    CheatConfig,
    detect_cheats,
    flag_copies,
    flag_timeouts,
    flag_uninformative,
    js_divergence,
    screen_replies,
)
from moe.poi.scoring import shapley_weights
from moe.poi.shapley import shapley
from moe.poi.value import MixtureGame, gather_logp

E_HONEST_A, E_HONEST_B, E_UNIFORM, E_RANDOM, E_COPY, E_TIMEOUT, E_MALFORMED = range(7)


def _scenario(W: int = 4, T: int = 32, seed: int = 0):
    """Seven experts' logits on W windows: two honest, then uniform, random, copier of 0, silent, NaN-sending."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 256, (W, T), generator=g)
    onehot = torch.nn.functional.one_hot(targets, 256).double()  # (W, T, 256)

    def skilled(bonus: float) -> torch.Tensor:
        return 1.5 * torch.randn(W, T, 256, generator=g, dtype=torch.float64) + bonus * onehot

    logits = torch.stack(
        [
            skilled(4.0),
            skilled(3.0),
            torch.zeros(W, T, 256, dtype=torch.float64),
            3 * torch.randn(W, T, 256, generator=g, dtype=torch.float64),
            torch.zeros(W, T, 256, dtype=torch.float64),  # filled below: a copy of expert 0
            skilled(4.0),
            skilled(4.0),
        ]
    )
    logits[E_COPY] = logits[E_HONEST_A]
    logits[E_TIMEOUT] = float("nan")  # never answered
    logits[E_MALFORMED, 1, 3, 5] = float("nan")
    lp = gather_logp(logits, targets)
    present = torch.ones(7, W, dtype=torch.bool)
    present[E_TIMEOUT] = False
    return logits, lp, present


def test_uninformative_flagged_and_shapley_near_zero():
    """Uniform and random experts reach ≥ 7.9 bits per byte, are flagged, and earn ~0 Shapley anyway."""
    _, lp, present = _scenario()
    lp, present, _ = screen_replies(lp, present)
    flags = flag_uninformative(lp, present)
    assert flags.tolist() == [False, False, True, True, False, False, False]
    for cheat in (E_UNIFORM, E_RANDOM):  # among honest experts
        phi = shapley(MixtureGame(lp[[E_HONEST_A, E_HONEST_B, cheat]])).values
        assert phi[2].item() < 0.05 * phi[0].item()  # ~0 for uniform, negative (clipped to 0) for random


def test_copier_flagged_by_logp_and_by_js():
    """An exact copy is flagged, the earlier-registered original credited; the same with full distributions."""
    logits, lp, present = _scenario()
    blocks = [10, 11, 12, 13, 20, 14, 15]
    flags, pairs = flag_copies(lp[:5], blocks[:5], present[:5])
    assert flags.tolist() == [False, False, False, False, True]
    assert (E_COPY, E_HONEST_A) in pairs
    dists = torch.log_softmax(logits[:5], -1)
    flags_js, pairs_js = flag_copies(lp[:5], blocks[:5], present[:5], dists=dists)
    assert (E_COPY, E_HONEST_A) in pairs_js and not flags_js[E_HONEST_A]


def test_copy_credit_follows_registration_not_index():
    """If the copy registered first it keeps credit and the later original is flagged (order is by block)."""
    _, lp, present = _scenario()
    flags, pairs = flag_copies(lp[[0, 4]], [30, 5], present[[0, 4]])
    assert flags.tolist() == [True, False] and pairs == [(0, 1)]


def test_noisy_near_copy_flagged_but_distinct_expert_not():
    """Outputs within the JS threshold count as a copy; an independently trained expert does not."""
    logits, lp, present = _scenario()
    g = torch.Generator().manual_seed(9)
    near = logits[E_HONEST_A] + 1e-4 * torch.randn(logits.shape[1:], generator=g, dtype=torch.float64)
    dists = torch.log_softmax(torch.stack([logits[E_HONEST_A], near, logits[E_HONEST_B]]), -1)
    trio = torch.stack([lp[E_HONEST_A], lp[E_HONEST_A] + 1e-5, lp[E_HONEST_B]])
    flags, _ = flag_copies(trio, [1, 2, 3], dists=dists)
    assert flags.tolist() == [False, True, False]


def test_timeouts_are_absent_and_flagged():
    """A silent expert is flagged; its missing windows make it a dummy player with zero Shapley value."""
    _, lp, present = _scenario()
    assert flag_timeouts(present).tolist() == [False] * 5 + [True, False]
    phi = shapley(MixtureGame(lp[[0, 1, 5]], present=present[[0, 1, 5]])).values
    assert phi[2].item() == 0.0 and phi[0].item() > 0


def test_partial_timeouts_not_flagged_below_threshold():
    """Missing one window of four is tolerated (not flagged) but still counts as absent there."""
    present = torch.ones(2, 4, dtype=torch.bool)
    present[1, 0] = False
    assert flag_timeouts(present, 0.5).tolist() == [False, False]


def test_screen_replies_drops_malformed_windows():
    """NaN or p > 1 windows become missing and their expert is flagged; clean windows are kept."""
    _, lp, present = _scenario()
    with pytest.raises(ValueError, match="NaN"):
        MixtureGame(lp, present=present)
    raw = lp.clone()
    raw[E_HONEST_B, 2, 0] = 0.7  # claims p > 1
    clean, pr, flagged = screen_replies(raw, present)
    assert flagged.tolist() == [False, True, False, False, False, False, True]
    assert not pr[E_HONEST_B, 2] and pr[E_HONEST_B, 1] and not pr[E_MALFORMED, 1]
    MixtureGame(clean, present=pr)  # the value function accepts the screened replies


def test_js_divergence_properties():
    """JS is 0 for identical distributions, symmetric, and 1 bit for disjoint ones."""
    a = torch.log_softmax(torch.randn(5, 256, dtype=torch.float64), -1)
    b = torch.log_softmax(torch.randn(5, 256, dtype=torch.float64), -1)
    assert js_divergence(a, a).abs().max() < 1e-12
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a))
    p = torch.full((256,), float("-inf"), dtype=torch.float64)
    q = p.clone()
    p[0], q[1] = 0.0, 0.0
    assert js_divergence(p, q).item() == pytest.approx(1.0)


def test_end_to_end_cheaters_get_zero_weight():
    """After screening, Shapley and scoring, every cheater's weight is 0 and the honest experts share it all."""
    logits, lp, present = _scenario()
    uids = [100, 101, 102, 103, 104, 105, 106]
    blocks = [10, 11, 12, 13, 20, 14, 15]
    report, lp2, pr2 = detect_cheats(uids, lp, blocks, present, dists=torch.log_softmax(logits, -1))
    assert report.flagged == {102, 103, 104, 105, 106}
    est = shapley(MixtureGame(lp2, present=pr2), config=None)
    w = shapley_weights(uids, est.values, est.stderr, report.flagged)
    assert w[100] + w[101] == pytest.approx(1.0) and min(w[100], w[101]) > 0 and all(w[u] == 0.0 for u in uids[2:])
    assert detect_cheats(uids[:6], lp[:6], blocks[:6], present[:6], config=CheatConfig(max_bpb=99))[0].reasons[
        104
    ] == ["copy"]


def test_specialist_judged_on_its_best_domain_is_not_uninformative():
    """With window domains given, an expert great on one domain and hopeless elsewhere is kept; noise is not."""
    W, T = 8, 16
    groups = [0] * 4 + [1] * 4
    specialist = torch.cat([torch.full((4, T), -0.7), torch.full((4, T), -12.0)])  # 1 bit/byte vs ~17 bits/byte
    noise = torch.full((W, T), -8.0 * math.log(2) - 0.2)  # a little worse than uniform everywhere
    logp = torch.stack([specialist, noise])  # (E, W, T)
    assert flag_uninformative(logp, groups=groups).tolist() == [False, True]
    assert flag_uninformative(logp).tolist() == [True, True]  # pooled over domains the specialist looks useless
