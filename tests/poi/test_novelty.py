"""Tests for moe/poi/novelty.py and its use in moe/poi/epoch.py: a near-copy (a victim's outputs mixed with 3% uniform
bytes) passes the copy detector, and plain Shapley would pay it half its victim's credit; novelty scoring pays it
nothing, leaves its victim and every other honest expert whole, and still pays a later expert that adds value."""

from __future__ import annotations

import math

import pytest
import torch

from moe.metrics import target_log_probs
from moe.poi.cheats import CheatConfig, js_divergence
from moe.poi.epoch import score_experts
from moe.poi.novelty import novelty_credit, registration_novelty
from moe.poi.shapley import ShapleyConfig, shapley
from moe.poi.value import MixtureGame, expert_bpb

UNIFORM_MIX = 0.03
"""Share of uniform bytes the near-copy mixes into its victim's distribution."""
PLAIN_SHAPLEY = CheatConfig(min_novelty=0.0)


def _specialists(n: int = 3, W: int = 12, T: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n honest experts of different domains, expert k sharp on its own W/n windows and a little better than uniform
    elsewhere (a shared base, as experts grown from one seed have): (n, W, T, 256) log-probs and (W, T) bytes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 256, (W, T), generator=g)
    experts = []
    for k in range(n):
        logits = torch.randn(W, T, 256, generator=g)
        own = torch.zeros(W, dtype=torch.bool)
        own[k * W // n : (k + 1) * W // n] = True
        boost = torch.where(own, 6.0 - k % 3, 1.0)[:, None].expand(W, T)  # (W, T)
        logits.scatter_add_(-1, y[..., None], boost[..., None])
        experts.append(torch.log_softmax(logits, -1))
    return torch.stack(experts), y


def _near_copy(victim: torch.Tensor) -> torch.Tensor:
    """log(0.97 p_victim + 0.03 / 256): the victim's distribution blurred just past the copy detector."""
    return torch.logaddexp(victim + math.log(1 - UNIFORM_MIX), torch.full_like(victim, math.log(UNIFORM_MIX / 256)))


def _sharper_on(victim: torch.Tensor, y: torch.Tensor, windows: slice, boost: float = 3.0) -> torch.Tensor:
    """The victim's distribution with `boost` more logit on the actual byte in `windows`: better there, the same
    elsewhere."""
    logits = victim.clone()
    extra = torch.zeros(y.shape)
    extra[windows] = boost
    logits.scatter_add_(-1, y[..., None], extra[..., None])
    return torch.log_softmax(logits, -1)


def _weights(dists: torch.Tensor, y: torch.Tensor, cheats: CheatConfig | None = None, registration=None):
    """Each expert's weight (index order) from score_experts; registration defaults to index order."""
    E = dists.shape[0]
    hotkeys = [f"{i:064x}" for i in range(E)]
    reg = registration or [(10.0 + i, i) for i in range(E)]
    present = torch.ones(E, y.shape[0], dtype=torch.bool)
    s = score_experts(hotkeys, reg, dists, y, present, cheats or CheatConfig())
    return [s.contribution[h] for h in hotkeys], s


def test_near_copy_passes_the_copy_detector_at_a_tiny_cost():
    """The near-copy is past the copy detector's Jensen–Shannon threshold (4× here, with these flat synthetic
    experts; ~50× with trained ones), yet costs < 0.05 bits per byte."""
    dists, y = _specialists()
    copy = _near_copy(dists[0])
    js = float(js_divergence(dists[0], copy).mean())
    assert js > 4 * CheatConfig().copy_max_js
    lp, _ = target_log_probs(torch.stack([dists[0], copy]), y)
    bpb = expert_bpb(lp)
    assert 0 < float(bpb[1] - bpb[0]) < 0.05
    _, s = _weights(torch.cat([dists, copy[None]]), y)
    assert "copy" not in s.flags.get(f"{3:064x}", [])  # the copy detector lets it through


def test_plain_shapley_pays_a_near_copy_much_of_its_victims_credit():
    """The attack: with novelty scoring off, the near-copy takes a large share, most of it from its victim."""
    dists, y = _specialists()
    alone, _ = _weights(dists, y, PLAIN_SHAPLEY)
    attacked, _ = _weights(torch.cat([dists, _near_copy(dists[0])[None]]), y, PLAIN_SHAPLEY)
    assert attacked[3] > 0.15
    assert attacked[0] < 0.7 * alone[0]


def test_near_copy_earns_under_1pct_and_its_victim_keeps_90pct():
    """With novelty scoring the near-copy earns < 1% of the weight and its victim ≥ 90% of its weight without it."""
    dists, y = _specialists()
    alone, _ = _weights(dists, y)
    attacked, s = _weights(torch.cat([dists, _near_copy(dists[0])[None]]), y)
    assert attacked[3] < 0.01
    assert attacked[0] >= 0.9 * alone[0]
    assert s.redundant == [f"{3:064x}"]
    assert s.flags == {f"{3:064x}": ["redundant"]}  # paid nothing, it is named as a near-copy


def test_other_domains_keep_their_weight_beside_a_near_copy():
    """Honest experts of other domains end within 3% of their weight without the near-copy."""
    dists, y = _specialists()
    alone, _ = _weights(dists, y)
    attacked, _ = _weights(torch.cat([dists, _near_copy(dists[0])[None]]), y)
    assert attacked[1:3] == pytest.approx(alone[1:3], rel=0.03)


def test_honest_specialists_score_as_plain_shapley():
    """Without duplicates nobody is redundant: novelty scoring gives the same weights as plain Shapley."""
    dists, y = _specialists()
    novelty, s = _weights(dists, y)
    plain, _ = _weights(dists, y, PLAIN_SHAPLEY)
    assert novelty == pytest.approx(plain, abs=1e-12)
    assert s.redundant == []


def test_better_later_expert_keeps_its_shapley_share():
    """A later expert sharper than the victim on half its windows adds value beyond tolerance: it is not redundant
    and keeps its plain Shapley weight, a fair share."""
    dists, y = _specialists()
    better = _sharper_on(dists[0], y, slice(0, 2))
    novelty, s = _weights(torch.cat([dists, better[None]]), y)
    plain, _ = _weights(torch.cat([dists, better[None]]), y, PLAIN_SHAPLEY)
    assert s.redundant == []
    assert novelty == pytest.approx(plain, abs=1e-12)
    assert novelty[3] > 0.1


def test_near_copy_with_a_small_improvement_earns_in_proportion():
    """Adding real value earns gradually: a near-copy made sharper on more of the windows earns more, never more
    than plain Shapley would pay it, and nothing for no improvement."""
    dists, y = _specialists()
    shares = []
    for boost in (0.0, 0.3, 0.6, 1.2):
        later = _near_copy(_sharper_on(dists[0], y, slice(0, 1), boost))
        novelty, _ = _weights(torch.cat([dists, later[None]]), y)
        plain, _ = _weights(torch.cat([dists, later[None]]), y, PLAIN_SHAPLEY)
        assert novelty[3] <= plain[3] + 1e-12
        shares.append(novelty[3])
    assert shares[0] < 0.01
    assert shares == sorted(shares) and shares[-1] > shares[0]


def test_near_copy_registered_first_keeps_the_credit():
    """Registration order decides, as for exact copies: a near-copy registered before the original takes the
    original's credit, and the original, adding little beyond it (only what the blur lost), is redundant."""
    dists, y = _specialists()
    alone, _ = _weights(dists, y)
    reg = [(30.0, 0), (11.0, 1), (12.0, 2), (5.0, 3)]
    w, s = _weights(torch.cat([dists, _near_copy(dists[0])[None]]), y, registration=reg)
    assert s.redundant == [f"{0:064x}"]
    assert w[0] < 0.05 and w[3] > 0.9 * alone[0]


def test_near_copy_among_many_experts_with_sampled_shapley():
    """Above the exact-Shapley size (9 specialists and a near-copy: sampled), the near-copy still earns < 1% and its
    victim ≥ 90% of its weight without it."""
    dists, y = _specialists(n=9, W=18)
    alone, _ = _weights(dists, y)
    attacked, _ = _weights(torch.cat([dists, _near_copy(dists[4])[None]]), y)
    assert attacked[9] < 0.01
    assert attacked[4] >= 0.9 * alone[4]


def _game_of(dists: torch.Tensor, y: torch.Tensor):
    lp, _ = target_log_probs(dists, y)
    return lambda players: MixtureGame(lp[list(players)])


def test_registration_novelty_is_each_experts_marginal_over_those_before_it():
    """n_i = v(earlier ∪ {i}) − v(earlier), checked against v of explicit coalitions; the n_i sum to v(all)."""
    dists, y = _specialists(n=4)
    game = _game_of(dists, y)(range(4))
    order = [2, 0, 3, 1]
    n = registration_novelty(game, order)
    assert float(n[2]) == pytest.approx(game.value({2}))
    assert float(n[3]) == pytest.approx(game.value({0, 2, 3}) - game.value({0, 2}))
    assert float(n.sum()) == pytest.approx(game.value(range(4)))


def test_zero_min_novelty_pays_plain_shapley():
    """min_novelty = 0 turns the rule off: credit is the Shapley value of the full game, even for a near-copy."""
    dists, y = _specialists()
    both = torch.cat([dists, _near_copy(dists[0])[None]])
    game_of = _game_of(both, y)
    nc = novelty_credit(game_of, [0, 1, 2, 3], min_novelty=0.0)
    assert nc.credit.tolist() == pytest.approx(shapley(game_of(range(4)), ShapleyConfig()).values.tolist())
    assert nc.redundant == []


def test_redundant_experts_are_scored_as_absent():
    """The others' credit beside a redundant expert equals their Shapley value in the game without it."""
    dists, y = _specialists()
    both = torch.cat([dists, _near_copy(dists[0])[None]])
    game_of = _game_of(both, y)
    nc = novelty_credit(game_of, [0, 1, 2, 3], min_novelty=0.05)
    assert nc.redundant == [3] and float(nc.credit[3]) == 0.0
    assert nc.credit[:3].tolist() == pytest.approx(shapley(game_of(range(3))).values.tolist(), abs=1e-12)
