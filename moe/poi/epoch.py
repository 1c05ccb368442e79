"""One validator epoch's verdict: from every expert's replies on the epoch's windows to cheat flags, Shapley
contributions and the weights a validator submits.

Pure: the replies come in as tensors, so the same verdict can be recomputed by anyone holding them (and tested
without a network). Flagged experts are left out of the Shapley game, so a copy does not dilute the value of the
expert it copies; a near-copy that escapes the copy detector is paid by novelty (moe.poi.novelty): only for what it
adds beyond the experts registered before it, and scored as absent for everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moe.metrics import target_log_probs
from moe.poi.cheats import CheatConfig, detect_cheats
from moe.poi.market_credit import subnet_credit
from moe.poi.novelty import novelty_credit
from moe.poi.scoring import shapley_weights
from moe.poi.shapley import ShapleyConfig
from moe.poi.value import UNIFORM_LOGP, MixtureGame, expert_bpb

UNIFORM_BPB = 8.0
"""Bits per byte of the uniform distribution over 256 bytes: the score of a mixture nobody contributes to."""


@dataclass
class EpochScore:
    """One epoch's verdict on the experts, keyed by hotkey."""

    contribution: dict[str, float]
    """Share of the positive credit in `shapley_bits` (flagged experts 0); sums to 1 unless nobody contributed."""
    shapley_bits: dict[str, float]
    """Credit in bits per byte saved over uniform bytes: the Shapley value φ in the game of the unflagged experts
    that are not redundant; a redundant expert's novelty / min_novelty (flagged experts 0)."""
    flags: dict[str, list[str]]
    """Detector names per flagged expert."""
    bpb: dict[str, float | None]
    """Each expert's own bits per byte on the windows it answered (None if it answered none)."""
    mixture_bpb: float
    """Bits per byte of the mixture of the unflagged experts."""
    answered: dict[str, float] = field(default_factory=dict)
    """Fraction of windows each expert answered validly."""
    novelty_bits: dict[str, float] = field(default_factory=dict)
    """What each unflagged expert adds to the mixture of the experts registered before it (bits per byte)."""
    redundant: list[str] = field(default_factory=list)
    """Unflagged experts adding less than `min_novelty` of their Shapley value beyond earlier ones (near-copies)."""
    market_bits: dict[str, float] = field(default_factory=dict)
    """With `markets`: each expert's credit among its own subnet's miners over the background of the other subnets
    (moe.poi.market_credit), in bits per byte; a redundant expert keeps its novelty pay, a flagged one 0."""
    group_bpb: dict[str, dict[int, float]] = field(default_factory=dict)
    """With `groups`: each expert's bits per byte on the windows of each domain it answered."""


def score_experts(
    hotkeys: list[str],
    registration: list[tuple[float, int]],
    dists: torch.Tensor,
    y: torch.Tensor,
    present: torch.Tensor,
    cheats: CheatConfig,
    seed: int = 0,
    groups: list[int] | None = None,
    audit_flags: dict[int, str | list[str]] | None = None,
    markets: list[int] | None = None,
) -> EpochScore:
    """Cheats and Shapley contributions from replies: dists (E, W, T, 256) log-probs, y (W, T), present (E, W).

    `registration` orders experts for copy detection and novelty (the earliest of a group of copies or near-copies
    keeps the credit): one (registration block, uid) per expert. `groups` gives each window's domain, so a
    specialist is judged on its best domain rather than on all of them pooled. `audit_flags` (expert index →
    reason or reasons) are verdicts reached outside these replies, such as a failed causality audit
    (moe.poi.causality) or replies that differ from what the expert signed for a router (moe.poi.traffic_check);
    they flag like any detector. `markets` gives each expert's subnet, to split a subnet's reward among its own
    miners (`market_bits`).
    """
    E = dists.shape[0]
    logp, _ = target_log_probs(dists, y)  # (E, W, T); special-token targets (EOS) are not bytes: 0 for everyone
    ref = torch.where(y < dists.shape[-1], UNIFORM_LOGP, 0.0).double()  # (W, T) the reference scores the same events
    order = sorted(range(E), key=lambda i: registration[i])
    rank = [order.index(i) for i in range(E)]
    report, lp, pr = detect_cheats(list(range(E)), logp, rank, present, dists, config=cheats, groups=groups)
    for i, reasons in (audit_flags or {}).items():
        for reason in [reasons] if isinstance(reasons, str) else reasons:
            report.add(i, reason)
    players = [i for i in range(E) if i not in report.flagged]
    phi = torch.zeros(E, dtype=torch.float64)
    se = torch.zeros(E, dtype=torch.float64)
    novelty: dict[int, float] = {}
    redundant: list[int] = []
    market = torch.zeros(E, dtype=torch.float64)
    mix_bpb = UNIFORM_BPB
    if players:
        by_registration = sorted(range(len(players)), key=lambda k: rank[players[k]])

        def game_of(ks):
            sel = [players[k] for k in ks]
            return MixtureGame(lp[sel], pr[sel], reference_logp=ref)

        nc = novelty_credit(game_of, by_registration, cheats.min_novelty, ShapleyConfig(seed=seed))
        phi[players], se[players] = nc.credit, nc.stderr
        novelty = {players[k]: float(nc.novelty[k]) for k in range(len(players))}
        redundant = [players[k] for k in nc.redundant]
        mix_bpb = UNIFORM_BPB - nc.mixture_bits
        if markets is not None:
            kept = [k for k in range(len(players)) if k not in nc.redundant]
            market[players] = nc.credit  # redundant players keep their novelty pay
            if kept:
                own = subnet_credit(game_of(kept), [markets[players[k]] for k in kept], ShapleyConfig(seed=seed))
                market[[players[k] for k in kept]] = own
    for i in redundant:
        if phi[i] <= 0:  # adds nothing beyond an earlier expert: a near-copy, paid nothing, and named as one
            report.add(i, "redundant")
    w = shapley_weights(list(range(E)), phi, se, flagged=report.flagged)
    bpb = expert_bpb(lp, pr)
    return EpochScore(
        contribution={hotkeys[i]: w[i] for i in range(E)},
        shapley_bits={hotkeys[i]: float(phi[i]) for i in range(E)},
        flags={hotkeys[u]: r for u, r in report.reasons.items()},
        bpb={hotkeys[i]: (None if not torch.isfinite(bpb[i]) else float(bpb[i])) for i in range(E)},
        mixture_bpb=float(mix_bpb),
        answered={hotkeys[i]: float(pr[i].double().mean()) for i in range(E)},
        novelty_bits={hotkeys[i]: n for i, n in novelty.items()},
        redundant=[hotkeys[i] for i in redundant],
        market_bits={hotkeys[i]: float(market[i]) for i in range(E)} if markets is not None else {},
        group_bpb=_group_bpb(hotkeys, lp, pr, groups),
    )


def _group_bpb(hotkeys: list[str], lp: torch.Tensor, pr: torch.Tensor, groups: list[int] | None):
    """Hotkey → {domain group: bits per byte on that domain's windows it answered}; {} without groups."""
    if groups is None:
        return {}
    g = torch.as_tensor(groups)
    out: dict[str, dict[int, float]] = {hk: {} for hk in hotkeys}
    for d in sorted(set(groups)):
        sel = g == d
        bpb = expert_bpb(lp[:, sel], pr[:, sel])
        for i, hk in enumerate(hotkeys):
            if torch.isfinite(bpb[i]):
                out[hk][d] = float(bpb[i])
    return out
