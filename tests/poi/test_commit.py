"""Tests for moe/poi/commit.py: seed commit–reveal and deterministic window draws."""

from __future__ import annotations

from collections import Counter

import pytest

from moe.identity import Hotkey
from moe.poi.commit import (
    RevealError,
    SeedCommit,
    check_reveal,
    check_windows,
    draw_windows,
    make_commit,
    new_seed,
    seed_commitment,
)

SIZES = {"code": 10_000, "math": 5_000, "tiny": 10}


def _key(i: int = 1) -> Hotkey:
    return Hotkey.from_seed(bytes([i]) * 32)


def test_reveal_opens_commit():
    """The committed seed opens its commitment, also after a JSON round trip."""
    hk, seed = _key(), new_seed()
    c = SeedCommit.from_json(make_commit(hk, seed, epoch=7).to_json())
    check_reveal(c, seed)
    assert c.commitment == seed_commitment(seed, hk.public_bytes, 7)


def test_wrong_seed_epoch_or_validator_rejected():
    """Another seed, a changed epoch, another validator's name or a bad signature is rejected."""
    hk, seed = _key(), new_seed()
    c = make_commit(hk, seed, epoch=7)
    with pytest.raises(RevealError, match="does not open"):
        check_reveal(c, new_seed())
    with pytest.raises(RevealError, match="not signed"):
        check_reveal(SeedCommit(c.validator, 8, c.commitment, c.signature), seed)
    with pytest.raises(RevealError, match="not signed"):
        check_reveal(SeedCommit(_key(2).address, 7, c.commitment, c.signature), seed)
    with pytest.raises(RevealError, match="malformed"):
        check_reveal(c, b"short")


def test_malformed_commit_record_rejected():
    """A record with a missing or non-hex field raises a one-line ValueError."""
    d = make_commit(_key(), new_seed(), 1).to_json()
    with pytest.raises(ValueError, match="malformed seed commitment"):
        SeedCommit.from_json({**d, "commitment": "zz"})
    with pytest.raises(ValueError, match="malformed seed commitment"):
        SeedCommit.from_json({k: v for k, v in d.items() if k != "epoch"})
    assert not SeedCommit("nothex", 1, b"", b"").verify()


def test_draw_is_deterministic_and_in_range():
    """The same seed draws the same windows; all fit their split; tiny splits are skipped; seeds differ."""
    seed = bytes(range(32))
    a = draw_windows(seed, SIZES, 200, 64)
    assert a == draw_windows(seed, dict(reversed(list(SIZES.items()))), 200, 64)
    assert all(0 <= off <= SIZES[s] - 64 for s, off in a)
    assert {s for s, _ in a} == {"code", "math"}
    assert a != draw_windows(bytes(32), SIZES, 200, 64)
    with pytest.raises(ValueError, match="no subnet"):
        draw_windows(seed, {"tiny": 10}, 1, 64)


def test_draw_gives_each_subnet_its_share_and_uniform_offsets():
    """Every subnet gets n // k windows and the seed picks which get one more, whatever the split sizes; offsets
    cover the split (no obvious bias)."""
    w = draw_windows(b"\x01" * 32, {"a": 1000, "b": 1_000_000}, 2000, 10)
    assert sum(s == "a" for s, _ in w) == 1000
    offs = [o for s, o in w if s == "a"]
    assert min(offs) < 50 and max(offs) > 940
    four = {"code": 10_000, "english": 10_000, "math": 10_000, "persian": 10_000}
    extra: set[str] = set()
    for i in range(40):
        counts = Counter(s for s, _ in draw_windows(bytes([i]) * 32, four, 30, 64))
        assert sorted(counts.values()) == [7, 7, 8, 8]
        extra |= {s for s, c in counts.items() if c == 8}
    assert extra == set(four)  # the seed, not the names, decides who gets the extra windows


def test_check_windows():
    """Windows drawn from the revealed seed pass; a swapped window is rejected."""
    hk, seed = _key(), new_seed()
    c = make_commit(hk, seed, epoch=3)
    w = draw_windows(seed, SIZES, 10, 64)
    check_windows(c, seed, SIZES, 10, 64, w)
    with pytest.raises(RevealError, match="not the draw"):
        check_windows(c, seed, SIZES, 10, 64, [("code", 0)] + w[1:])
