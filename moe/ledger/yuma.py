"""Yuma consensus: one epoch of subtensor's reward math (original Yuma or Yuma 3, liquid alpha), in float64 numpy.

Validators (rows) weight miners (columns); the stake-weighted median of each column at `kappa` is the consensus,
weights above it are clipped so a minority cannot inflate its favourites, incentive is the stake-weighted clipped
weight, and validators earn dividends through bonds. Pure math, no I/O. Bad input (wrong shapes, negative or
non-finite values, parameters out of range) raises ValueError with a one-line message.

Bonds follow subtensor's production sparse path, `epoch_mechanism` in pallets/subtensor/src/epoch/run_epoch.rs:
- yuma_version=1 (original Yuma): the EMA of column-normalised stake-scaled weights, `mat_ema_sparse` with
  alpha = `bond_alpha` (subtensor's 1 - BondsMovingAverage / 1e6) on the new term; dividends = bonds @ incentive.
- yuma_version=3: each bond is its own EMA of the bond weights W_b (consensus-clipped weights blended by
  `bond_penalty`, `interpolate_sparse`), absolute in [0, 1]: B = alpha * W_b + (1 - alpha) * B_prev, neither
  stake-scaled nor normalised (`compute_bonds_sparse`). Dividends: column-normalise B, d_i = sum_j B_ij * incentive_j,
  times the validator's stake, normalised (`total_bonds_per_validator`, `vec_mul(active_stake)`).
- liquid alpha (Yuma 3 only, `compute_liquid_alpha_values_sparse` / `alpha_sigmoid`): alpha_ij, the weight of the
  *new* W_b, is alpha_low + sigmoid((steepness / 100) * (d - 0.5)) * (alpha_high - alpha_low), clamped to
  [alpha_low, alpha_high], where d = clip(W_b - consensus, 0, 1) when W_b >= B_prev (buying) else
  clip(B_prev - W_b, 0, 1) (selling); the exponent is clamped to [-20, 20] like `exp_safe`. A weight far above
  consensus (or a bond far above its weight) therefore moves its bond fast (alpha_high), one at consensus slowly
  (alpha_low). When no miner has consensus the fixed `bond_alpha` is used, as subtensor does. Subtensor's
  original-Yuma path never reads LiquidAlphaOn, so `liquid_alpha` is ignored when yuma_version=1 (a debug line says
  so).

Where this differs from subtensor, and why:
- float64 instead of I32F32 / u16 storage: Yuma 3 bonds are not quantised to 1/65535 steps, so results match
  subtensor's own Yuma 3 test targets to about 5e-5 (tests/ledger/test_yuma3.py), not bit for bit. Yuma 3 bonds are
  capped at 1 (subtensor's u16 storage saturates there).
- with liquid alpha, subtensor's `mat_ema_alpha_sparse` only writes bonds present in the new sparse weight row, so a
  bond on a miner the validator stopped weighting (or whose clipped weight is zero) vanishes at once instead of
  decaying (an explicitly set zero weight does decay). A dense (V, M) input cannot tell a stored zero from an absent
  entry, so every bond decays elementwise, as subtensor's dense `mat_ema_alpha` and its non-liquid sparse
  `mat_ema_sparse` do; the sell branch of the sigmoid exists for exactly that case.
- masks (inactive validators, permits, self-weights, weights or bonds older than a registration) are the caller's.
- Yuma 1 bonds are returned column-normalised; subtensor stores them max-upscaled and re-normalises on load, which
  gives the same next epoch.

Speed: one pass over column blocks small enough to stay in cache; the weighted median sorts packed (value, row)
integer keys instead of an argsort plus gathers, and is exact (see `_median_cols`). At bond_penalty 0 or 1 the bond
weights are W or the clipped W unchanged, as `interpolate_sparse` returns them; version 1 otherwise computes what it
did before, to rounding (1e-16).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_BLOCK_ELEMS = 1 << 18
"""Elements of one (V, Mb) column block: 2 MiB of float64, so a block's temporaries stay in L2/L3 cache."""
_TILE = 32
"""Rows per tile of the block transpose in the median: a whole-block strided copy runs twice as slow."""
_SIGN_OFF = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class YumaResult:
    """Outputs of one epoch; V validators, M miners."""

    consensus: np.ndarray
    """(M,) stake-weighted median weight per miner at kappa."""
    incentive: np.ndarray
    """(M,) normalized ranks from consensus-clipped weights; miners' share of emission."""
    dividends: np.ndarray
    """(V,) normalized; validators' share of emission."""
    bonds: np.ndarray
    """(V, M) new bonds, to pass as `bonds` next epoch: column-normalized (Yuma 1) or absolute in [0, 1] (Yuma 3)."""
    validator_trust: np.ndarray
    """(V,) row sums of clipped weights: how much of each validator's weight survived clipping."""


def _normalize(x: np.ndarray) -> np.ndarray:
    """x / sum(x); an all-zero vector stays zero."""
    t = x.sum()
    return x / t if t > 0 else np.zeros_like(x)


def _col_normalize_(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Divide each column of x by its sum, in place or into `out`; all-zero columns stay zero."""
    t = x.sum(axis=0)  # (Mb,)
    t[t == 0] = 1.0
    return np.divide(x, t, out=x if out is None else out)


def _median_exact(sv: np.ndarray, w: np.ndarray, minority: float) -> float:
    """One column by a stable argsort: the slow path for columns the packed-key sort cannot settle."""
    o = np.argsort(w, kind="stable")
    cs = np.cumsum(sv[o])
    return float(w[o[np.argmax(cs > minority)]]) if cs[-1] > minority else float(w.max())


def _crossing(g: np.ndarray, minority: float, chunk: int = 32) -> np.ndarray:
    """First position in each row of `g` (Mb, V') whose running sum passes `minority`, -1 where none does.

    Sums chunks first and scans one chunk per row: a plain cumsum over rows is a slow sequential loop.
    """
    Mb, n = g.shape
    r = np.arange(Mb)
    cum = np.add.reduceat(g, np.arange(0, n, chunk), axis=1)  # (Mb, nc) chunk sums
    np.cumsum(cum, axis=1, out=cum)
    k = (cum > minority).argmax(axis=1)  # (Mb,) chunk holding the crossing
    cols = k[:, None] * chunk + np.arange(chunk)  # (Mb, chunk)
    part = g[r[:, None], np.minimum(cols, n - 1)]  # (Mb, chunk)
    part[cols >= n] = 0.0
    part[:, 0] += np.where(k > 0, cum[r, k - 1], 0.0)
    np.cumsum(part, axis=1, out=part)
    above = part > minority
    first = np.where(above.any(axis=1), above.argmax(axis=1), np.minimum(chunk, n - k * chunk) - 1)  # rounding
    return np.where(cum[:, -1] > minority, k * chunk + first, -1)


def _median_cols(sv: np.ndarray, Wv: np.ndarray, minority: float) -> np.ndarray:
    """Weighted median of each column of `Wv` (V', Mb), the voting rows, with their stakes `sv` (V',).

    Non-negative float64s order like their bit patterns, so the low b bits of each pattern are replaced by the row
    index and one integer sort orders values and carries their rows. The result is exact: where another weight shares
    the chosen one's high bits but differs in the dropped bits (relative gap < 2**-(52 - b)), that column is redone
    by `_median_exact`.
    """
    Vv, Mb = Wv.shape
    b = max(1, (Vv - 1).bit_length())
    low = np.uint64((1 << b) - 1)
    raw = Wv.view(np.uint64)  # (V', Mb)
    key = np.empty((Mb, Vv), dtype=np.uint64)  # transposed while masked: each column sorts as a contiguous row
    for i0 in range(0, Vv, _TILE):  # tiles keep the strided transpose in cache
        np.bitwise_and(raw[i0 : i0 + _TILE].T, _SIGN_OFF & ~low, out=key[:, i0 : i0 + _TILE])  # -0.0 sorts as +0.0
    key |= np.arange(Vv, dtype=np.uint64)
    key.sort(axis=1)
    idx = (key & low).view(np.int64)  # (Mb, V') rows in ascending weight order
    pos = _crossing(sv[idx], minority)  # (Mb,)
    none = pos < 0  # nothing passes the minority (kappa ~ 0): the largest weight, as subtensor
    c = np.arange(Mb)
    p = np.where(none, Vv - 1, pos)
    vbits = raw[idx[c, p], c] & _SIGN_OFF  # (Mb,)
    hb = key[c, p] >> b
    tied = ((p > 0) & (key[c, p - 1] >> b == hb)) | ((p < Vv - 1) & (key[c, np.minimum(p + 1, Vv - 1)] >> b == hb))
    tied &= ~none
    med = vbits.view(np.float64)
    if tied.any():  # a group sharing the high bits: exact unless its dropped bits differ
        x = raw[:, tied] & _SIGN_OFF  # (V', n_tied)
        x ^= vbits[tied]  # zero for weights equal to the median
        x -= np.uint64(1)
        for j in np.flatnonzero(tied)[(x < low).any(axis=0)]:
            med[j] = _median_exact(sv, Wv[:, j], minority)
    if none.any():
        med[none] = Wv[:, none].max(axis=0)
    return med


def _voters(s: np.ndarray, kappa: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows that vote (positive stake), their stakes renormalised, and the minority stake the median must pass."""
    voting = s > 0
    sv = s[voting] / s[voting].sum() if voting.any() else s[voting]
    return voting, sv, float(sv.sum() - kappa)


def _block_median(Wn: np.ndarray, voting: np.ndarray, sv: np.ndarray, minority: float) -> np.ndarray:
    """Consensus of one column block `Wn` (V, Mb)."""
    if sv.size == 0:
        return np.zeros(Wn.shape[1])
    return _median_cols(sv, Wn if sv.size == Wn.shape[0] else Wn[voting], minority)


def weighted_median_col(s: np.ndarray, W: np.ndarray, kappa: float) -> np.ndarray:
    """Per column, the smallest weight w with stake(weights <= w) > sum(s) - kappa, as subtensor's weighted_median.

    Only rows with positive stake vote. When no weight reaches that (kappa ~ 0) the column's largest voting weight is
    returned, when no row has stake the consensus is 0: both as subtensor's pivot search ends.
    """
    W = np.asarray(W, dtype=np.float64)
    voting, sv, minority = _voters(np.asarray(s, dtype=np.float64), kappa)
    Mb = max(1, _BLOCK_ELEMS // max(1, W.shape[0]))
    out = np.zeros(W.shape[1])
    for j0 in range(0, W.shape[1], Mb):
        out[j0 : j0 + Mb] = _block_median(W[:, j0 : j0 + Mb], voting, sv, minority)
    return out


def liquid_alphas(
    Wb: np.ndarray, B: np.ndarray, C: np.ndarray | None, alpha_low: float, alpha_high: float, steepness: float
) -> np.ndarray:
    """(V, M) EMA alpha per bond, the coefficient of the new bond weights `Wb`, as subtensor's alpha_sigmoid.

    `Wb` and the previous bonds `B` lie in [0, 1]; `C` (M,) is the consensus, or None when `Wb` never exceeds it
    (bond_penalty 1), so only selling moves alpha. `steepness` is in subtensor's units (divided by 100).
    """
    d = B - Wb  # (V, M) selling: how far the bond sits above the weight
    np.maximum(d, 0.0, out=d)
    if C is not None:
        buy = Wb - C  # (V, M) how far the weight sits above consensus
        np.maximum(buy, 0.0, out=buy)
        buy *= Wb >= B  # buying where the weight reaches the bond, selling (d, 0 there) elsewhere
        d += buy
    d -= 0.5
    d *= steepness / -100.0
    if steepness > 4000.0:  # exp_safe's input range, reachable only past |steepness / 100 * 0.5| = 20
        np.clip(d, -20.0, 20.0, out=d)
    np.exp(d, out=d)
    d += 1.0
    np.divide(1.0, d, out=d)  # sigmoid
    d *= alpha_high - alpha_low
    d += alpha_low  # >= alpha_low already, rounding is monotone
    return np.minimum(d, alpha_high, out=d)


def _check(name: str, x: np.ndarray) -> float:
    """Finite and non-negative, with two reductions and no full-size temporaries; returns the largest value."""
    if x.size == 0:
        return 0.0
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} must be finite")
    if lo < 0:
        raise ValueError(f"{name} must be non-negative")
    return float(hi)


def _check_params(
    kappa: float,
    bond_alpha: float,
    bond_penalty: float,
    yuma_version: int,
    alpha_low: float,
    alpha_high: float,
    steepness: float,
) -> None:
    if yuma_version not in (1, 3):
        raise ValueError(f"yuma_version must be 1 or 3, got {yuma_version}")
    for name, v in (
        ("kappa", kappa),
        ("bond_alpha", bond_alpha),
        ("bond_penalty", bond_penalty),
        ("alpha_low", alpha_low),
        ("alpha_high", alpha_high),
    ):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if alpha_low > alpha_high:
        raise ValueError(f"alpha_low ({alpha_low}) must not exceed alpha_high ({alpha_high})")
    if not (math.isfinite(float(steepness)) and steepness >= 0):
        raise ValueError(f"alpha_sigmoid_steepness must be finite and non-negative, got {steepness}")


def yuma_epoch(
    weights: np.ndarray,
    stakes: np.ndarray,
    bonds: np.ndarray | None = None,
    *,
    kappa: float = 0.5,
    bond_alpha: float = 0.1,
    bond_penalty: float = 1.0,
    yuma_version: int = 1,
    liquid_alpha: bool = False,
    alpha_low: float = 0.7,
    alpha_high: float = 0.9,
    alpha_sigmoid_steepness: float = 1000.0,
) -> YumaResult:
    """Run one Yuma epoch on raw `weights` (V, M), `stakes` (V,) and the previous epoch's `bonds` (V, M) or None.

    Rows of `weights` and `stakes` are normalized here; a validator with an all-zero row simply earns no bonds.
    `bond_alpha` is the EMA weight of the new bonds; `liquid_alpha` replaces it per bond for yuma_version=3 and is
    ignored for 1. Raises ValueError on a shape mismatch, a negative or non-finite value, Yuma 3 bonds above 1, or a
    parameter out of range.
    """
    steepness = alpha_sigmoid_steepness
    _check_params(kappa, bond_alpha, bond_penalty, yuma_version, alpha_low, alpha_high, steepness)
    W = np.asarray(weights, dtype=np.float64)
    S = np.asarray(stakes, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"weights must be 2-D (validators, miners), got shape {W.shape}")
    V, M = W.shape
    if S.shape != (V,):
        raise ValueError(f"stakes must have shape ({V},) to match weights {W.shape}, got {S.shape}")
    _check("weights", W)
    _check("stakes", S)
    B = None
    if bonds is not None:
        B = np.asarray(bonds, dtype=np.float64)
        if B.shape != (V, M):
            raise ValueError(f"bonds must have shape {(V, M)} to match weights, got {B.shape}")
        if _check("bonds", B) > 1.0 and yuma_version == 3:
            raise ValueError("bonds must be in [0, 1] for yuma_version=3")
    if liquid_alpha and yuma_version == 1:
        logger.debug("liquid_alpha ignored: subtensor applies it to Yuma 3 only")
    liquid = liquid_alpha and yuma_version == 3

    s = _normalize(S)  # (V,)
    t = W.sum(axis=1)  # (V,) row sums; zero rows divide by 1 and stay zero
    t[t == 0] = 1.0
    t = t[:, None]  # (V, 1)
    voting, sv, minority = _voters(s, kappa)
    C, ranks = np.zeros(M), np.zeros(M)
    trust, paid = np.zeros(V), np.zeros(V)  # (V,) clipped-weight sums; bonds @ ranks
    bonds_out = np.empty((V, M))
    Mb = max(1, _BLOCK_ELEMS // max(1, V))
    for j0 in range(0, M, Mb):
        J = slice(j0, min(M, j0 + Mb))
        Wn = W[:, J] / t  # (V, Mb) row-normalized block
        C[J] = _block_median(Wn, voting, sv, minority)
        Wc = np.minimum(Wn, C[J])  # (V, Mb) clipped at consensus
        ranks[J] = s @ Wc
        trust += Wc.sum(axis=1)
        Wb = Wc  # (V, Mb) weights for bonds: W + bond_penalty * (Wc - W), the penalty-1 case reusing Wc
        if bond_penalty != 1.0:
            Wb = Wc - Wn
            Wb *= bond_penalty
            Wb += Wn
        Bj = None if B is None else B[:, J]
        out = bonds_out[:, J]  # (V, Mb) view: the last pass of each branch writes the new bonds straight into it
        if yuma_version == 1:
            Wb *= s[:, None]
            ema = _col_normalize_(Wb)  # (V, Mb) bonds delta
            ema *= bond_alpha
            if Bj is not None:
                Bn = _col_normalize_(Bj.copy())
                Bn *= 1.0 - bond_alpha
                ema += Bn
            _col_normalize_(ema, out=out)
            paid += out @ ranks[J]
        else:
            ema = Wb  # (V, Mb) ours to overwrite: Wc is no longer needed
            if liquid:
                Cb = None if bond_penalty == 1.0 else C[J]
                A = liquid_alphas(Wb, np.zeros_like(Wb) if Bj is None else Bj, Cb, alpha_low, alpha_high, steepness)
                ema *= A
                if Bj is not None:
                    A -= 1.0
                    A *= Bj
                    ema -= A  # + (1 - alpha) * B
            else:
                ema *= bond_alpha
                if Bj is not None:
                    ema += (1.0 - bond_alpha) * Bj
            np.minimum(ema, 1.0, out=out)
            t_b = out.sum(axis=0)  # (Mb,) dividends read column-normalized bonds: fold the norms into the ranks
            paid += out @ np.divide(ranks[J], t_b, out=np.zeros(len(t_b)), where=t_b > 0)
    if liquid and not C.any():  # subtensor's compute_bonds_sparse needs some consensus for liquid alpha
        return yuma_epoch(
            weights, stakes, bonds, kappa=kappa, bond_alpha=bond_alpha, bond_penalty=bond_penalty, yuma_version=3
        )
    dividends = _normalize(paid) if yuma_version == 1 else _normalize(paid * s)
    return YumaResult(
        consensus=C, incentive=_normalize(ranks), dividends=dividends, bonds=bonds_out, validator_trust=trust
    )
