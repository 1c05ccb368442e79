"""Tests for moe/net/dht_records.py: the DHT-level signed-record guard, reading a key's signed entries, and
publishing/reading signed payloads over a real pair of loopback DHT peers."""

from __future__ import annotations

import itertools
import logging

import pytest
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, ValueWithExpiration, get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import (
    CAP_STEP,
    CLOCK_SKEW,
    EXPERTS_RULE,
    HEAD_KEY,
    KEY_RULES,
    MAX_NETUID,
    SignedRecordValidator,
    check_entry,
    dht_id,
    experts_key,
    expiration_cap,
    open_entries,
    publish_signed,
    read_signed,
)
from moe.net.signed import MalformedRecord, SignedValue

A = Hotkey.from_seed(bytes([1]) * 32)
B = Hotkey.from_seed(bytes([2]) * 32)
C = Hotkey.from_seed(bytes([3]) * 32)

_key = itertools.count()


@pytest.fixture
def key() -> str:
    """A fresh DHT key per test, so tests sharing the module's DHT pair never see each other's records."""
    return f"test/dht_records/{next(_key)}"


def dht_record(subkey, value: bytes, expiration: float, key: str | None = None) -> DHTRecord:
    """A record as hivemind hands it to validators: `key` as its DHT id (a foreign one when None)."""
    key_id = b"key-id" if key is None else dht_id(key)
    return DHTRecord(key_id, MSGPackSerializer.dumps(subkey), MSGPackSerializer.dumps(value), expiration)


HIVEMOE_KEYS = {**KEY_RULES, experts_key(0): EXPERTS_RULE, experts_key(MAX_NETUID): EXPERTS_RULE}
PLAIN = None
"""The subkey hivemind's validators see for a plain (non-dictionary) value."""


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


@pytest.mark.parametrize("key", sorted(HIVEMOE_KEYS))
def test_validator_accepts_only_signed_entries_of_the_keys_own_context(key):
    """Under every hivemoe key the validator accepts an entry signed for the key's context by the hotkey in its
    subkey, and refuses plain values, non-address subkeys, other contexts and other signers."""
    v, rule, now = SignedRecordValidator(), HIVEMOE_KEYS[key], get_dht_time()
    raw = SignedValue.sign(A, {"expiration": now + 30}, context=rule.context)
    assert v.validate(dht_record(A.address, raw, now + 30, key))
    assert not v.validate(dht_record(PLAIN, raw, now + 30, key)), "a plain value would replace the dictionary"
    assert not v.validate(dht_record(PLAIN, b"junk", now + 30, key))
    assert not v.validate(dht_record("mallory", raw, now + 30, key))
    assert not v.validate(dht_record(B.address, raw, now + 30, key))
    other = SignedValue.sign(A, {"expiration": now + 30}, context="some-other-context")
    assert not v.validate(dht_record(A.address, other, now + 30, key))
    bare = SignedValue.sign(A, {"n": 1}, context=rule.context)
    assert not v.validate(dht_record(A.address, bare, now + 30, key)), "no signed expiration"


@pytest.mark.parametrize("key", sorted(HIVEMOE_KEYS))
def test_validator_caps_expiration_at_the_keys_maximum_ttl(key):
    """An entry living the key's maximum TTL is accepted; one expiring after the cap, by its DHT expiration or by
    its signed one, or at a NaN DHT expiration, is refused."""
    v, rule, now = SignedRecordValidator(), HIVEMOE_KEYS[key], get_dht_time()
    longest = now + rule.max_ttl
    assert v.validate(dht_record(A.address, SignedValue.sign(A, {"expiration": longest}, rule.context), longest, key))
    beyond = expiration_cap(rule, now + 1.0) + 1.0
    signed_beyond = SignedValue.sign(A, {"expiration": beyond}, context=rule.context)
    assert not v.validate(dht_record(A.address, signed_beyond, beyond, key))
    assert not v.validate(dht_record(A.address, signed_beyond, now + 30, key)), "the signed expiration too"
    assert not v.validate(dht_record(A.address, signed_beyond, float("nan"), key))


def test_expiration_cap_is_the_same_within_a_step():
    """The cap moves in CAP_STEP jumps, so peers whose clocks differ by less than a step agree on it most of the
    time; it always lies at least max_ttl + CLOCK_SKEW ahead."""
    start = 1_000 * CAP_STEP
    caps = {expiration_cap(EXPERTS_RULE, start + dt) for dt in (0.5, 1.0, CAP_STEP / 2, CAP_STEP - 0.5)}
    assert caps == {start + CAP_STEP + EXPERTS_RULE.max_ttl + CLOCK_SKEW}
    assert expiration_cap(EXPERTS_RULE, start) == start + EXPERTS_RULE.max_ttl + CLOCK_SKEW


def test_check_entry_names_the_reason():
    """check_entry raises MalformedRecord with a one-line reason naming what is wrong."""
    now = get_dht_time()
    rule = KEY_RULES[HEAD_KEY]
    with pytest.raises(MalformedRecord, match="not a hotkey address"):
        check_entry(dht_record(PLAIN, b"junk", now + 30, HEAD_KEY), rule, now)
    raw = SignedValue.sign(A, {"expiration": now + 30}, context="ledger-inbox")
    with pytest.raises(MalformedRecord, match="context 'ledger-inbox' under a key of 'ledger-head'"):
        check_entry(dht_record(A.address, raw, now + 30, HEAD_KEY), rule, now)


@pytest.mark.parametrize("key", [HEAD_KEY, experts_key(5)])
def test_publish_signed_refuses_a_ttl_beyond_the_keys_maximum(module_pair, key):
    """publish_signed raises ValueError naming the key rather than publishing entries every peer would refuse."""
    with pytest.raises(ValueError, match=key):
        publish_signed(module_pair[0], key, A, {"n": 1}, "ledger-head", ttl=10 * 365 * 86400.0)


@pytest.mark.parametrize("key", sorted(set(HIVEMOE_KEYS) - {experts_key(MAX_NETUID)}))
def test_guarded_peers_refuse_junk_on_hivemoe_keys(module_pair, key):
    """Through real guarded peers (their own local store included): a plain value, an entry beyond the key's cap
    and an entry of another context are all refused, and an honest entry still lands and is read back."""
    a, b = module_pair
    rule, now = HIVEMOE_KEYS[key], get_dht_time()
    ten_years = now + 10 * 365 * 86400.0
    assert not a.store(key, b"junk", expiration_time=ten_years)
    assert not b.store(key, b"junk", expiration_time=ten_years)
    far = SignedValue.sign(C, {"expiration": ten_years}, context=rule.context)
    assert not a.store(key, far, expiration_time=ten_years, subkey=C.address)
    other = SignedValue.sign(C, {"expiration": now + 30}, context="some-other-context")
    assert not a.store(key, other, expiration_time=now + 30, subkey=C.address)
    assert publish_signed(a, key, B, {"n": 1}, rule.context, ttl=30)
    assert set(read_signed(b, key, rule.context)) == {B.address}
