"""Tests for moe/poi/epoch.py: an epoch's verdict from replies (cheat flags, Shapley shares, weights)."""

from __future__ import annotations

import pytest
import torch

from moe.poi.cheats import CheatConfig
from moe.poi.epoch import score_experts


def _replies(seed: int = 0, W: int = 12, T: int = 16):
    """Three honest experts of different quality (each good on its own third of the windows), a copy, and noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 256, (W, T), generator=g)
    honest = []
    for k in range(3):
        logits = torch.randn(W, T, 256, generator=g)
        good = torch.zeros(W, dtype=torch.bool)
        good[k * W // 3 : (k + 1) * W // 3] = True
        boost = torch.where(good, 6.0 - k, 1.0)[:, None].expand(W, T)  # expert k is sharpest on its own windows
        logits.scatter_add_(-1, y[..., None], boost[..., None])
        honest.append(torch.log_softmax(logits, -1))
    copy = torch.log_softmax(honest[0] + 1e-4 * torch.randn(W, T, 256, generator=g), -1)
    noise = torch.log_softmax(torch.randn(W, T, 256, generator=g), -1)
    dists = torch.stack([*honest, copy, noise])  # (5, W, T, 256)
    return dists, y


def test_noise_and_copy_get_zero_weight_and_honest_experts_share_the_rest():
    """Scoring flags the later-registered copy and the noise expert (weight 0) and shares weight among the honest."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    registration = [(10.0, 0), (11.0, 1), (12.0, 2), (20.0, 3), (21.0, 4)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    s = score_experts(hotkeys, registration, dists, y, present, CheatConfig())
    assert s.contribution[hotkeys[3]] == 0.0 and "copy" in s.flags[hotkeys[3]]
    assert s.contribution[hotkeys[4]] == 0.0 and "uninformative" in s.flags[hotkeys[4]]
    assert all(s.contribution[h] > 0 for h in hotkeys[:3])
    assert sum(s.contribution.values()) == pytest.approx(1.0)
    assert s.contribution[hotkeys[0]] > s.contribution[hotkeys[2]]  # the sharpest expert contributes most


def test_copy_registered_first_keeps_the_credit():
    """When the copy registered before the original, the original is the one flagged (registration order decides)."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    registration = [(30.0, 0), (11.0, 1), (12.0, 2), (5.0, 3), (21.0, 4)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    s = score_experts(hotkeys, registration, dists, y, present, CheatConfig())
    assert "copy" in s.flags[hotkeys[0]] and s.contribution[hotkeys[3]] > 0


def test_silent_expert_is_flagged_for_timeouts():
    """An expert that answered no window is flagged (timeout) and earns nothing; the others are scored normally."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    present[1] = False
    s = score_experts(hotkeys, [(i, i) for i in range(5)], dists, y, present, CheatConfig())
    assert "timeout" in s.flags[hotkeys[1]] and s.contribution[hotkeys[1]] == 0.0
    assert s.contribution[hotkeys[0]] > 0


def test_special_token_targets_are_not_scored():
    """Windows whose next token is EOS (id ≥ 256) score without error, and those positions change no contribution."""
    dists, y = _replies()
    hotkeys = [f"{i:064x}" for i in range(5)]
    present = torch.ones(5, y.shape[0], dtype=torch.bool)
    reg = [(i, i) for i in range(5)]
    y2 = y.clone()
    y2[:, 0] = 257
    dists2 = dists.clone()
    dists2[:, :, 0] = torch.log_softmax(torch.randn(5, y.shape[0], 256), -1)  # whatever experts say there is ignored
    dists2[3, :, 0] = dists2[0, :, 0]  # (the copy still copies)
    a = score_experts(hotkeys, reg, dists2, y2, present, CheatConfig())
    b = score_experts(hotkeys, reg, dists, y2, present, CheatConfig())
    assert a.contribution == pytest.approx(b.contribution)
