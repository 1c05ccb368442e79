"""Yuma consensus: one epoch of subtensor's original (non-Yuma3, liquid alpha off) reward math, in float64 numpy.

Validators (rows) weight miners (columns); the stake-weighted median of each column at `kappa` is the consensus,
weights above it are clipped so a minority cannot inflate its favourites, incentive is the stake-weighted clipped
weight, and validators earn dividends through bonds (an EMA of their stake-scaled weights). Pure math, no I/O.
Bad input (wrong shapes, negative or non-finite values) raises ValueError with a one-line message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class YumaResult:
    """Outputs of one epoch; V validators, M miners."""

    consensus: np.ndarray
    """(M,) stake-weighted median weight per miner at kappa."""
    incentive: np.ndarray
    """(M,) normalized ranks from consensus-clipped weights; miners' share of emission."""
    dividends: np.ndarray
    """(V,) normalized bonds · incentive; validators' share of emission."""
    bonds: np.ndarray
    """(V, M) new column-normalized bonds, to pass as `bonds` next epoch."""
    validator_trust: np.ndarray
    """(V,) row sums of clipped weights: how much of each validator's weight survived clipping."""


def _normalize(x: np.ndarray) -> np.ndarray:
    """x / sum(x); an all-zero vector stays zero."""
    t = x.sum()
    return x / t if t > 0 else np.zeros_like(x)


def _row_normalize(x: np.ndarray) -> np.ndarray:
    t = x.sum(axis=1, keepdims=True)  # (V, 1)
    return np.divide(x, t, out=np.zeros_like(x), where=t > 0)


def _col_normalize(x: np.ndarray) -> np.ndarray:
    t = x.sum(axis=0, keepdims=True)  # (1, M)
    return np.divide(x, t, out=np.zeros_like(x), where=t > 0)


def weighted_median_col(s: np.ndarray, W: np.ndarray, kappa: float) -> np.ndarray:
    """Per column, the smallest weight w with stake(weights <= w) > sum(s) - kappa, as subtensor's weighted_median.

    Only rows with positive stake vote. When no weight reaches that (kappa ~ 0) the column's largest voting weight is
    returned, when no row has stake the consensus is 0: both as subtensor's pivot search ends.
    """
    voting = s > 0
    if not voting.any():
        return np.zeros(W.shape[1])
    s = s[voting] / s[voting].sum()  # (V',)
    Wt = np.ascontiguousarray(W[voting].T)  # (M, V') so each column's sort runs over contiguous memory
    minority = s.sum() - kappa
    idx = np.argsort(Wt, axis=1)  # (M, V'); order among equal weights does not change the median
    Ws = np.take_along_axis(Wt, idx, axis=1)  # (M, V') ascending per miner
    cs = np.cumsum(s[idx], axis=1)  # (M, V') stake at or below each sorted weight
    above = cs > minority  # (M, V')
    first = above.argmax(axis=1)  # (M,)
    rows = np.arange(Wt.shape[0])
    return np.where(above.any(axis=1), Ws[rows, first], Ws[rows, -1])


def _check(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    if np.any(x < 0):
        raise ValueError(f"{name} must be non-negative")


def yuma_epoch(
    weights: np.ndarray,
    stakes: np.ndarray,
    bonds: np.ndarray | None = None,
    *,
    kappa: float = 0.5,
    bond_alpha: float = 0.1,
    bond_penalty: float = 1.0,
) -> YumaResult:
    """Run one Yuma epoch on raw `weights` (V, M), `stakes` (V,) and the previous epoch's `bonds` (V, M) or None.

    Rows of `weights` and `stakes` are normalized here; a validator with an all-zero row simply earns no bonds.
    Raises ValueError on a shape mismatch, a negative or non-finite value, or a parameter outside [0, 1].
    """
    W = np.asarray(weights, dtype=np.float64)
    S = np.asarray(stakes, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"weights must be 2-D (validators, miners), got shape {W.shape}")
    V, M = W.shape
    if S.shape != (V,):
        raise ValueError(f"stakes must have shape ({V},) to match weights {W.shape}, got {S.shape}")
    _check("weights", W)
    _check("stakes", S)
    for name, v in (("kappa", kappa), ("bond_alpha", bond_alpha), ("bond_penalty", bond_penalty)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    B = None
    if bonds is not None:
        B = np.asarray(bonds, dtype=np.float64)
        if B.shape != (V, M):
            raise ValueError(f"bonds must have shape {(V, M)} to match weights, got {B.shape}")
        _check("bonds", B)

    s = _normalize(S)  # (V,)
    W = _row_normalize(W)  # (V, M)
    C = weighted_median_col(s, W, kappa)  # (M,)
    Wc = np.minimum(W, C[None, :])  # (V, M) clipped at consensus
    incentive = _normalize(s @ Wc)  # (M,)

    Wb = W + bond_penalty * (Wc - W)  # (V, M) weights used for bonds
    dB = _col_normalize(Wb * s[:, None])  # (V, M)
    ema = bond_alpha * dB if B is None else bond_alpha * dB + (1.0 - bond_alpha) * _col_normalize(B)
    ema = _col_normalize(ema)  # (V, M)
    dividends = _normalize(ema @ incentive)  # (V,)
    return YumaResult(consensus=C, incentive=incentive, dividends=dividends, bonds=ema, validator_trust=Wc.sum(axis=1))
