"""Tests for moe/poi/market_credit.py: subnet miners are credited for what they add over the rest of the network."""

from __future__ import annotations

import pytest
import torch

from moe.poi.cheats import CheatConfig
from moe.poi.epoch import score_experts
from moe.poi.market_credit import subnet_credit
from moe.poi.shapley import shapley
from moe.poi.value import MixtureGame


def _expert(y: torch.Tensor, sharpness_by_window: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(W, T, 256) log-probs whose mass on the true byte grows with each window's sharpness."""
    W, T = y.shape
    logits = torch.randn(W, T, 256, generator=g)
    logits.scatter_add_(-1, y[..., None], sharpness_by_window[:, None, None].expand(W, T, 1))
    return torch.log_softmax(logits, -1)


def _forgetful_market(W: int = 16, T: int = 16):
    """Windows 0..W/2 are subnet A's domain, the rest subnet B's. A's `sharp` miner trained longer: best on A, lost on
    B. A's `broad` miner is a little worse on A and still fair on B. B's specialist is best on B."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 256, (W, T), generator=g)
    on_a = torch.arange(W) < W // 2
    sharp = _expert(y, torch.where(on_a, 7.0, -2.0), g)
    broad = _expert(y, torch.where(on_a, 6.0, 4.0), g)
    b_specialist = _expert(y, torch.where(on_a, 1.0, 7.0), g)
    dists = torch.stack([sharp, broad, b_specialist])  # (3, W, T, 256)
    groups = [0 if a else 1 for a in on_a.tolist()]
    return dists, y, groups, [1, 1, 2]


def _game(dists: torch.Tensor, y: torch.Tensor) -> MixtureGame:
    logp = dists.gather(-1, y[None, ..., None].expand(dists.shape[0], *y.shape, 1)).squeeze(-1)
    return MixtureGame(logp)


def test_the_longer_trained_miner_wins_its_subnet_though_the_network_game_prefers_the_broad_one():
    """Overall Shapley pays the broad miner more (it covers B in coalitions without B's specialist); the subnet game,
    played over the background of B's specialist, pays the miner that is better at A's own domain."""
    dists, y, _, markets = _forgetful_market()
    game = _game(dists, y)
    overall = shapley(game).values
    own = subnet_credit(game, markets)
    assert overall[1] > overall[0]
    assert own[0] > own[1] > 0


def test_subnet_credit_is_the_shapley_value_of_the_game_over_the_background():
    """Each subnet's credits sum to v(all) − v(background) (efficiency), and a lone miner gets its marginal value."""
    dists, y, _, markets = _forgetful_market()
    game = _game(dists, y)
    own = subnet_credit(game, markets)
    everyone = game.value(0b111)
    assert float(own[0] + own[1]) == pytest.approx(everyone - game.value(0b100), abs=1e-9)
    assert float(own[2]) == pytest.approx(everyone - game.value(0b011), abs=1e-9)


def test_subnet_credit_refuses_a_subnet_list_of_the_wrong_length():
    """One subnet per player, or a one-line error."""
    dists, y, _, _ = _forgetful_market()
    with pytest.raises(ValueError, match="3 players but 2 subnets"):
        subnet_credit(_game(dists, y), [1, 1])


def test_score_experts_reports_market_credit_and_per_domain_bpb():
    """With markets, the epoch verdict carries the subnet credit (sharp miner first) and each domain's bits per byte
    (sharp is lower on A, higher on B); a flagged copy of the sharp miner gets no market credit."""
    dists, y, groups, markets = _forgetful_market()
    copy = dists[0] + 0.0
    dists = torch.cat([dists, copy[None]])
    hotkeys = [f"{i:064x}" for i in range(4)]
    present = torch.ones(4, y.shape[0], dtype=torch.bool)
    s = score_experts(
        hotkeys,
        [(i, i) for i in range(4)],
        dists,
        y,
        present,
        CheatConfig(),
        groups=groups,
        markets=[*markets, 1],
    )
    sharp, broad, _, dup = hotkeys
    assert "copy" in s.flags[dup] and s.market_bits[dup] == 0.0
    assert s.market_bits[sharp] > s.market_bits[broad] > 0
    assert s.contribution[broad] > s.contribution[sharp]
    assert s.group_bpb[sharp][0] < s.group_bpb[broad][0] and s.group_bpb[sharp][1] > s.group_bpb[broad][1]
