"""Shapley values of experts in a coalition game: what each one adds to the mixture, averaged over join orders.

φ_i = Σ_{S ∌ i} |S|! (E − |S| − 1)! / E! · (v(S ∪ {i}) − v(S)). Up to `exact_max_players` players it is computed
exactly from all 2^E coalition values (vectorized over bitmasks). Above that it is estimated by sampling random join
orders (permutations), each paired with its reverse (antithetic: a player early in one is late in the other, which
cancels much of the variance); every estimate comes with its standard error and sampling stops at `target_stderr`
or at `max_permutations`. Each sampled permutation's marginals telescope to v(all) − v(∅), so efficiency holds
exactly for the estimate too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

logger = logging.getLogger(__name__)


class Game(Protocol):
    """A cooperative game on players 0..n_players−1; coalitions are bitmasks (bit i = player i)."""

    n_players: int

    def all_values(self) -> torch.Tensor: ...  # (2^E,) v by bitmask

    def prefix_values(self, perms: torch.Tensor) -> torch.Tensor: ...  # (P, E) → (P, E+1)


class FunctionGame:
    """A game from any function of a frozenset of players, memoized by bitmask (toy games, tests, custom values)."""

    def __init__(self, fn: Callable[[frozenset[int]], float], n_players: int):
        self.fn = fn
        self.n_players = n_players
        self._cache: dict[int, float] = {}

    def value(self, mask: int) -> float:
        if mask not in self._cache:
            self._cache[mask] = float(self.fn(frozenset(i for i in range(self.n_players) if mask >> i & 1)))
        return self._cache[mask]

    def all_values(self) -> torch.Tensor:
        return torch.tensor([self.value(m) for m in range(1 << self.n_players)], dtype=torch.float64)

    def prefix_values(self, perms: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(perms.shape[0], self.n_players + 1, dtype=torch.float64)
        for p, perm in enumerate(perms.tolist()):
            m = 0
            out[p, 0] = self.value(0)
            for k, i in enumerate(perm):
                m |= 1 << i
                out[p, k + 1] = self.value(m)
        return out


@dataclass
class ShapleyConfig:
    """When to enumerate and how long to sample."""

    exact_max_players: int = 8
    """Enumerate all 2^E coalitions up to this many players; sample permutations above it."""
    target_stderr: float = 1e-3
    """Stop sampling once every player's standard error is at most this (units of v: bits per byte)."""
    max_permutations: int = 2048
    """Sampling budget in permutations (antithetic pairs count as two); the estimate returns even if SE is higher."""
    min_permutations: int = 64
    """Never stop before this many, so the standard error itself is estimated from enough samples."""
    batch_permutations: int = 32
    """Permutations evaluated per vectorized call."""
    antithetic: bool = True
    """Pair each permutation with its reverse."""
    seed: int = 0
    """Seed of the permutation sampler, so a validator's result can be reproduced."""


@dataclass
class ShapleyEstimate:
    """Per-player Shapley values with their standard errors."""

    values: torch.Tensor
    """(E,) φ, in the units of v (bits per byte saved)."""
    stderr: torch.Tensor
    """(E,) standard error of each φ; zeros when exact."""
    n_permutations: int
    """Permutations sampled; 0 when exact."""
    exact: bool
    """True when computed by enumeration."""


def shapley_weights_by_size(n_players: int) -> torch.Tensor:
    """(E,) the weight s! (E − s − 1)! / E! of a marginal contribution to a coalition of size s."""
    E = n_players
    return torch.tensor(
        [math.exp(math.lgamma(s + 1) + math.lgamma(E - s) - math.lgamma(E + 1)) for s in range(E)], dtype=torch.float64
    )


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """(2^E,) coalition values by bitmask → (E,) exact Shapley values."""
    v = torch.as_tensor(values, dtype=torch.float64)
    C = v.numel()
    E = C.bit_length() - 1
    if C != 1 << E:
        raise ValueError(f"values must hold 2^E coalition values, got {C}")
    if E == 0:
        return torch.zeros(0, dtype=torch.float64)
    masks = torch.arange(C)
    size = torch.zeros(C, dtype=torch.long)
    for i in range(E):
        size += (masks >> i) & 1
    w = shapley_weights_by_size(E)
    players = torch.arange(E)
    without = masks[None, :] & ~(1 << players[:, None])  # (E, C) every coalition with i removed
    with_i = without | (1 << players[:, None])  # (E, C)
    has_i = ((masks[None, :] >> players[:, None]) & 1).bool()  # (E, C); keep each S ∌ i once
    marg = torch.where(
        has_i, torch.zeros((), dtype=torch.float64), w[size[without].clamp(max=E - 1)] * (v[with_i] - v[without])
    )
    return marg.sum(1)


def sampled_shapley(game: Game, config: ShapleyConfig | None = None) -> ShapleyEstimate:
    """Monte-Carlo Shapley by permutation sampling, with per-player standard errors; stopping per ShapleyConfig."""
    cfg = config or ShapleyConfig()
    E = game.n_players
    if E == 0:
        z = torch.zeros(0, dtype=torch.float64)
        return ShapleyEstimate(z, z.clone(), 0, exact=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    s1 = torch.zeros(E, dtype=torch.float64)
    s2 = torch.zeros(E, dtype=torch.float64)
    n_samples, n_perms = 0, 0
    se = torch.full((E,), float("inf"), dtype=torch.float64)
    per_sample = 2 if cfg.antithetic else 1
    while n_perms < cfg.max_permutations:
        P = max(1, min(cfg.batch_permutations, (cfg.max_permutations - n_perms) // per_sample))
        perms = torch.argsort(torch.rand(P, E, generator=gen), dim=1)  # (P, E) uniform random permutations
        if cfg.antithetic:
            perms = torch.cat([perms, perms.flip(1)])  # (2P, E)
        pv = game.prefix_values(perms)  # (P', E+1)
        marg = pv[:, 1:] - pv[:, :-1]  # (P', E) marginal of player perms[p, k]
        contrib = torch.zeros_like(marg).scatter_(1, perms, marg)  # (P', E) marginal of player i
        if cfg.antithetic:
            contrib = (contrib[:P] + contrib[P:]) / 2  # (P, E) one sample per antithetic pair
        s1 += contrib.sum(0)
        s2 += (contrib**2).sum(0)
        n_samples += contrib.shape[0]
        n_perms += perms.shape[0]
        if n_samples > 1:
            var = (s2 - s1**2 / n_samples).clamp(min=0) / (n_samples - 1)
            se = (var / n_samples).sqrt()
        if n_perms >= cfg.min_permutations and float(se.max()) <= cfg.target_stderr:
            break
    else:
        logger.info("Shapley sampling budget of %d permutations spent; max stderr %.2e", n_perms, float(se.max()))
    return ShapleyEstimate(s1 / n_samples, se, n_perms, exact=False)


def shapley(game: Game, config: ShapleyConfig | None = None) -> ShapleyEstimate:
    """Exact Shapley values for up to `exact_max_players` players, sampled ones (with standard errors) above."""
    cfg = config or ShapleyConfig()
    if game.n_players <= cfg.exact_max_players:
        phi = exact_shapley(game.all_values())
        return ShapleyEstimate(phi, torch.zeros_like(phi), 0, exact=True)
    return sampled_shapley(game, cfg)
