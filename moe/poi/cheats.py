"""Detectors for experts that game Proof of Intelligence; every flagged expert gets zero weight (moe.poi.scoring).

- malformed replies (NaN, p > 1): those windows count as missing, and the expert is flagged;
- uninformative experts (random or uniform outputs): own bits per byte ≥ `max_bpb`, i.e. no better than uniform;
- copiers: near-identical outputs to another expert on the same windows (mean Jensen–Shannon divergence of the full
  distributions, or max |Δ log p| of the gathered targets); only the earliest-registered expert of such a group is
  credited, since Shapley would otherwise split its value with every copy;
- timeouts: missing windows already count as absent in the value function; `flag_timeouts` additionally flags an
  expert missing most windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from moe.poi.value import as_windows, expert_bpb

logger = logging.getLogger(__name__)


@dataclass
class CheatConfig:
    """Thresholds of the detectors."""

    max_logp: float = 1e-4
    """A gathered log-probability above this claims p > 1: the window is malformed."""
    max_bpb: float = 7.9
    """Flag an expert whose own bits per byte reach this (uniform bytes are 8)."""
    copy_max_js: float = 1e-4
    """Two experts whose mean Jensen–Shannon divergence (bits) on common windows is at most this are copies."""
    copy_max_abs_logp: float = 1e-3
    """Without full distributions: copies when max |Δ log p| (nats) over common windows is at most this."""
    copy_min_windows: int = 1
    """Compare two experts only when both answered at least this many common windows."""
    max_missing_fraction: float = 0.5
    """Flag an expert that missed more than this fraction of windows."""
    min_novelty: float = 0.05
    """A later expert adding less than this fraction of its Shapley value beyond the earlier-registered experts is
    redundant (a near-copy): scored as absent for the others, paid novelty / min_novelty (moe.poi.novelty); 0: off."""


def screen_replies(
    logp: torch.Tensor, present: torch.Tensor | None = None, max_logp: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop malformed windows: → (E, W, T) logp (0 where absent), (E, W) presence, (E,) flag of experts that sent any.

    A window with NaN, +inf or a log-probability above `max_logp` (p > 1) is set absent and its expert flagged
    (logged); −inf is kept (a zero probability, floored later by the value function).
    """
    lp = torch.as_tensor(logp).detach().to(torch.float64)
    lp = lp.unsqueeze(1) if lp.ndim == 2 else lp
    lp_raw = lp.clone()
    lp, pr = as_windows(lp, present)
    bad = (torch.isnan(lp_raw) | (lp_raw > max_logp)).any(-1) & pr  # (E, W)
    flagged = bad.any(1)  # (E,)
    if flagged.any():
        bad_experts = flagged.nonzero().flatten().tolist()
        logger.warning("malformed log-probs from experts %s; those windows count as missing", bad_experts)
    pr = pr & ~bad
    lp = torch.where(pr.unsqueeze(-1), lp, torch.zeros((), dtype=torch.float64))
    return lp, pr, flagged


def flag_uninformative(
    logp: torch.Tensor,
    present: torch.Tensor | None = None,
    max_bpb: float = 7.9,
    groups: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """(E,) True for experts whose own bits per byte is ≥ `max_bpb` (noise, uniform) on every group of windows.

    `groups` (W,) labels each window with its domain: a specialist is terrible outside its domain (a Persian
    expert scores 10+ bits per byte on code), so only an expert that beats uniform on no domain is uninformative.
    Without groups all windows form one group.
    """
    lp, pr = as_windows(logp, present)
    if groups is None:
        return torch.nan_to_num(expert_bpb(lp, pr), nan=0.0) >= max_bpb
    g = torch.as_tensor(groups)
    best = torch.full((lp.shape[0],), float("inf"), dtype=torch.float64)
    for label in g.unique().tolist():
        bpb = expert_bpb(lp, pr & (g == label).view(1, -1))  # (E,) NaN where an expert answered none of the group
        best = torch.minimum(best, torch.nan_to_num(bpb.double(), nan=float("inf")))
    return torch.where(torch.isinf(best), torch.zeros_like(best), best) >= max_bpb


def js_divergence(lq1: torch.Tensor, lq2: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence in bits between log-distributions over the last axis: (..., V) × (..., V) → (...)."""
    lq1 = torch.log_softmax(lq1.to(torch.float64), -1)
    lq2 = torch.log_softmax(lq2.to(torch.float64), -1)
    lm = torch.logaddexp(lq1, lq2) - math.log(2.0)  # (..., V) log of the midpoint distribution
    kl1 = (lq1.exp() * (lq1 - lm)).nan_to_num(nan=0.0).sum(-1)  # 0·log 0 = 0
    kl2 = (lq2.exp() * (lq2 - lm)).nan_to_num(nan=0.0).sum(-1)
    return ((kl1 + kl2) / (2 * math.log(2.0))).clamp(min=0.0)


def flag_copies(
    logp: torch.Tensor,
    registration: Sequence[int],
    present: torch.Tensor | None = None,
    dists: torch.Tensor | None = None,
    config: CheatConfig | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(E,) True for copiers, and the (copier, original) index pairs.

    Experts closer than the thresholds on the windows both answered are grouped (transitively); in each group only
    the one with the lowest `registration` (block; ties go to the lower index, i.e. uid order) keeps credit.
    `dists` (E, W, T, 256) log-distributions enable the Jensen–Shannon test; otherwise max |Δ log p| is used.
    """
    cfg = config or CheatConfig()
    lp, pr = as_windows(logp, present)
    E = lp.shape[0]
    if len(registration) != E:
        raise ValueError(f"registration must give one block per expert ({E}), got {len(registration)}")
    if dists is not None and tuple(dists.shape[:3]) != tuple(lp.shape):
        raise ValueError(f"dists must be (E, W, T, 256) matching logp {tuple(lp.shape)}, got {tuple(dists.shape)}")
    parent = list(range(E))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(E):
        for b in range(a + 1, E):
            common = pr[a] & pr[b]  # (W,)
            if int(common.sum()) < cfg.copy_min_windows:
                continue
            if dists is not None:
                d = float(js_divergence(dists[a][common], dists[b][common]).mean())
                close = d <= cfg.copy_max_js
            else:
                d = float((lp[a][common] - lp[b][common]).abs().max())
                close = d <= cfg.copy_max_abs_logp
            if close:
                logger.debug("experts %d and %d are near-identical (distance %.3g)", a, b, d)
                parent[find(a)] = find(b)
    order = sorted(range(E), key=lambda i: (int(registration[i]), i))
    first: dict[int, int] = {}
    flags = torch.zeros(E, dtype=torch.bool)
    pairs = []
    for i in order:
        root = find(i)
        if root in first:
            flags[i] = True
            pairs.append((i, first[root]))
        else:
            first[root] = i
    if pairs:
        logger.warning("copies (copier, original): %s", pairs)
    return flags, pairs


def flag_timeouts(present: torch.Tensor, max_missing_fraction: float = 0.5) -> torch.Tensor:
    """(E,) True for experts that missed more than `max_missing_fraction` of the (E, W) windows."""
    pr = torch.as_tensor(present).to(torch.bool)
    pr = pr.unsqueeze(1) if pr.ndim == 1 else pr
    return (1.0 - pr.double().mean(1)) > max_missing_fraction


@dataclass
class CheatReport:
    """Why each flagged uid gets zero weight."""

    reasons: dict[int, list[str]] = field(default_factory=dict)
    """uid → detector names that flagged it."""

    def add(self, uid: int, reason: str) -> None:
        self.reasons.setdefault(int(uid), []).append(reason)

    @property
    def flagged(self) -> set[int]:
        return set(self.reasons)


def detect_cheats(
    uids: Sequence[int],
    logp: torch.Tensor,
    registration: Sequence[int],
    present: torch.Tensor | None = None,
    dists: torch.Tensor | None = None,
    config: CheatConfig | None = None,
    groups: Sequence[int] | torch.Tensor | None = None,
) -> tuple[CheatReport, torch.Tensor, torch.Tensor]:
    """Run every detector → (report, screened (E, W, T) logp, (E, W) presence to pass to the value function)."""
    cfg = config or CheatConfig()
    if len(uids) != torch.as_tensor(logp).shape[0]:
        raise ValueError(f"uids must name each of the {torch.as_tensor(logp).shape[0]} experts, got {len(uids)}")
    report = CheatReport()
    lp, pr, malformed = screen_replies(logp, present, cfg.max_logp)
    checks = {
        "malformed": malformed,
        "uninformative": flag_uninformative(lp, pr, cfg.max_bpb, groups),
        "copy": flag_copies(lp, registration, pr, dists, cfg)[0],
        "timeout": flag_timeouts(pr, cfg.max_missing_fraction),
    }
    for name, flags in checks.items():
        for i in flags.nonzero().flatten().tolist():
            report.add(uids[i], name)
    return report, lp, pr
