"""Weights from Proof of Intelligence: Shapley values and cheat flags → normalized non-negative weights per uid.

An expert earns weight only for what it adds: negative contributions are clipped to 0, flagged experts get 0, an
optional lower confidence bound (φ − z·SE) keeps sampling noise from minting weight, and an exponent > 1 sharpens
toward the strongest. The result sums to 1 (or is all zeros when nobody contributed, which is logged) and is ready
for the ledger's u16 quantization.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass
class ScoringConfig:
    """How contributions become weights."""

    exponent: float = 1.0
    """Weights ∝ max(score, 0)^exponent; above 1 favours the strongest experts, below 1 flattens."""
    stderr_z: float = 0.0
    """Score = φ − z·SE: with z = 2 an expert must beat its sampling error to earn weight."""


def shapley_weights(
    uids: Sequence[int],
    values: torch.Tensor | Sequence[float],
    stderr: torch.Tensor | Sequence[float] | None = None,
    flagged: Collection[int] = (),
    config: ScoringConfig | None = None,
) -> dict[int, float]:
    """uid → weight in [0, 1], summing to 1 unless every score is ≤ 0 (then all 0).

    Raises ValueError (one line) on mismatched lengths, duplicate uids or a non-positive exponent; a non-finite value
    (a broken computation, not an expert's fault to reward) scores 0 and is logged.
    """
    cfg = config or ScoringConfig()
    if not cfg.exponent > 0 or not math.isfinite(cfg.exponent):
        raise ValueError(f"exponent must be positive and finite, got {cfg.exponent}")
    phi = torch.as_tensor(values, dtype=torch.float64).flatten()
    if phi.numel() != len(uids):
        raise ValueError(f"{len(uids)} uids but {phi.numel()} values")
    if len(set(uids)) != len(uids):
        raise ValueError("uids must be distinct")
    if stderr is not None:
        se = torch.as_tensor(stderr, dtype=torch.float64).flatten()
        if se.numel() != phi.numel():
            raise ValueError(f"{phi.numel()} values but {se.numel()} standard errors")
        phi = phi - cfg.stderr_z * se.nan_to_num(nan=math.inf)
    bad = ~torch.isfinite(phi)
    if bad.any():
        logger.warning("non-finite contributions for uids %s score 0", [uids[i] for i in bad.nonzero().flatten()])
    score = torch.where(bad, torch.zeros((), dtype=torch.float64), phi).clamp(min=0.0)
    for i, uid in enumerate(uids):
        if uid in flagged:
            score[i] = 0.0
    score = score**cfg.exponent
    total = float(score.sum())
    if total <= 0:
        logger.warning("no expert contributed positively; all weights are 0")
        return {int(u): 0.0 for u in uids}
    return {int(u): float(s) / total for u, s in zip(uids, score.tolist(), strict=True)}
