"""Novelty: pay each expert for what it adds beyond the experts registered before it, so that near-copies earn nothing.

Why. Shapley splits the value of duplicates evenly. An expert that relays a victim's outputs, blurred just enough to
pass the copy detector (mixing in 3% uniform bytes puts it ~50× past `CheatConfig.copy_max_js` and costs it only
0.03 bits per byte), takes about half its victim's credit without training anything. A looser distance threshold
cannot fix this (the attacker blurs a little more), but value can: a copy adds nothing to a mixture that already
holds its victim, and the ledger says who was there first.

The rule. Order the scored experts by registration (earliest first; as with exact copies in
moe.poi.cheats.flag_copies, the earliest keeps the credit). Expert i's novelty is

    n_i = v(P_i ∪ {i}) − v(P_i),   P_i = the experts registered before i,

what it adds to the mixture of those already there (these marginals telescope to v(all)). An expert other than the
earliest is *redundant* when n_i < min_novelty · φ_i, i.e. less than that fraction of its Shapley value is its own.
A redundant expert

- is left out of the game the others are scored in, so its victim, and everyone else, earn exactly what they would
  earn without it (Shapley of the remaining experts);
- is paid max(n_i, 0) / min_novelty: nothing for a pure copy (whose novelty is ≤ 0: the prior mass it takes from the
  others costs more than its blur gains), rising continuously to its Shapley value at the threshold, so a little
  real improvement earns a little (at most 1 / min_novelty times what it adds) and there is no jump to aim for.

Every other expert keeps its Shapley value in the full game. The threshold is a fraction of φ rather than a number
of bits because honest experts share most of their value: specialists grown from one seed all beat uniform bytes by
several bits per byte everywhere, and Shapley splits that shared base fairly. What sets a specialist apart is its own
domain, roughly 8–20% of its Shapley value judging by the per-domain bits per byte of past runs; a near-copy's share
is ≤ 0. The default 5% lies between; 0 turns the rule off (plain Shapley).

Limits. Registration order is trusted: an expert registered before the one it copies keeps the credit, so a hotkey
that registers early and then near-copies a newcomer wins (the same holds for exact copies). A later expert that is
better than an earlier one by more than the tolerance is not redundant and shares by Shapley, as an honest competitor
does. Novelty is measured in the validator's own mixture, whose uniform prior rewards a duplicate of an expert that
dominates most windows a little (more prior mass on the best hypothesis); the 1 / min_novelty leverage applies to
that too. Cost: E + 1 coalition values, and one more Shapley game when some expert is redundant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from moe.poi.shapley import ShapleyConfig, shapley
from moe.poi.value import MixtureGame

logger = logging.getLogger(__name__)


@dataclass
class NoveltyCredit:
    """What each player of a mixture game is paid, in bits per byte saved, and why."""

    credit: torch.Tensor
    """(E,) Shapley value in the game without redundant players; max(n, 0) / min_novelty for redundant ones."""
    stderr: torch.Tensor
    """(E,) standard error of each credit (0 when exact; novelty is always exact)."""
    novelty: torch.Tensor
    """(E,) n_i, what each player adds to the players registered before it."""
    redundant: list[int]
    """Players whose novelty is below min_novelty of their Shapley value, in registration order."""
    mixture_bits: float
    """v of all players: bits per byte the full mixture saves over the reference."""


def registration_novelty(game: MixtureGame, order: Sequence[int]) -> torch.Tensor:
    """(E,) n_i = v(P_i ∪ {i}) − v(P_i), P_i the players before i in `order` (earliest first); sums to v(all)."""
    n = torch.zeros(game.n_players, dtype=torch.float64)
    mask = 0
    for i in order:
        before = game.value(mask)
        mask |= 1 << i
        n[i] = game.value(mask) - before
    return n


def find_redundant(phi: torch.Tensor, novelty: torch.Tensor, order: Sequence[int], min_novelty: float) -> list[int]:
    """Players after the earliest whose novelty is below `min_novelty` of their positive Shapley value."""
    if min_novelty <= 0:
        return []
    return [i for i in order[1:] if phi[i] > 0 and novelty[i] < min_novelty * phi[i]]


def novelty_credit(
    game_of: Callable[[Sequence[int]], MixtureGame],
    order: Sequence[int],
    min_novelty: float = 0.05,
    config: ShapleyConfig | None = None,
) -> NoveltyCredit:
    """Credit of players 0..E−1 (`order`: all of them, earliest-registered first) by the novelty rule above.

    `game_of(players)` builds the mixture game of those players (in that order); it is called for all of them and,
    when some are redundant, once more for the rest. `min_novelty` 0 gives plain Shapley values.
    """
    E = len(order)
    if sorted(order) != list(range(E)):
        raise ValueError(f"order must list each of the {E} players once, got {list(order)}")
    if not min_novelty >= 0:
        raise ValueError(f"min_novelty must be ≥ 0, got {min_novelty}")
    game = game_of(list(range(E)))
    est = shapley(game, config)
    novelty = registration_novelty(game, order)
    redundant = find_redundant(est.values, novelty, order, min_novelty)
    credit, stderr = est.values.clone(), est.stderr.clone()
    if redundant:
        kept = [i for i in range(E) if i not in redundant]
        rest = shapley(game_of(kept), config)
        credit[kept], stderr[kept] = rest.values, rest.stderr
        credit[redundant] = novelty[redundant].clamp(min=0.0) / min_novelty
        stderr[redundant] = 0.0
        logger.info(
            "redundant experts (index: novelty, Shapley bits/byte): %s",
            {i: (round(float(novelty[i]), 5), round(float(est.values[i]), 5)) for i in redundant},
        )
    return NoveltyCredit(credit, stderr, novelty, redundant, game.value((1 << E) - 1))
