"""Tests for moe/net/dht_records.py: the DHT-level signed-record guard, reading a key's signed entries, and
publishing/reading signed payloads over a real pair of loopback DHT peers."""

from __future__ import annotations

import itertools
import logging

import pytest
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, ValueWithExpiration, get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import SignedRecordValidator, open_entries, publish_signed, read_signed
from moe.net.signed import MalformedRecord, SignedValue

A = Hotkey.from_seed(bytes([1]) * 32)
B = Hotkey.from_seed(bytes([2]) * 32)
C = Hotkey.from_seed(bytes([3]) * 32)

_key = itertools.count()


@pytest.fixture
def key() -> str:
    """A fresh DHT key per test, so tests sharing the module's DHT pair never see each other's records."""
    return f"test/dht_records/{next(_key)}"


def dht_record(subkey, value: bytes, expiration: float) -> DHTRecord:
    return DHTRecord(b"key-id", MSGPackSerializer.dumps(subkey), MSGPackSerializer.dumps(value), expiration)


def test_dht_validator_accepts_owner_and_refuses_forgeries():
    """The DHT-level validator accepts a record under its signer's subkey and refuses other subkeys or garbage."""
    v = SignedRecordValidator()
    raw = SignedValue.sign(A, {"expiration": 500.0, "uid": 3}, context="expert")
    assert v.validate(dht_record(A.address, raw, 500.0))
    assert not v.validate(dht_record(B.address, raw, 500.0))
    assert not v.validate(dht_record(A.address, b"garbage", 500.0))
    assert not v.validate(dht_record(A.address, raw, 10_000.0)), "outliving the signed expiration"
    assert v.validate(dht_record("some-other-app-subkey", b"anything", 1.0)), "foreign subkeys are not ours"


def test_dht_validator_allows_clock_slack_and_values_without_expiration():
    """A DHT expiration within EXPIRATION_SLACK of the signed one is accepted, and so is any expiration of a signed
    payload that states none."""
    v = SignedRecordValidator()
    raw = SignedValue.sign(A, {"expiration": 500.0}, context="expert")
    assert v.validate(dht_record(A.address, raw, 500.5))
    assert v.validate(dht_record(A.address, SignedValue.sign(A, {"n": 1}), 10_000.0))


def parse(raw) -> tuple[str, int]:
    """One entry of the open_entries tests: its signer and the count it carries."""
    signer, payload = SignedValue.open(raw, context="count")
    if not isinstance(payload.get("n"), int):
        raise MalformedRecord("n must be an integer")
    return signer, payload["n"]


def test_open_entries_keeps_good_entries_and_logs_each_bad_one(caplog):
    """open_entries keeps entries filed under their signer (bare or with expiration) and logs and skips entries
    filed under another subkey, unparseable ones, and ones whose parse raises MalformedRecord."""
    entries = {
        A.address: ValueWithExpiration(SignedValue.sign(A, {"n": 1}, context="count"), 1e12),
        B.address: SignedValue.sign(B, {"n": 2}, context="count"),  # a bare value, not wrapped
        C.address: SignedValue.sign(A, {"n": 3}, context="count"),  # A's value filed under C
        "garbage-subkey": ValueWithExpiration(b"garbage", 1e12),
        "wrong-schema": SignedValue.sign(C, {"n": "three"}, context="count"),
        "wrong-context": SignedValue.sign(C, {"n": 4}, context="other"),
    }
    with caplog.at_level(logging.WARNING, logger="moe.net.dht_records"):
        assert open_entries("some/key", entries, parse) == {A.address: 1, B.address: 2}
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 4 and all(m.startswith("some/key: skipping entry") for m in skipped)
    for subkey, reason in [
        (C.address[:16], "signed by " + A.address[:16]),
        ("garbage-subkey", "not a hivemoe signed value"),
        ("wrong-schema", "n must be an integer"),
        ("wrong-context", "context"),
    ]:
        assert any(subkey in m and reason in m for m in skipped), (subkey, skipped)


@pytest.mark.parametrize("value", [b"raw bytes", 42, ["a", "list"], "text"])
def test_open_entries_reads_a_non_dictionary_value_as_empty(value, caplog):
    """A key holding anything but a subkey dictionary reads as empty, with a warning naming the key."""
    with caplog.at_level(logging.WARNING, logger="moe.net.dht_records"):
        assert open_entries("some/key", value, parse) == {}
    assert "some/key" in caplog.text and "not a subkey dictionary" in caplog.text


def test_open_entries_of_a_missing_key_is_empty_and_silent(caplog):
    """A key with nothing stored (None) reads as empty without a warning."""
    with caplog.at_level(logging.WARNING, logger="moe.net.dht_records"):
        assert open_entries("some/key", None, parse) == {}
    assert not caplog.records


def test_publish_signed_round_trips_to_another_peer(module_pair, key):
    """A payload one peer publishes is read back by the other, under its signer, with the signed expiration."""
    a, b = module_pair
    assert publish_signed(a, key, A, {"n": 7, "name": "x"}, "count", ttl=30)
    got = read_signed(b, key, "count")
    assert set(got) == {A.address}
    payload = got[A.address]
    assert {k: v for k, v in payload.items() if k != "expiration"} == {"n": 7, "name": "x"}
    assert payload["expiration"] > get_dht_time()


def test_read_signed_skips_values_of_another_context(module_pair, key):
    """Under one key, read_signed returns only the values signed for the context asked for."""
    a, b = module_pair
    assert publish_signed(a, key, A, {"n": 1}, "count", ttl=30)
    assert publish_signed(b, key, B, {"n": 2}, "other", ttl=30)
    assert {k: v["n"] for k, v in read_signed(b, key, "count").items()} == {A.address: 1}
    assert {k: v["n"] for k, v in read_signed(a, key, "other").items()} == {B.address: 2}
    assert read_signed(a, key, "third") == {}


def test_read_signed_of_an_empty_key_is_empty(module_pair, key):
    """Reading a key nobody stored under gives an empty dictionary."""
    assert read_signed(module_pair[1], key, "count") == {}


def test_real_dht_refuses_a_value_under_another_signers_subkey(module_pair, key):
    """Peers running SignedRecordValidator refuse to store a value filed under a subkey that is not its signer."""
    a, b = module_pair
    forged = SignedValue.sign(A, {"n": 1, "expiration": get_dht_time() + 30}, context="count")
    assert not a.store(key, forged, expiration_time=get_dht_time() + 30, subkey=B.address)
    assert read_signed(b, key, "count") == {}
