"""Tests for moe/ledger/registration.py: seals, difficulty, demand-driven costs, and the uid table."""

from __future__ import annotations

import hashlib

import pytest
from Crypto.Hash import keccak

from moe.ledger.registration import (
    MAX_SEAL,
    RegistrationError,
    SubnetRegistry,
    adjust_toward_target,
    keccak256,
    pow_seal,
    registration_prefix,
    seal_meets_difficulty,
    solve_pow,
)


def test_keccak_is_original_keccak_not_sha3():
    """keccak256 of b'' is the well-known original-Keccak digest, which differs from hashlib.sha3_256."""
    empty = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() == empty
    assert hashlib.sha3_256(b"").hexdigest() != empty


def test_seal_matches_independent_computation():
    """pow_seal equals keccak-256 over sha256(prefix + 8-byte little-endian nonce), computed here by hand."""
    prefix = registration_prefix(7, bytes(range(32)), b"\xaa" * 32)
    assert prefix == b"hivemoe/register/v1" + b"\x07\x00" + bytes(range(32)) + b"\xaa" * 32
    for nonce in (0, 1, 258, 2**64 - 1):
        inner = hashlib.sha256(prefix + nonce.to_bytes(8, "little")).digest()
        want = keccak.new(digest_bits=256).update(inner).digest()
        assert pow_seal(prefix, nonce) == want
    with pytest.raises(ValueError):
        pow_seal(prefix, 2**64)


def test_prefix_binds_inputs():
    """Different netuid, block hash or hotkey give different prefixes; wrong sizes raise ValueError."""
    base = registration_prefix(1, "00" * 32, b"\x01" * 32)
    assert base != registration_prefix(2, "00" * 32, b"\x01" * 32)
    assert base != registration_prefix(1, "01" * 32, b"\x01" * 32)
    assert base != registration_prefix(1, "00" * 32, b"\x02" * 32)
    with pytest.raises(ValueError):
        registration_prefix(1, "00" * 31, b"\x01" * 32)
    with pytest.raises(ValueError):
        registration_prefix(1, "00" * 32, b"\x01" * 31)


def test_difficulty_edges():
    """A seal exactly at (2**256-1)//difficulty passes, one above fails; difficulty 1 accepts every seal."""
    for d in (1, 2, 3, 1000, 2**64):
        limit = MAX_SEAL // d
        assert seal_meets_difficulty(limit.to_bytes(32, "little"), d)
        if limit < MAX_SEAL:
            assert not seal_meets_difficulty((limit + 1).to_bytes(32, "little"), d)
    assert seal_meets_difficulty(b"\xff" * 32, 1)
    # little-endian: a high last byte makes the number large
    assert not seal_meets_difficulty(b"\x00" * 31 + b"\x80", 2**8)
    assert seal_meets_difficulty(b"\x80" + b"\x00" * 31, 2**8)
    with pytest.raises(ValueError):
        seal_meets_difficulty(b"\x00" * 32, 0)


def test_solve_pow_finds_first_valid_nonce():
    """solve_pow returns the smallest nonce meeting the difficulty, or None within a range that has none."""
    prefix = registration_prefix(1, "11" * 32, b"\x05" * 32)
    n = solve_pow(prefix, 50)
    assert n is not None and seal_meets_difficulty(pow_seal(prefix, n), 50)
    assert not any(seal_meets_difficulty(pow_seal(prefix, k), 50) for k in range(n))
    assert solve_pow(prefix, 2**200, max_nonce=20) is None


def test_adjustment_toward_target():
    """Difficulty/burn double at 3x target demand, halve with none, stay at target, and respect the clamps."""
    assert adjust_toward_target(1000, 6, 2, 1, 10**9) == 2000
    assert adjust_toward_target(1000, 0, 2, 1, 10**9) == 500
    assert adjust_toward_target(1000, 2, 2, 1, 10**9) == 1000
    assert adjust_toward_target(1000, 0, 2, 800, 10**9) == 800
    assert adjust_toward_target(1000, 100, 2, 1, 5000) == 5000
    with pytest.raises(ValueError):
        adjust_toward_target(1000, 1, 0, 1, 10)


def test_registry_fills_then_prunes_lowest_non_immune():
    """A full subnet replaces the lowest-scoring uid past immunity, and refuses newcomers while all are immune."""
    reg = SubnetRegistry(max_uids=3, immunity_period=10)
    for i, h in enumerate(("a", "b", "c")):
        assert reg.register(h, height=i) == (i, None)
    with pytest.raises(RegistrationError, match="immunity"):
        reg.register("d", height=5)
    reg.set_scores({0: 0.5, 1: 0.1, 2: 0.4})
    assert reg.register("d", height=11) == (1, "b")
    assert reg.uid_of("b") is None and reg.uid_of("d") == 1
    assert reg.is_immune(1, 12) and not reg.is_immune(0, 12)


def test_registry_tie_prunes_oldest_and_immunity_protects_low_scores():
    """Among equal scores the oldest registration goes; an immune uid survives even with the lowest score."""
    reg = SubnetRegistry(max_uids=3, immunity_period=10)
    reg.register("a", 5)
    reg.register("b", 0)
    reg.register("c", 20)  # immune until 30, score 0
    reg.set_scores({0: 0.2, 1: 0.2, 2: 0.0})
    assert reg.register("d", height=25) == (1, "b")  # b (height 0) is older than a (height 5)
    with pytest.raises(RegistrationError, match="already holds"):
        reg.register("a", 26)


def test_registry_copy_is_independent():
    """Registering, pruning or scoring in a copy of a uid table leaves the original exactly as it was."""
    reg = SubnetRegistry(max_uids=2, immunity_period=1)
    reg.register("a", 0)
    reg.register("b", 0)
    reg.set_scores({0: 0.3, 1: 0.7})
    dup = reg.copy()
    dup.set_scores({0: 0.9, 1: 0.1})
    assert dup.register("c", 5) == (1, "b")
    assert reg.uid_of("b") == 1 and reg.uid_of("c") is None and reg.slots[0].score == 0.3
    assert reg.register("d", 5) == (0, "a")  # the original still prunes by its own scores
    assert dup.uid_of("a") == 0 and dup.uid_of("d") is None
