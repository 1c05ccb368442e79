"""Attacks on every hivemoe DHT key through real loopback peers: a plain value that would replace a key's whole
subkey dictionary (the "blackout"), a signed entry living for years, an entry of another key's context, and a signed
body whose numbers overflow the reader's JSON encoder.

Two guarded peers (`module_pair`, running SignedRecordValidator) and one unguarded attacker peer (`mallory`, a bare
hivemind.DHT that stores anything and serves it back to readers) share each module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import hivemind
import pytest
from hivemind.utils import get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import publish_signed, read_signed
from moe.net.discovery import announce, discover, experts_key
from moe.net.expert_record import EXPERT_CONTEXT, ExpertRecord
from moe.net.join import visible_maddrs
from moe.net.ledger_client import (
    COMMIT_CONTEXT,
    COMMITS_KEY,
    HEAD_CONTEXT,
    HEAD_KEY,
    INBOX_CONTEXT,
    INBOX_KEY,
    WEIGHTS_CONTEXT,
    WEIGHTS_KEY,
    read_head,
)
from moe.net.seed_transfer import SEED_CONTEXT, SEED_KEY, SeedRecord, announce_seed, find_seed_records
from moe.net.signed import MAGIC, SignedValue

HONEST = Hotkey.from_seed(bytes([31]) * 32)
EVE = Hotkey.from_seed(bytes([32]) * 32)
PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
NETUID = 77
TEN_YEARS = 10 * 365 * 86400.0


@pytest.fixture(scope="module")
def mallory(module_pair):
    """An attacker's peer without hivemoe's validator, joined to the guarded pair; shut down after the module."""
    dht = hivemind.DHT(initial_peers=visible_maddrs(module_pair[0]), host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    yield dht
    dht.shutdown()


@pytest.fixture(scope="module")
def lone_reader():
    """A bare hivemind.DHT with no peers and no validator: a reader that trusts its own storage."""
    dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    yield dht
    dht.shutdown()


@dataclass
class Target:
    """One hivemoe key, with the honest way to publish version `n` of HONEST's record and to read back
    {signer: version} as readers see it."""

    key: str
    context: str
    publish: Callable[[hivemind.DHT, int], bool]
    read: Callable[[hivemind.DHT], dict[str, int]]


def expert_record(n: int) -> ExpertRecord:
    model = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=256, params=5000)
    return ExpertRecord(0, HONEST.address, "code", NETUID, PEER_ID, model, n, signature_centroid=[0.5] * 4)


def seed_record(n: int) -> SeedRecord:
    return SeedRecord(HONEST.address, "ab" * 32, 1000 + n, PEER_ID)


def signed_target(key: str, context: str) -> Target:
    """A ledger key, published and read the generic way (publish_signed / read_signed)."""
    return Target(
        key,
        context,
        lambda dht, n: publish_signed(dht, key, HONEST, {"n": n}, context, ttl=30),
        lambda dht: {signer: payload["n"] for signer, payload in read_signed(dht, key, context).items()},
    )


TARGETS = {
    "experts": Target(
        experts_key(NETUID),
        EXPERT_CONTEXT,
        lambda dht, n: announce(dht, expert_record(n), HONEST, ttl=30),
        lambda dht: {r.hotkey: r.train_step for r in discover(dht, [NETUID])},
    ),
    "seed": Target(
        SEED_KEY,
        SEED_CONTEXT,
        lambda dht, n: announce_seed(dht, seed_record(n), HONEST, ttl=30),
        lambda dht: {r.publisher: r.size - 1000 for r in find_seed_records(dht)},
    ),
    "head": signed_target(HEAD_KEY, HEAD_CONTEXT),
    "inbox": signed_target(INBOX_KEY, INBOX_CONTEXT),
    "weights": signed_target(WEIGHTS_KEY, WEIGHTS_CONTEXT),
    "commits": signed_target(COMMITS_KEY, COMMIT_CONTEXT),
}


@pytest.fixture(params=sorted(TARGETS))
def target(request) -> Target:
    return TARGETS[request.param]


def test_plain_value_cannot_black_out_a_key(module_pair, mallory, target):
    """Plain (non-subkey) junk stored under a hivemoe key with a ten-year expiration, by an unguarded peer and
    through a guarded one, neither replaces the key's subkey dictionary nor stops the honest heartbeat after it:
    readers see the heartbeat's new version.

    (Return values of stores are not asserted here: hivemind reports the answer of whichever peer replied last, and
    mallory refuses honest entries; test_dht_records checks what guarded peers answer.)"""
    a, b = module_pair
    assert target.publish(a, 1)
    junk_expiration = get_dht_time() + TEN_YEARS
    mallory.store(target.key, b"junk", expiration_time=junk_expiration)
    a.store(target.key, b"junk", expiration_time=junk_expiration)
    b.store(target.key, {"a": "dict"}, expiration_time=junk_expiration)
    target.publish(a, 2)  # the heartbeat after the attack
    assert target.read(b) == {HONEST.address: 2}
    assert target.read(a) == {HONEST.address: 2}


def test_signed_entry_beyond_the_key_cap_is_refused(module_pair, mallory, target):
    """A correctly signed entry of the key's own context under its signer's own subkey that would live ten years
    is refused by every guarded peer and by readers fetching it from the unguarded one: nobody sees it."""
    a, b = module_pair
    expiration = get_dht_time() + TEN_YEARS
    value = SignedValue.sign(EVE, {"expiration": expiration}, context=target.context)
    for dht in (mallory, a):
        dht.store(target.key, value, expiration_time=expiration, subkey=EVE.address)
    assert EVE.address not in read_signed(b, target.key, target.context)


def test_entry_of_another_context_or_subkey_is_refused(module_pair, mallory, target):
    """A signed entry of another key's context, or junk under a non-address subkey, stored through a guarded peer
    and an unguarded one, is seen by no guarded reader."""
    a, b = module_pair
    assert target.publish(a, 3)
    expiration = get_dht_time() + 30
    other = "some-other-context" if target.context == HEAD_CONTEXT else HEAD_CONTEXT
    value = SignedValue.sign(EVE, {"expiration": expiration}, context=other)
    for dht in (mallory, a):
        dht.store(target.key, value, expiration_time=expiration, subkey=EVE.address)
        dht.store(target.key, b"junk", expiration_time=expiration, subkey="mallory")
    found = b.get(target.key, latest=True)
    assert found is not None and isinstance(found.value, dict) and HONEST.address in found.value
    assert EVE.address not in found.value and "mallory" not in found.value


def signed_body(hotkey: Hotkey, body: bytes, context: str) -> bytes:
    """A correctly signed value whose JSON body is exactly `body`, bypassing SignedValue.sign's encoder."""
    signed = bytes([len(context)]) + context.encode() + body
    return MAGIC + hotkey.public_bytes + hotkey.sign(signed) + signed


@pytest.mark.parametrize("body", [b'{"height":1e400}', b'{"height":-1e400}', b'{"height":Infinity}', b'{"h":NaN}'])
def test_overflowing_number_cannot_crash_readers(lone_reader, body, caplog):
    """A reader without the DHT guard that meets a signed head whose body holds 1e400 (or NaN/Infinity) logs and
    skips it: read_signed returns nothing and read_head None, instead of raising."""
    expiration = get_dht_time() + 30
    value = signed_body(EVE, body, HEAD_CONTEXT)
    assert lone_reader.store(HEAD_KEY, value, expiration_time=expiration, subkey=EVE.address)
    with caplog.at_level(logging.WARNING, logger="moe.net.dht_records"):
        assert read_signed(lone_reader, HEAD_KEY, HEAD_CONTEXT) == {}
        assert read_head(lone_reader, EVE.address) is None
    assert f"skipping entry {EVE.address[:16]}" in caplog.text
