"""Tests for moe/ledger/weights.py: SDK-compatible u16 weights and signed weight submissions."""

from __future__ import annotations

import random

import pytest

from moe.identity import Hotkey
from moe.ledger.weights import WeightSubmission, to_u16


def sdk_reference(uids, weights):
    """The Bittensor SDK's convert_weights_and_uids_for_emit, restated: max-upscale, round, drop zeros."""
    if sum(weights) == 0:
        return [], []
    m = float(max(weights))
    pairs = [(u, round(float(w) / m * 65535)) for u, w in zip(uids, weights, strict=True)]
    return [u for u, v in pairs if v != 0], [v for _, v in pairs if v != 0]


def test_known_values():
    """The largest weight maps to 65535, Python's round applies (32767.5 -> 32768) and zeros are dropped."""
    assert to_u16([0, 1, 2, 3], [0.5, 1.0, 0.0, 1e-9]) == ([0, 1], [32768, 65535])
    assert to_u16([5], [3.0]) == ([5], [65535])
    assert to_u16([1, 2], [0.0, 0.0]) == ([], [])
    assert to_u16([], []) == ([], [])


def test_matches_sdk_reference_on_random_vectors():
    """to_u16 equals the SDK conversion on random vectors."""
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randrange(1, 50)
        uids = rng.sample(range(65536), n)
        ws = [rng.random() * rng.choice([1e-6, 1, 1e6]) if rng.random() > 0.2 else 0.0 for _ in range(n)]
        assert to_u16(uids, ws) == sdk_reference(uids, ws)


@pytest.mark.parametrize(
    "uids,weights,msg",
    [
        ([0, 1], [1.0], "same length"),
        ([0], [float("nan")], "finite"),
        ([0], [float("inf")], "finite"),
        ([0, 1], [1.0, -0.1], "non-negative"),
        ([65536], [1.0], "uids must be in"),
        ([-1], [1.0], "uids must be in"),
    ],
)
def test_bad_input_rejected(uids, weights, msg):
    """Mismatched lengths, non-finite or negative weights and out-of-range uids raise ValueError."""
    with pytest.raises(ValueError, match=msg):
        to_u16(uids, weights)


def test_submission_signs_and_verifies():
    """A created submission verifies, survives a dict round trip, and its signing bytes ignore dict key order."""
    key = Hotkey.from_seed(b"\x01" * 32)
    sub = WeightSubmission.create(key, netuid=3, epoch=7, uids=[1, 4], weights=[0.2, 0.8])
    assert sub.verify()
    assert sub.validator == key.address and sub.weights == [16384, 65535]
    d = sub.to_dict()
    again = WeightSubmission.from_dict(dict(reversed(list(d.items()))))
    assert again == sub and again.verify()
    assert again.signing_bytes() == sub.signing_bytes()


@pytest.mark.parametrize(
    "field,value",
    [("netuid", 4), ("epoch", 8), ("uids", [1, 5]), ("weights", [16384, 65534]), ("validator", "00" * 32)],
)
def test_any_altered_field_fails_verification(field, value):
    """Changing any signed field after signing makes verify() False."""
    sub = WeightSubmission.create(Hotkey.from_seed(b"\x02" * 32), 3, 7, [1, 4], [0.2, 0.8])
    setattr(sub, field, value)
    assert not sub.verify()


def test_forged_and_malformed_signatures_fail():
    """A signature by another key, a truncated one or non-hex garbage is rejected without raising."""
    a, b = Hotkey.from_seed(b"\x03" * 32), Hotkey.from_seed(b"\x04" * 32)
    sub = WeightSubmission.create(a, 1, 0, [0], [1.0])
    sub.signature = b.sign(sub.signing_bytes()).hex()
    assert not sub.verify()
    for sig in ("", "zz" * 64, sub.signature[:-2]):
        sub.signature = sig
        assert not sub.verify()
    with pytest.raises(ValueError, match="malformed weight submission"):
        WeightSubmission.from_dict({"netuid": 1})
