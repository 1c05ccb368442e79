"""TAO emission schedule and integer splitting of minted rao.

Every amount is an integer number of rao (1 TAO = 10**9 rao); floats never touch balances, so replicas that replay
the same blocks mint and credit exactly the same amounts. Splits assign their rounding remainders deterministically,
so the parts always sum to the whole: nothing is minted or lost by rounding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

logger = logging.getLogger(__name__)

RAO_PER_TAO = 10**9
MAX_SUPPLY_RAO = 21_000_000 * RAO_PER_TAO
INITIAL_BLOCK_EMISSION_RAO = 1 * RAO_PER_TAO
BLOCK_TIME_SECONDS = 12

Share = float | int | Fraction


def halvings(total_issuance: int) -> int:
    """Halvings so far: floor(log2(1 / (1 - issuance / cap))), in exact integers (no float log2 at boundaries).

    2**h <= cap / (cap - issuance) holds exactly when 2**h <= cap // (cap - issuance), since 2**h is an integer.
    """
    if total_issuance < 0:
        raise ValueError(f"total issuance must be >= 0 rao, got {total_issuance}")
    if total_issuance >= MAX_SUPPLY_RAO:
        raise ValueError("no halving count past the supply cap")
    return (MAX_SUPPLY_RAO // (MAX_SUPPLY_RAO - total_issuance)).bit_length() - 1


def block_emission(total_issuance: int) -> int:
    """Rao minted by the next block: 1 TAO halved at 10.5M, 15.75M, 18.375M, ... TAO, never past the 21M cap.

    The last block before the cap mints only what is left; at or past the cap it mints 0.
    """
    if total_issuance < 0:
        raise ValueError(f"total issuance must be >= 0 rao, got {total_issuance}")
    if total_issuance >= MAX_SUPPLY_RAO:
        return 0
    return min(INITIAL_BLOCK_EMISSION_RAO >> halvings(total_issuance), MAX_SUPPLY_RAO - total_issuance)


def _fraction(share: Share, name: str) -> Fraction:
    """Exact rational value of a share; a float means its shortest decimal (repr), so 0.1 splits like 1/10."""
    if isinstance(share, bool) or not isinstance(share, int | float | Fraction):
        raise ValueError(f"{name} must be a number, got {type(share).__name__}")
    if isinstance(share, float) and not math.isfinite(share):
        raise ValueError(f"{name} must be finite, got {share}")
    f = Fraction(repr(share)) if isinstance(share, float) else Fraction(share)  # 0.41 means 41/100, not its binary
    if f < 0:
        raise ValueError(f"{name} must be >= 0, got {share}")
    return f


def split_emission(amount: int, miner_share: Share = 0.5) -> tuple[int, int]:
    """(miners, validators) parts of `amount` rao; miners get floor(amount * share), validators the rest."""
    if amount < 0:
        raise ValueError(f"amount must be >= 0 rao, got {amount}")
    s = _fraction(miner_share, "miner_share")
    if s > 1:
        raise ValueError(f"miner_share must be in [0, 1], got {miner_share}")
    miners = amount * s.numerator // s.denominator
    return miners, amount - miners


def split_by_weights(amount: int, weights: Sequence[Share]) -> list[int]:
    """Split `amount` rao in proportion to `weights` by largest remainder; the parts sum to `amount` exactly.

    Each part gets floor(amount * w / sum); leftover rao go one each to the largest remainders, ties to the lower
    index. All-zero (or empty) weights give all zeros and the caller keeps the amount (the sum check is then 0).
    """
    if amount < 0:
        raise ValueError(f"amount must be >= 0 rao, got {amount}")
    if all(type(w) is int or type(w) is float for w in weights):
        return _split_decimal(amount, [_decimal(w, "weight") for w in weights])
    fs = [_fraction(w, "weight") for w in weights]
    total = sum(fs, Fraction(0))
    if total == 0:
        return [0] * len(fs)
    exact = [amount * f / total for f in fs]
    parts = [e.numerator // e.denominator for e in exact]
    left = amount - sum(parts)
    order = sorted(range(len(fs)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def _decimal(share: int | float, name: str) -> tuple[int, int]:
    """(n, e) with n * 10**e equal to `_fraction(share)`, by reading the float's repr digits (no Fraction objects)."""
    if type(share) is int:
        n, e = share, 0
    else:
        if not math.isfinite(share):
            raise ValueError(f"{name} must be finite, got {share}")
        mantissa, _, exp = repr(share).partition("e")
        whole, _, frac = mantissa.partition(".")
        n, e = int(whole + frac), int(exp or 0) - len(frac)
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {share}")
    return n, e


def _split_decimal(amount: int, shares: list[tuple[int, int]]) -> list[int]:
    """`split_by_weights` on exact decimals n * 10**e, in integers: same floors, same largest-remainder order."""
    if not shares:
        return []
    k = min(e for _, e in shares)
    ns = [n * 10 ** (e - k) for n, e in shares]  # all scaled by the same 10**-k: ratios unchanged
    total = sum(ns)
    if total == 0:
        return [0] * len(ns)
    parts, rems = [], []
    for n in ns:
        q, r = divmod(amount * n, total)
        parts.append(q)
        rems.append(r)
    left = amount - sum(parts)
    for i in sorted(range(len(ns)), key=lambda i: (-rems[i], i))[:left]:
        parts[i] += 1
    return parts


def split_between_subnets(amount: int, shares: Mapping[int, Share]) -> dict[int, int]:
    """Rao per netuid in proportion to `shares` (largest remainder, ties to the lower netuid); sums to `amount`.

    Raises ValueError when every share is zero, since the amount would otherwise vanish.
    """
    netuids = sorted(shares)
    if amount and not any(_fraction(shares[n], "subnet share") for n in netuids):
        raise ValueError("subnet shares are all zero; emission would be lost")
    return dict(zip(netuids, split_by_weights(amount, [shares[n] for n in netuids]), strict=True))
