"""Tests for moe/net/expert_record.py: signed expert records, and the rejection of every kind of bad input."""

from __future__ import annotations

import json

import pytest

from moe.identity import Hotkey
from moe.net.expert_record import EXPERT_CONTEXT, ExpertRecord
from moe.net.signed import MAGIC, MAX_VALUE_BYTES, MalformedRecord, SignedValue

PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
A = Hotkey.from_seed(bytes([1]) * 32)
B = Hotkey.from_seed(bytes([2]) * 32)


def make_record(hotkey: Hotkey = A, **overrides) -> ExpertRecord:
    fields = dict(
        uid=3,
        hotkey=hotkey.address,
        subnet="code",
        netuid=1,
        peer_id=PEER_ID,
        model=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=256, params=123456),
        train_step=10,
        claimed_eval_bpb=2.5,
        signature_centroid=[0.1 * i for i in range(16)],
        registered_at=100.0,
        expiration=1e9,
    )
    fields.update(overrides)
    return ExpertRecord(**fields)


def raw_signed(hotkey: Hotkey, body: bytes, context: str = EXPERT_CONTEXT) -> bytes:
    """A correctly signed envelope around arbitrary body bytes, so only the payload checks can reject it."""
    signed = bytes([len(context)]) + context.encode() + body
    return MAGIC + hotkey.public_bytes + hotkey.sign(signed) + signed


def test_record_round_trip():
    """A record signed by its own hotkey opens back to an equal record."""
    record = make_record()
    assert ExpertRecord.from_dht_value(record.to_dht_value(A)) == record


def test_a_priced_record_round_trips_and_gives_the_price_in_rao():
    """The announced price survives signing and reading, and tickets get it as whole rao per million bytes."""
    rec = ExpertRecord.from_dht_value(make_record(price_tao_per_mbyte=0.25).to_dht_value(A))
    assert rec.price_tao_per_mbyte == 0.25 and rec.price_rao_per_mbyte == 250_000_000


def test_flipped_byte_breaks_signature():
    """Changing any byte of the payload makes the signature check fail."""
    raw = bytearray(make_record().to_dht_value(A))
    raw[-5] ^= 1
    with pytest.raises(MalformedRecord, match="bad signature"):
        ExpertRecord.from_dht_value(bytes(raw))


def test_record_signed_by_someone_else_is_rejected():
    """A record naming hotkey A but signed by B is rejected, and A's key cannot sign B's record."""
    payload = make_record(A).payload()
    with pytest.raises(MalformedRecord, match="signed by"):
        ExpertRecord.from_dht_value(SignedValue.sign(B, payload, context=EXPERT_CONTEXT))
    with pytest.raises(MalformedRecord, match="signed by"):
        make_record(A).to_dht_value(B)


def test_other_context_cannot_be_replayed_as_record():
    """A value signed for another purpose (validator weights) is not accepted as an expert record."""
    raw = SignedValue.sign(A, make_record().payload(), context="weights")
    with pytest.raises(MalformedRecord, match="context"):
        ExpertRecord.from_dht_value(raw)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not valid JSON"),
        (b'{"uid": NaN}', "non-finite"),
        (b'{"uid":Infinity}', "non-finite"),
        (b"[1,2,3]", "JSON object"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{ "a": 1 }', "canonical"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_json_payloads_are_rejected(body: bytes, reason: str):
    """Validly signed but malformed JSON payloads raise MalformedRecord with a specific reason."""
    with pytest.raises(MalformedRecord, match=reason):
        ExpertRecord.from_dht_value(raw_signed(A, body))


@pytest.mark.parametrize("raw", [None, 12, "text", {"a": 1}, b"", b"HMS1", b"XXXX" + bytes(200)])
def test_non_envelopes_are_rejected(raw):
    """Values of the wrong type, truncated values and values without the magic header are rejected."""
    with pytest.raises(MalformedRecord):
        ExpertRecord.from_dht_value(raw)


def test_oversized_value_rejected_before_parsing():
    """A value larger than MAX_VALUE_BYTES is rejected on size alone."""
    with pytest.raises(MalformedRecord, match="limit"):
        ExpertRecord.from_dht_value(MAGIC + bytes(MAX_VALUE_BYTES))


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("uid", -1, "uid"),
        ("uid", True, "uid must be an integer"),
        ("uid", 70000, "uid"),
        ("hotkey", "AB" * 32, "hotkey"),
        ("subnet", "a b", "subnet"),
        ("subnet", "", "subnet"),
        ("netuid", "1", "netuid"),
        ("peer_id", "not-base58-0OIl" * 3, "peer_id"),
        ("peer_id", "1" * 40, "peer_id"),
        ("train_step", -5, "train_step"),
        ("claimed_eval_bpb", 1e300, "claimed_eval_bpb"),
        ("claimed_eval_bpb", "2.0", "claimed_eval_bpb"),
        ("signature_centroid", [0.0] * 300, "signature_centroid"),
        ("signature_centroid", [1e300], "signature_centroid"),
        ("signature_centroid", "abc", "signature_centroid"),
        ("model", {"d_model": 64}, "missing keys"),
        ("model", [1, 2], "model must be"),
        ("registered_at", -1.0, "registered_at"),
        ("expiration", None, "expiration"),
        ("price_tao_per_mbyte", -0.5, "price_tao_per_mbyte"),
        ("price_tao_per_mbyte", 1e9, "price_tao_per_mbyte"),
        ("price_tao_per_mbyte", "5", "price_tao_per_mbyte"),
        ("v", 2, "version"),
        ("extra", 1, "unknown keys"),
    ],
)
def test_bad_fields_are_rejected(field: str, value, reason: str):
    """Each field with a wrong type, range or format is rejected with a reason naming it."""
    payload = make_record().payload()
    payload[field] = value
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(MalformedRecord, match=reason):
        ExpertRecord.from_dht_value(raw_signed(A, body))


def test_model_with_extra_or_bad_keys_rejected():
    """The model summary must hold exactly the known positive-integer fields, with vocab_size >= 256."""
    for model in [
        dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=255, params=1),
        dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=256, params=1, dropout=0.1),
        dict(d_model=0, n_layers=2, n_heads=4, d_ff=256, vocab_size=256, params=1),
    ]:
        with pytest.raises(MalformedRecord):
            make_record(model=model).to_dht_value(A)
