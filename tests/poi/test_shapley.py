"""Tests for moe/poi/shapley.py: Shapley axioms and agreement with a plain-Python enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from moe.poi.shapley import FunctionGame, ShapleyConfig, exact_shapley, sampled_shapley, shapley
from moe.poi.value import MixtureGame, ValueConfig


def _reference_shapley(v, n: int) -> list[float]:
    """Plain-Python Shapley: average marginal contribution over all n! join orders."""
    phi = [0.0] * n
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        s: frozenset[int] = frozenset()
        for i in perm:
            phi[i] += v(s | {i}) - v(s)
            s = s | {i}
    return [p / len(perms) for p in phi]


def _random_game(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(1 << n, generator=g, dtype=torch.float64)
    table[0] = 0.0
    return lambda s: float(table[sum(1 << i for i in s)])


def _mixture(E: int, seed: int = 0) -> MixtureGame:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(E, 4, 16, 256, generator=g, dtype=torch.float64)
    logits[..., 0] += torch.linspace(0, 3, E, dtype=torch.float64)[:, None, None]  # experts of varied skill
    return MixtureGame(torch.log_softmax(logits, -1)[..., 0])


def test_exact_matches_reference_enumeration():
    """Exact Shapley of a random 5-player game equals the average over all 120 join orders."""
    v = _random_game(5, 0)
    phi = exact_shapley(FunctionGame(v, 5).all_values())
    assert phi.tolist() == pytest.approx(_reference_shapley(v, 5), abs=1e-12)


def test_mixture_game_matches_reference_enumeration():
    """On the mixture game, exact Shapley equals the permutation-average reference."""
    game = _mixture(4)
    phi = shapley(game).values
    assert phi.tolist() == pytest.approx(_reference_shapley(game.value, 4), abs=1e-10)


@pytest.mark.parametrize("mixture", ["bayes", "equal"])
def test_efficiency(mixture):
    """Shapley values sum to v(all) − v(∅), exactly and when sampled."""
    g = torch.Generator().manual_seed(1)
    lp = torch.log_softmax(torch.randn(10, 3, 8, 256, generator=g, dtype=torch.float64), -1)[..., 0]
    game = MixtureGame(lp, config=ValueConfig(mixture=mixture))
    total = game.value((1 << 10) - 1)
    est = sampled_shapley(game, ShapleyConfig(max_permutations=64))
    assert float(est.values.sum()) == pytest.approx(total, abs=1e-9)
    small = MixtureGame(lp[:6], config=ValueConfig(mixture=mixture))
    assert float(shapley(small).values.sum()) == pytest.approx(small.value(63), abs=1e-12)


def test_symmetry_and_dummy():
    """Identical experts get equal values; a player adding nothing to any coalition gets 0."""
    lp = torch.log_softmax(torch.randn(3, 2, 8, 256, dtype=torch.float64), -1)[..., 0]
    lp = torch.cat([lp, lp[1:2]])  # expert 3 duplicates expert 1
    phi = shapley(MixtureGame(lp)).values
    assert phi[1].item() == pytest.approx(phi[3].item(), abs=1e-12)
    v = _random_game(4, 2)
    dummy = FunctionGame(lambda s: v(s - {4}), 5)  # player 4 never changes the value
    phi = exact_shapley(dummy.all_values())
    assert phi[4].item() == pytest.approx(0.0, abs=1e-12)
    assert phi[:4].tolist() == pytest.approx(_reference_shapley(v, 4), abs=1e-12)


def test_additivity():
    """φ(v + w) = φ(v) + φ(w) on toy games (a glove game plus a random one)."""
    glove = lambda s: float(min(len(s & {0, 1}), len(s & {2, 3, 4})))
    rnd = _random_game(5, 3)
    both = lambda s: glove(s) + rnd(s)
    a, b, c = (exact_shapley(FunctionGame(f, 5).all_values()) for f in (glove, rnd, both))
    assert (a + b).tolist() == pytest.approx(c.tolist(), abs=1e-12)
    assert a.tolist() == pytest.approx(_reference_shapley(glove, 5), abs=1e-12)


@pytest.mark.parametrize("antithetic", [True, False])
def test_sampled_agrees_with_exact_within_3se(antithetic):
    """On a 6-player mixture game, sampled Shapley is within 3 standard errors (+ float slack) of exact."""
    game = _mixture(6, seed=4)
    exact = shapley(game).values
    cfg = ShapleyConfig(exact_max_players=0, max_permutations=400, target_stderr=0.0, antithetic=antithetic, seed=5)
    est = shapley(game, cfg)
    assert not est.exact and est.n_permutations == 400
    assert (est.stderr > 0).all()
    assert ((est.values - exact).abs() <= 3 * est.stderr + 1e-9).all()


def test_sampling_stops_at_target_stderr():
    """Sampling stops once every standard error reaches the target, before the budget."""
    game = _mixture(9, seed=6)
    est = sampled_shapley(game, ShapleyConfig(target_stderr=0.05, max_permutations=4096, min_permutations=64))
    assert est.n_permutations < 4096
    assert float(est.stderr.max()) <= 0.05


def test_seeded_sampling_is_reproducible():
    """The same seed gives the same estimate, so another validator can reproduce it."""
    game = _mixture(9, seed=7)
    cfg = ShapleyConfig(max_permutations=64)
    assert torch.equal(sampled_shapley(game, cfg).values, sampled_shapley(game, cfg).values)


def test_bad_value_table_rejected():
    """A value table whose length is not a power of two is rejected."""
    with pytest.raises(ValueError, match="2\\^E"):
        exact_shapley(torch.zeros(6))
    assert exact_shapley(torch.zeros(1)).numel() == 0
    assert math.isfinite(float(exact_shapley(torch.zeros(2))[0]))


def test_zero_and_one_expert():
    """No experts gives an empty result; a lone expert's Shapley value is its own value, exact or sampled."""
    assert shapley(MixtureGame(torch.zeros(0, 2, 3))).values.numel() == 0
    game = MixtureGame(torch.full((1, 2, 3), -1.0, dtype=torch.float64))
    alone = game.value(1)
    assert alone == pytest.approx((math.log(256) - 1.0) / math.log(2))
    assert shapley(game).values.tolist() == pytest.approx([alone])
    sampled = shapley(game, ShapleyConfig(exact_max_players=0, max_permutations=8))
    assert sampled.values.tolist() == pytest.approx([alone]) and sampled.stderr.tolist() == [0.0]
