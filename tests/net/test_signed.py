"""Tests for moe/net/signed.py: the signed-value envelope, the signer-is-the-owner rule, and the field checks."""

from __future__ import annotations

import math

import base58
import pytest

from moe.identity import Hotkey
from moe.net.signed import (
    MAGIC,
    MAX_VALUE_BYTES,
    MalformedRecord,
    SignedValue,
    check_address,
    check_float,
    check_int,
    check_keys,
    check_name,
    check_peer_id,
    open_record,
    sign_record,
)

A = Hotkey.from_seed(bytes([1]) * 32)
B = Hotkey.from_seed(bytes([2]) * 32)
PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"  # Ed25519 identity multihash
QM_PEER_ID = base58.b58encode(bytes([0x12, 0x20]) + bytes(range(32))).decode()  # sha2-256 multihash


def parse_claim(payload: dict) -> dict:
    """A tiny record schema for the sign_record/open_record tests: an owner address and a count."""
    check_keys("claim", payload, ("owner", "count"))
    return {"owner": check_address("owner", payload["owner"]), "count": check_int("count", payload["count"], 0, 9)}


def test_signed_value_round_trip_returns_signer():
    """SignedValue.open returns the signer's address and the exact payload."""
    raw = SignedValue.sign(B, {"weights": [0.25, 0.75], "epoch": 4}, context="weights")
    assert SignedValue.open(raw, context="weights") == (B.address, {"weights": [0.25, 0.75], "epoch": 4})


def test_open_any_names_the_context_and_default_context_round_trips():
    """open_any returns (signer, context, payload) whatever the context; sign and open agree on the default one."""
    raw = SignedValue.sign(A, {"n": 1}, context="seed-chunk")
    assert SignedValue.open_any(raw) == (A.address, "seed-chunk", {"n": 1})
    assert SignedValue.open(SignedValue.sign(A, {"n": 2})) == (A.address, {"n": 2})
    assert SignedValue.open(bytearray(raw), context="seed-chunk") == (A.address, {"n": 1})


def test_value_signed_for_one_context_does_not_open_as_another():
    """A value signed for one context raises MalformedRecord naming both contexts when opened as another."""
    raw = SignedValue.sign(A, {"epoch": 3}, context="validator-weights")
    with pytest.raises(MalformedRecord, match="'validator-weights', expected 'expert'"):
        SignedValue.open(raw, context="expert")
    with pytest.raises(MalformedRecord, match="context"):
        SignedValue.open(raw)  # the default context is another one too


def test_context_cannot_be_spliced_onto_a_signature():
    """Rewriting the context bytes of a signed value (same length) breaks its signature."""
    raw = SignedValue.sign(A, {"epoch": 3}, context="weights")
    forged = raw.replace(b"weights", b"seedkey")
    with pytest.raises(MalformedRecord, match="bad signature"):
        SignedValue.open(forged, context="seedkey")


def test_nan_cannot_be_signed():
    """Signing a payload with NaN fails loudly instead of emitting non-standard JSON."""
    with pytest.raises(ValueError):
        SignedValue.sign(A, {"x": float("nan")})


@pytest.mark.parametrize("context", ["", "x" * 256])
def test_context_length_is_bounded(context):
    """An empty context or one over 255 bytes is refused at signing."""
    with pytest.raises(ValueError, match="context"):
        SignedValue.sign(A, {"n": 1}, context=context)


def test_oversized_payload_cannot_be_signed():
    """A payload whose signed value would exceed MAX_VALUE_BYTES is refused at signing, not sent."""
    with pytest.raises(ValueError, match="limit"):
        SignedValue.sign(A, {"blob": "a" * MAX_VALUE_BYTES})


def test_sign_record_and_open_record_round_trip():
    """A record signed by the hotkey it names as its owner opens back to the record `validate` builds."""
    payload = {"owner": A.address, "count": 3}
    raw = sign_record(A, payload, "claim", A.address, parse_claim)
    assert open_record(raw, "claim", parse_claim, lambda r: r["owner"]) == payload


def test_sign_record_refuses_another_owner():
    """sign_record refuses to sign a record whose owner field names another hotkey than the signer."""
    with pytest.raises(MalformedRecord, match="signed by"):
        sign_record(A, {"owner": B.address, "count": 3}, "claim", B.address, parse_claim)


def test_sign_record_refuses_what_readers_would_reject():
    """sign_record validates the payload as readers will, so a node never announces a record that fails its schema."""
    with pytest.raises(MalformedRecord, match="count"):
        sign_record(A, {"owner": A.address, "count": 10}, "claim", A.address, parse_claim)


def test_open_record_refuses_owner_that_is_not_the_signer():
    """open_record rejects a validly signed record whose owner field names someone other than its signer."""
    raw = SignedValue.sign(B, {"owner": A.address, "count": 3}, context="claim")
    with pytest.raises(MalformedRecord, match="signed by"):
        open_record(raw, "claim", parse_claim, lambda r: r["owner"])
    with pytest.raises(MalformedRecord, match="context"):
        open_record(SignedValue.sign(A, {"owner": A.address, "count": 3}), "claim", parse_claim, lambda r: r["owner"])


@pytest.mark.parametrize("v", [0, 5, 10])
def test_check_int_accepts_integers_in_range(v):
    """check_int returns an integer within [lo, hi] unchanged, bounds included."""
    assert check_int("stake", v, 0, 10) == v


@pytest.mark.parametrize("v", [-1, 11, True, 2.0, "3", None])
def test_check_int_refuses_bad_values_naming_the_field(v):
    """check_int refuses out-of-range values, bools, floats, strings and None with MalformedRecord naming the field."""
    with pytest.raises(MalformedRecord, match="^stake"):
        check_int("stake", v, 0, 10)


@pytest.mark.parametrize("v, expected", [(0, 0.0), (2, 2.0), (0.5, 0.5), (1.0, 1.0)])
def test_check_float_accepts_finite_numbers_in_range(v, expected):
    """check_float returns ints and floats within [lo, hi] as floats."""
    out = check_float("bpb", v, 0.0, 2.0)
    assert out == expected and isinstance(out, float)


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf, True, False, -0.1, 2.5, "1.0", None, [1.0]])
def test_check_float_refuses_bad_values_naming_the_field(v):
    """check_float refuses NaN, infinities, bools, out-of-range and non-numbers with MalformedRecord naming the
    field."""
    with pytest.raises(MalformedRecord, match="^bpb"):
        check_float("bpb", v, 0.0, 2.0)


def test_check_float_refuses_infinity_even_within_infinite_bounds():
    """Infinity is refused even when the bounds themselves are infinite."""
    with pytest.raises(MalformedRecord, match="^bpb"):
        check_float("bpb", math.inf, -math.inf, math.inf)


@pytest.mark.parametrize("v", [10**400, -(10**400)], ids=["1e400", "-1e400"])
def test_check_float_refuses_integers_too_large_for_a_float(v):
    """An integer beyond float range is refused with MalformedRecord naming the field, not an OverflowError."""
    with pytest.raises(MalformedRecord, match="^bpb"):
        check_float("bpb", v, -math.inf, math.inf)


def signed_body(hotkey: Hotkey, body: bytes, context: str = "value") -> bytes:
    """A correctly signed value whose JSON body is exactly `body`, bypassing SignedValue.sign's encoder."""
    signed = bytes([len(context)]) + context.encode() + body
    return MAGIC + hotkey.public_bytes + hotkey.sign(signed) + signed


@pytest.mark.parametrize("body", [b'{"x":1e400}', b'{"x":-1e400}', b'{"x":[1E999]}', b'{"x":Infinity}', b'{"x":NaN}'])
def test_non_finite_numbers_in_a_signed_body_are_malformed(body):
    """A signed body whose numbers overflow to infinity (or spell NaN/Infinity) opens as MalformedRecord, never as
    another exception from re-encoding it."""
    with pytest.raises(MalformedRecord, match="non-finite"):
        SignedValue.open_any(signed_body(A, body))


def test_check_address_accepts_a_hotkey_address():
    """check_address accepts a hotkey's address (64 lowercase hex characters)."""
    assert check_address("hotkey", A.address) == A.address


@pytest.mark.parametrize("v", [A.address.upper(), A.address[:-1], A.address + "0", "g" * 64, 123, None, ""])
def test_check_address_refuses_bad_values_naming_the_field(v):
    """check_address refuses upper case, wrong lengths, non-hex and non-strings with MalformedRecord naming the
    field."""
    with pytest.raises(MalformedRecord, match="^hotkey"):
        check_address("hotkey", v)


@pytest.mark.parametrize("v", ["code", "a", "web_text-2.v1", "x" * 64])
def test_check_name_accepts_short_plain_names(v):
    """check_name accepts 1-64 characters of [A-Za-z0-9_.-]."""
    assert check_name("subnet", v) == v


@pytest.mark.parametrize("v", ["", "x" * 65, "a b", "a/b", "naïve", "code\n", 5, None])
def test_check_name_refuses_bad_values_naming_the_field(v):
    """check_name refuses empty, overlong, spaced, slashed, non-ASCII and non-string names, naming the field."""
    with pytest.raises(MalformedRecord, match="^subnet"):
        check_name("subnet", v)


@pytest.mark.parametrize("v", [PEER_ID, QM_PEER_ID])
def test_check_peer_id_accepts_identity_and_sha256_multihashes(v):
    """check_peer_id accepts an Ed25519 identity peer id ('12D3Koo...') and a sha2-256 one ('Qm...')."""
    assert check_peer_id("peer_id", v) == v


@pytest.mark.parametrize(
    "v",
    [
        None,
        123,
        "12D3Koo",  # too short
        "1" * 200,  # too long
        "0OIl" * 10,  # not base58
        "1" * 40,  # base58, but not a multihash
        base58.b58encode(bytes([0x12, 0x20]) + bytes(31)).decode(),  # sha2-256 multihash one byte short
        PEER_ID[:-1],  # identity multihash whose length byte no longer matches
    ],
)
def test_check_peer_id_refuses_bad_values_naming_the_field(v):
    """check_peer_id refuses non-strings, bad lengths, non-base58 and non-multihash ids, naming the field."""
    with pytest.raises(MalformedRecord, match="^peer_id"):
        check_peer_id("peer_id", v)


def test_check_keys_accepts_exactly_the_required_keys():
    """check_keys passes a dict holding exactly the required keys, in any order."""
    check_keys("model", {"b": 1, "a": 2}, ("a", "b"))


@pytest.mark.parametrize(
    "d, reason", [({"a": 1}, r"missing keys \['b'\]"), ({"a": 1, "b": 2, "c": 3}, r"unknown keys \['c'\]"), ({}, "a")]
)
def test_check_keys_refuses_missing_or_extra_keys_naming_the_field(d, reason):
    """check_keys refuses a dict missing a required key or holding an unknown one, naming the field and the keys."""
    with pytest.raises(MalformedRecord, match=f"^model: .*{reason}"):
        check_keys("model", d, ("a", "b"))
