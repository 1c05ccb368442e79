"""Tests for moe/ledger/emission.py: the halving schedule in exact integers and loss-free splits."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from moe.ledger.emission import (
    MAX_SUPPLY_RAO,
    RAO_PER_TAO,
    block_emission,
    halvings,
    split_between_subnets,
    split_by_weights,
    split_emission,
)


def reference_emission(issuance: int) -> int:
    """Independent schedule: find h by repeated comparison with exact fractions, no bit tricks."""
    if issuance >= MAX_SUPPLY_RAO:
        return 0
    ratio = Fraction(MAX_SUPPLY_RAO, MAX_SUPPLY_RAO - issuance)
    h = 0
    while Fraction(2 ** (h + 1)) <= ratio:
        h += 1
    return min(RAO_PER_TAO // 2**h, MAX_SUPPLY_RAO - issuance)


def test_named_thresholds():
    """Emission halves exactly when issuance reaches 10.5M, 15.75M and 18.375M TAO, not one rao earlier."""
    for tao, before, after in (
        (10_500_000, 10**9, 5 * 10**8),
        (15_750_000, 5 * 10**8, 25 * 10**7),
        (18_375_000, 25 * 10**7, 125 * 10**6),
    ):
        at = tao * RAO_PER_TAO
        assert block_emission(at - 1) == before
        assert block_emission(at) == after
        assert block_emission(at + 1) == after


def test_every_exact_threshold():
    """For each halving h whose threshold cap*(1-2**-h) is a whole rao, the rate changes exactly there."""
    for h in range(1, 16):
        t = MAX_SUPPLY_RAO - MAX_SUPPLY_RAO // 2**h
        assert MAX_SUPPLY_RAO % 2**h == 0
        assert halvings(t) == h and halvings(t - 1) == h - 1
        assert block_emission(t) == RAO_PER_TAO >> h
        assert block_emission(t - 1) == RAO_PER_TAO >> (h - 1)


def test_matches_reference_on_random_issuances():
    """block_emission agrees with an exact-fraction reference on random issuances across the whole range."""
    rng = random.Random(0)
    for _ in range(2000):
        i = rng.randrange(0, MAX_SUPPLY_RAO + 10)
        assert block_emission(i) == reference_emission(i)
    for h in range(1, 40):  # around thresholds that are not whole rao
        t = MAX_SUPPLY_RAO - MAX_SUPPLY_RAO // 2**h
        for d in (-2, -1, 0, 1, 2):
            assert block_emission(t + d) == reference_emission(t + d)


def test_cap():
    """At or past the cap nothing is minted and no block ever mints more than what is left."""
    assert block_emission(MAX_SUPPLY_RAO) == 0
    assert block_emission(MAX_SUPPLY_RAO + 1) == 0
    for left in (1, 7, 10**6):
        assert block_emission(MAX_SUPPLY_RAO - left) <= left
    assert block_emission(0) == RAO_PER_TAO
    with pytest.raises(ValueError):
        block_emission(-1)


def test_split_emission_sums_and_share():
    """Miner/validator parts sum to the amount; the default is 50/50 and the share is configurable."""
    assert split_emission(10**9) == (5 * 10**8, 5 * 10**8)
    assert split_emission(7) == (3, 4)
    assert split_emission(100, miner_share=0.41) == (41, 59)
    rng = random.Random(1)
    for _ in range(500):
        amt, share = rng.randrange(0, 10**12), rng.random()
        m, v = split_emission(amt, share)
        assert m + v == amt and m >= 0 and v >= 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            split_emission(10, bad)


def test_split_by_weights_is_exact_and_deterministic():
    """Largest-remainder parts sum to the amount and leftover rao go to the lowest index among equal remainders."""
    assert split_by_weights(10, [1, 1, 1]) == [4, 3, 3]
    assert split_by_weights(2, [1, 1, 1]) == [1, 1, 0]
    assert split_by_weights(5, [0, 0]) == [0, 0]
    rng = random.Random(2)
    for _ in range(300):
        ws = [rng.random() if rng.random() > 0.3 else 0.0 for _ in range(rng.randrange(1, 20))]
        amt = rng.randrange(0, 10**13)
        parts = split_by_weights(amt, ws)
        assert sum(parts) == (amt if sum(ws) > 0 else 0)
        assert all(p == 0 for p, w in zip(parts, ws, strict=True) if w == 0)


def test_split_by_float_weights_matches_exact_fractions():
    """Float and int weights split exactly as their decimal Fractions (repr) do, including tiny and huge exponents."""
    rng = random.Random(5)
    pools = [lambda: rng.random(), lambda: rng.random() * 10.0 ** rng.randrange(-30, 30), lambda: rng.randrange(0, 9)]
    for _ in range(400):
        ws = [rng.choice(pools)() if rng.random() > 0.2 else 0.0 for _ in range(rng.randrange(0, 12))]
        amt = rng.randrange(0, 10**15)
        ref = split_by_weights(amt, [Fraction(repr(w)) if isinstance(w, float) else Fraction(w) for w in ws])
        assert split_by_weights(amt, ws) == ref
    for bad in (float("nan"), float("inf"), -0.5, -1):
        with pytest.raises(ValueError, match="weight"):
            split_by_weights(10, [1.0, bad])


def test_split_between_subnets():
    """Subnet parts sum to the amount in share proportion; all-zero shares are refused rather than losing rao."""
    parts = split_between_subnets(10**9 + 1, {3: 1.0, 1: 1.0, 2: 2.0})
    assert sum(parts.values()) == 10**9 + 1
    assert parts == {1: 25 * 10**7, 2: 5 * 10**8 + 1, 3: 25 * 10**7}
    with pytest.raises(ValueError, match="all zero"):
        split_between_subnets(10, {1: 0.0})
