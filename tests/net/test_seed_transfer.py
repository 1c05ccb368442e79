"""Tests for moe/net/seed_transfer.py: publishing the seed, fetching it peer to peer, refusing tampered bytes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random

import pytest
from hivemind.p2p import P2PHandlerError, PeerID
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time

from moe.identity import Hotkey
from moe.net.join import start_bootstrap_dht
from moe.net.seed_transfer import (
    HANDLER_NAME,
    SEED_KEY,
    SeedError,
    SeedPublisher,
    SeedRecord,
    SeedServer,
    announce_seed,
    fetch_seed,
    find_seed_records,
)
from moe.net.signed import MalformedRecord

PUBLISHER = Hotkey.from_seed(bytes([21]) * 32)
MALLORY = Hotkey.from_seed(bytes([22]) * 32)


@pytest.fixture
def pair(fresh_pair):
    """Two fresh joined DHT peers (publisher, fetcher); fresh per test because the seed key is global."""
    return fresh_pair


@pytest.fixture
def blob() -> bytes:
    """2.5 chunks of seeded random bytes, so the last chunk is partial."""
    return random.Random(0).randbytes(2 * 4096 + 1234)


class LyingSeedServer(SeedServer):
    """A real seed server that answers requests for one hash with other bytes."""

    def add_under(self, sha256: str, served: bytes) -> None:
        self._blobs[sha256] = served


def serve_with_claim(dht, hotkey: Hotkey, served: bytes, claimed: bytes) -> SeedServer:
    """A dishonest publisher: announces `claimed`'s hash and size but serves `served`."""
    server = LyingSeedServer(dht)
    sha = hashlib.sha256(claimed).hexdigest()
    server.add_under(sha, served)
    record = SeedRecord(hotkey.address, sha, len(claimed), server.peer_id, chunk_bytes=4096)
    assert announce_seed(dht, record, hotkey, ttl=30)
    return server


def test_publish_and_fetch(pair, blob):
    """The fetched seed equals the published bytes across several chunks."""
    a, b = pair
    with SeedPublisher(a, PUBLISHER, blob, interval=5, ttl=30, chunk_bytes=4096):
        assert fetch_seed(b, expected_publisher=PUBLISHER.address, timeout=20) == blob
        assert fetch_seed(b, expected_sha256=hashlib.sha256(blob).hexdigest(), timeout=20) == blob


def test_tampered_bytes_are_rejected(pair, blob):
    """A peer serving bytes that differ from its signed hash is refused with a verification error."""
    a, b = pair
    tampered = bytearray(blob)
    tampered[5000] ^= 0xFF
    server = serve_with_claim(a, MALLORY, bytes(tampered), claimed=blob)
    try:
        with pytest.raises(SeedError, match="fail verification"):
            fetch_seed(b, expected_publisher=MALLORY.address, timeout=20)
    finally:
        server.shutdown()


def test_truncated_bytes_are_rejected(pair, blob):
    """A peer serving fewer bytes than it announced is refused."""
    a, b = pair
    server = serve_with_claim(a, MALLORY, blob[:-100], claimed=blob)
    try:
        with pytest.raises(SeedError, match=MALLORY.address[:16]):
            fetch_seed(b, timeout=20)
    finally:
        server.shutdown()


def test_conflicting_publishers_need_a_choice(pair, blob):
    """Two publishers with different seeds make an unqualified fetch fail; naming the publisher resolves it."""
    a, b = pair
    other = blob[::-1]
    with SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096), SeedPublisher(b, MALLORY, other, chunk_bytes=4096):
        with pytest.raises(SeedError, match="conflicting"):
            fetch_seed(b, timeout=20)
        assert fetch_seed(b, expected_publisher=PUBLISHER.address, timeout=20) == blob
        assert fetch_seed(a, expected_publisher=MALLORY.address, timeout=20) == other


def test_a_second_seed_by_another_hotkey_is_ignored_when_the_seed_is_pinned(pair, blob, caplog):
    """Fetching the pinned sha256 loads exactly the pinned seed although another hotkey announced a different one,
    which is logged and never downloaded; with only that other seed around, the fetch fails instead of loading it."""
    a, b = pair
    pinned, forged = hashlib.sha256(blob).hexdigest(), blob[::-1]
    with SeedPublisher(b, MALLORY, forged, chunk_bytes=4096):
        with pytest.raises(SeedError, match="no valid seed record"):
            fetch_seed(a, expected_sha256=pinned, timeout=5)
        with SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096):
            with caplog.at_level(logging.WARNING, logger="moe.net.seed_transfer"):
                assert fetch_seed(b, expected_sha256=pinned, timeout=20) == blob
    forged_sha = hashlib.sha256(forged).hexdigest()
    assert f"ignoring seed {forged_sha[:12]} announced by {MALLORY.address[:16]}: not the pinned seed" in caplog.text


def test_missing_seed_and_unknown_publisher(pair, blob):
    """Without a matching record, fetch_seed fails at once with a clear message."""
    a, b = pair
    with pytest.raises(SeedError, match="no valid seed record"):
        fetch_seed(b, timeout=5)
    with SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096):
        with pytest.raises(SeedError, match="no valid seed record"):
            fetch_seed(b, expected_publisher=MALLORY.address, timeout=5)


def test_publisher_gone_fails_within_timeout(pair, blob):
    """If the publisher stops serving but its record lingers, the fetch fails with a SeedError, not a hang."""
    a, b = pair
    publisher = SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096)
    publisher.stop()  # handler removed; record still valid for its ttl
    assert find_seed_records(b)
    with pytest.raises(SeedError, match=PUBLISHER.address[:16]):
        fetch_seed(b, timeout=5)


def test_malformed_seed_records_are_refused(pair, blob):
    """Guarded peers refuse garbage under the seed key (readers skip any that slip in); the honest record is still
    used."""
    a, b = pair
    assert not a.store(SEED_KEY, b"junk", get_dht_time() + 30, subkey="junk-subkey")
    assert not a.store(SEED_KEY, b"junk", get_dht_time() + 30)
    with SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096):
        assert fetch_seed(b, timeout=20) == blob


def test_bad_chunk_requests_get_errors_and_server_survives(pair, blob):
    """Malformed or out-of-range chunk requests are answered with errors and the seed is still served after."""
    a, b = pair

    async def probe(peer: PeerID, sha: str) -> list[str]:
        p2p = await b.replicate_p2p()
        errors = []
        for uid, metadata in [
            (sha, b"not json"),
            (sha, b'{"offset":-1,"length":10}'),
            (sha, b'{"offset":0,"length":999999999}'),
            ("0" * 64, b'{"offset":0,"length":10}'),
        ]:
            request = runtime_pb2.ExpertRequest(uid=uid, metadata=metadata)
            try:
                await p2p.call_protobuf_handler(peer, HANDLER_NAME, request, runtime_pb2.ExpertResponse)
            except P2PHandlerError as e:
                errors.append(str(e))
        return errors

    with SeedPublisher(a, PUBLISHER, blob, chunk_bytes=4096) as publisher:
        errors = asyncio.run(probe(PeerID.from_base58(publisher.record.peer_id), publisher.record.sha256))
        assert len(errors) == 4
        assert fetch_seed(b, timeout=20) == blob


def test_empty_seed_is_refused():
    """Publishing zero bytes is refused before anything is announced."""
    a = start_bootstrap_dht()
    try:
        with pytest.raises(MalformedRecord, match="size"):
            SeedPublisher(a, PUBLISHER, b"")
    finally:
        a.shutdown()
