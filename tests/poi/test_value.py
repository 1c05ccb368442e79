"""Tests for moe/poi/value.py: coalition values against a per-position plain-Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from moe.poi.value import MixtureGame, ValueConfig, coalition_values, expert_bpb, gather_logp, mixture_bpb


def _logp(E: int, W: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2 * torch.randn(E, W, T, 256, generator=g, dtype=torch.float64), -1)[..., 0]


def _reference_value(lp: torch.Tensor, members: list[int], mixture: str, present=None) -> float:
    """Plain-Python v(S): predict byte by byte, updating Bayesian weights after each one."""
    E, W, T = lp.shape
    saved = 0.0
    for w in range(W):
        alive = [e for e in members if present is None or present[e][w]]
        if not alive:
            continue
        weights = {e: 1.0 / len(alive) for e in alive}
        for t in range(T):
            p = sum(weights[e] * math.exp(float(lp[e, w, t])) for e in alive)
            saved += math.log(p) + math.log(256)
            if mixture == "bayes":
                post = {e: weights[e] * math.exp(float(lp[e, w, t])) for e in alive}
                z = sum(post.values())
                weights = {e: post[e] / z for e in alive}
    return saved / (W * T * math.log(2))


@pytest.mark.parametrize("mixture", ["bayes", "equal"])
def test_all_values_match_sequential_reference(mixture):
    """Every coalition's vectorized value equals the byte-by-byte reference mixture."""
    lp = _logp(4, 3, 6)
    values = coalition_values(lp, config=ValueConfig(mixture=mixture))
    for m in range(16):
        members = [i for i in range(4) if m >> i & 1]
        assert values[m].item() == pytest.approx(_reference_value(lp, members, mixture), abs=1e-9)


@pytest.mark.parametrize("mixture", ["bayes", "equal"])
def test_value_prefix_and_all_agree(mixture):
    """value(S), all_values()[S] and prefix_values agree for every prefix of a permutation."""
    lp = _logp(5, 2, 8, seed=1)
    cfg = ValueConfig(mixture=mixture)
    g1, g2 = MixtureGame(lp, config=cfg), MixtureGame(lp, config=cfg)
    allv = g2.all_values()
    perm = [3, 0, 4, 1, 2]
    pv = g1.prefix_values(torch.tensor([perm]))
    m = 0
    assert pv[0, 0].item() == 0.0
    for k, i in enumerate(perm):
        m |= 1 << i
        assert pv[0, k + 1].item() == pytest.approx(allv[m].item(), abs=1e-10)
        assert g1.value(frozenset(perm[: k + 1])) == pytest.approx(allv[m].item(), abs=1e-10)


def test_empty_coalition_is_zero_and_uniform_expert_is_zero():
    """v(∅) = 0 and an expert predicting uniform bytes saves exactly 0 bits."""
    lp = torch.full((2, 1, 10), -math.log(256), dtype=torch.float64)
    lp[1] = _logp(1, 1, 10)[0]
    g = MixtureGame(lp)
    assert g.value(0) == 0.0
    assert g.value({0}) == pytest.approx(0.0, abs=1e-12)
    assert mixture_bpb(lp, {0}) == pytest.approx(8.0)


def test_bayes_mixture_tracks_best_expert():
    """Over a long window the Bayesian mixture costs at most log2(E)/N bits more than its best member."""
    lp = _logp(3, 1, 400, seed=2)
    best = float(expert_bpb(lp).min())
    bpb = mixture_bpb(lp)
    assert bpb <= best + math.log2(3) / 400 + 1e-12


@pytest.mark.parametrize("mixture", ["bayes", "equal"])
def test_missing_expert_is_absent_in_its_windows(mixture):
    """An expert missing from a window counts as absent there, matching the reference with that mask."""
    lp = _logp(3, 4, 5, seed=3)
    present = torch.ones(3, 4, dtype=torch.bool)
    present[1, 0] = present[1, 2] = False
    present[:, 3] = False  # nobody answered window 3: coded with the reference
    lp_holes = lp.clone()
    lp_holes[1, 0] = float("nan")  # whatever a missing reply holds is ignored
    game = MixtureGame(lp_holes, present=present, config=ValueConfig(mixture=mixture))
    values = game.all_values()
    prefix = MixtureGame(lp_holes, present=present, config=ValueConfig(mixture=mixture)).prefix_values(
        torch.tensor([[1, 2, 0]])
    )
    for m in range(8):
        members = [i for i in range(3) if m >> i & 1]
        assert values[m].item() == pytest.approx(_reference_value(lp, members, mixture, present.tolist()), abs=1e-9)
    assert prefix[0].tolist() == pytest.approx([0.0, values[2].item(), values[6].item(), values[7].item()], abs=1e-9)
    only_missing = torch.zeros(3, 4, dtype=torch.bool)
    only_missing[0] = True
    assert coalition_values(lp, present=only_missing)[2].item() == 0.0


def test_long_windows_use_log_space_and_match_reference():
    """Windows whose experts' likelihoods differ by more than 600 nats still match the reference, all paths agree."""
    lp = _logp(3, 1, 300, seed=6)
    lp[2] = lp[2] - 3.0  # a much worse expert: its window likelihood is ~900 nats below the others
    game = MixtureGame(lp)
    assert float((game._num.max(0).values - game._num.min(0).values).max()) > 600
    values = game.all_values()
    prefix = MixtureGame(lp).prefix_values(torch.tensor([[2, 0, 1]]))
    for m in range(8):
        members = [i for i in range(3) if m >> i & 1]
        assert values[m].item() == pytest.approx(_reference_value(lp, members, "bayes"), abs=1e-9)
    assert prefix[0].tolist() == pytest.approx([0.0, values[4].item(), values[5].item(), values[7].item()], abs=1e-9)


def test_extreme_logp_stays_finite():
    """Zero-probability bytes (−inf) are floored, so every value is finite."""
    lp = _logp(3, 2, 4, seed=4)
    lp[0, 0, 0] = float("-inf")
    lp[1] = -1e30
    values = coalition_values(lp)
    assert torch.isfinite(values).all()


@pytest.mark.parametrize(
    "bad, match",
    [(float("nan"), "NaN"), (0.5, "probability > 1")],
)
def test_malformed_logp_rejected(bad, match):
    """NaN or positive log-probs raise a one-line ValueError naming the expert."""
    lp = _logp(2, 1, 4)
    lp[1, 0, 2] = bad
    with pytest.raises(ValueError, match=match) as e:
        MixtureGame(lp)
    assert "expert 1" in str(e.value) and "\n" not in str(e.value)


def test_bad_shapes_and_prior_rejected():
    """Wrong shapes, a mismatched presence mask or a negative prior give a clear ValueError."""
    with pytest.raises(ValueError, match="logp must be"):
        MixtureGame(torch.zeros(3))
    with pytest.raises(ValueError, match="present must be"):
        MixtureGame(_logp(2, 2, 3), present=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="prior"):
        MixtureGame(_logp(2, 2, 3), prior=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="mixture"):
        MixtureGame(_logp(2, 2, 3), config=ValueConfig(mixture="max"))
    with pytest.raises(ValueError, match="reference_logp"):
        MixtureGame(_logp(2, 2, 3), reference_logp=torch.zeros(5))
    with pytest.raises(ValueError, match="reference_logp"):
        MixtureGame(_logp(2, 2, 3), reference_logp=torch.full((2, 3), float("nan")))


def test_reference_model_baseline():
    """Against a reference model's own log-probs, that model as an expert is worth exactly 0 bits."""
    lp = _logp(2, 2, 5, seed=8)
    game = MixtureGame(lp, reference_logp=lp[1])
    assert game.value({1}) == pytest.approx(0.0, abs=1e-12)
    assert game.value({0}) == pytest.approx(MixtureGame(lp).value({0}) - MixtureGame(lp).value({1}), abs=1e-12)


def test_prior_weights_mixture():
    """With an equal mixture, prior (3, 1) weights the experts' probabilities 3:1 at every position."""
    lp = _logp(2, 1, 5, seed=5)
    g = MixtureGame(lp, prior=torch.tensor([3.0, 1.0]), config=ValueConfig(mixture="equal"))
    p = 0.75 * lp[0].exp() + 0.25 * lp[1].exp()  # (1, 5)
    expected = float((p.log() + math.log(256)).sum() / (5 * math.log(2)))
    assert g.value(3) == pytest.approx(expected, abs=1e-12)


def test_gather_logp_renormalizes_and_marks_malformed():
    """Unnormalized logits are log-softmaxed before gathering; a window with NaN or +inf becomes NaN (malformed)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 256, generator=g)
    targets = torch.randint(0, 256, (2, 3), generator=g)
    logits[1] += 50.0  # a shift must not change probabilities
    logits[1, 0, 0, 3] = float("-inf")  # a zero probability is allowed
    logits[0, 1, 0, 7] = float("nan")
    lp = gather_logp(logits, targets)
    ref = torch.log_softmax(logits[1].double(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp[1], ref)
    assert torch.isnan(lp).any(-1).tolist() == [[False, True], [False, False]]
    assert (lp[~torch.isnan(lp)] <= 0).all()
    logits[1, 1, 2, 0] = float("inf")
    assert torch.isnan(gather_logp(logits, targets)[1, 1]).all()
    with pytest.raises(ValueError, match="targets"):
        gather_logp(logits, torch.full((2, 3), 300))
