"""The shared seed checkpoint (Branch-Train-Merge: every expert starts from the same weights), spread peer to peer.

The publisher stores a signed `SeedRecord` (sha256, size, its peer id) under `hivemoe/seed`, subkey = its hotkey,
and serves the bytes in chunks over hivemind P2P (a unary protobuf handler, one request per chunk). A fetcher reads
the records, downloads from the publisher with a deadline, and accepts the bytes only if size and sha256 match the
signed record: a peer serving tampered bytes is rejected with a `SeedError`, never loaded. Any hotkey may announce a
seed, so in a ledger network the fetcher asks for the sha256 the ledger host pins in its signed head
(`moe.net.ledger_client.pinned_seed_sha256`) and every other announced seed is ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

import hivemind
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import SEED_CONTEXT, SEED_KEY, check_ttl, open_entries
from moe.net.loop import PeriodicThread
from moe.net.signed import (
    MalformedRecord,
    canonical_json,
    check_address,
    check_float,
    check_int,
    check_name,
    check_peer_id,
    open_record,
    sign_record,
)

logger = logging.getLogger(__name__)

HANDLER_NAME = "hivemoe.seed.chunk"
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 2 << 20
"""Largest chunk a record may announce; hivemind's persistent connections cap one message at 4 MiB."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SeedError(RuntimeError):
    """No verified seed could be obtained; the message says which publisher failed and why."""


@dataclass
class SeedRecord:
    """Signed announcement of a seed checkpoint and where to download it."""

    publisher: str
    """Hex hotkey address of the publisher (also the DHT subkey)."""
    sha256: str
    """Hex sha256 of the exact bytes served."""
    size: int
    """Length of the blob in bytes."""
    peer_id: str
    """Base58 peer id serving the chunks."""
    chunk_bytes: int = CHUNK_BYTES
    """Bytes per chunk request."""
    name: str = "seed"
    """Human label, e.g. the model config name."""
    expiration: float = 0.0
    """DHT time after which the record is stale."""

    def to_dht_value(self, hotkey: Hotkey) -> bytes:
        return sign_record(hotkey, dataclasses.asdict(self), SEED_CONTEXT, self.publisher, validate_seed_payload)

    @classmethod
    def from_dht_value(cls, raw: Any) -> SeedRecord:
        """Open and validate; raises MalformedRecord with a one-line reason."""
        return open_record(raw, SEED_CONTEXT, validate_seed_payload, lambda r: r.publisher)


def validate_seed_payload(d: Any) -> SeedRecord:
    if not isinstance(d, dict) or sorted(d) != sorted(SeedRecord.__dataclass_fields__):
        raise MalformedRecord(f"seed record must have exactly the keys {sorted(SeedRecord.__dataclass_fields__)}")
    if not isinstance(d["sha256"], str) or not _SHA256.fullmatch(d["sha256"]):
        raise MalformedRecord("sha256 must be 64 lowercase hex characters")
    return SeedRecord(
        publisher=check_address("publisher", d["publisher"]),
        sha256=d["sha256"],
        size=check_int("size", d["size"], 1, 1 << 40),
        peer_id=check_peer_id("peer_id", d["peer_id"]),
        chunk_bytes=check_int("chunk_bytes", d["chunk_bytes"], 1024, MAX_CHUNK_BYTES),
        name=check_name("name", d["name"]),
        expiration=check_float("expiration", d["expiration"], 0.0, 1e13),
    )


async def _daemon_maddr(_dht: hivemind.DHT, node) -> Any:
    return node.p2p.daemon_listen_maddr


class SeedServer:
    """Serves registered blobs chunk by chunk from this process over the DHT's own p2p daemon.

    It runs its own asyncio loop in a daemon thread, so training code can keep the main thread. Requests for an
    unknown sha256 or an out-of-range offset get an error reply; the server keeps running. One server per DHT
    (the handler name is fixed): `add` more blobs to serve several.
    """

    def __init__(self, dht: hivemind.DHT, start_timeout: float = 15.0):
        self.dht = dht
        self._blobs: dict[str, bytes] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hivemoe-seed-server", daemon=True)
        self._thread.start()
        self._p2p: P2P | None = None
        try:
            self._call(self._start(dht.run_coroutine(_daemon_maddr)), start_timeout)
        except BaseException:
            self.shutdown()
            raise
        self.peer_id: str = self._p2p.peer_id.to_base58()

    def _call(self, coro, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, daemon_maddr: Any) -> None:
        self._p2p = await P2P.replicate(daemon_maddr)
        await self._p2p.add_protobuf_handler(HANDLER_NAME, self._serve, runtime_pb2.ExpertRequest)

    def add(self, blob: bytes) -> str:
        """Register bytes to serve; returns their sha256 hex."""
        sha = hashlib.sha256(blob).hexdigest()
        self._blobs[sha] = bytes(blob)
        return sha

    async def _serve(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        blob = self._blobs.get(request.uid)
        try:
            ask = json.loads(request.metadata)
            offset, length = int(ask["offset"]), int(ask["length"])
        except (ValueError, KeyError, TypeError):
            raise ValueError("bad seed chunk request") from None
        if blob is None or not 0 <= offset < len(blob) or not 0 < length <= MAX_CHUNK_BYTES:
            raise ValueError("no such seed chunk")
        return runtime_pb2.ExpertResponse(metadata=blob[offset : offset + length])

    def shutdown(self) -> None:
        async def _stop() -> None:
            if self._p2p is not None:
                try:
                    await self._p2p.remove_protobuf_handler(HANDLER_NAME)
                except Exception as e:  # the daemon may be gone already
                    logger.debug("removing seed handler: %s", e)
                await self._p2p.shutdown()

        if self._loop.is_running():
            try:
                self._call(_stop(), 10.0)
            except Exception as e:
                logger.debug("seed server shutdown: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


def announce_seed(dht: hivemind.DHT, record: SeedRecord, hotkey: Hotkey, ttl: float) -> bool:
    """Store a signed seed record expiring at now+ttl; False if no peer accepted it, ValueError if `ttl` exceeds the
    seed key's maximum (`moe.net.dht_records.KEY_RULES`)."""
    check_ttl(SEED_KEY, ttl)
    record = dataclasses.replace(record, expiration=get_dht_time() + ttl)
    value = record.to_dht_value(hotkey)
    return bool(dht.store(SEED_KEY, value, expiration_time=record.expiration, subkey=hotkey.address))


class SeedPublisher(PeriodicThread):
    """Serve `blob` and keep its signed record in the DHT (re-announced every `interval` seconds) until `stop()`."""

    def __init__(
        self,
        dht: hivemind.DHT,
        hotkey: Hotkey,
        blob: bytes,
        name: str = "seed",
        interval: float = 60.0,
        ttl: float = 180.0,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        super().__init__("hivemoe-seed-publisher", interval)
        self.dht, self.hotkey, self.ttl = dht, hotkey, ttl
        self.server = SeedServer(dht)
        try:
            sha = self.server.add(blob)
            self.record = SeedRecord(hotkey.address, sha, len(blob), self.server.peer_id, chunk_bytes, name)
            validate_seed_payload(dataclasses.asdict(self.record))  # bad name/chunk_bytes/empty blob: fail here
            if not announce_seed(dht, self.record, hotkey, ttl):
                logger.warning("seed record %s was not stored by any peer yet", sha[:16])
        except BaseException:
            self.server.shutdown()
            raise

    def step(self) -> None:
        announce_seed(self.dht, self.record, self.hotkey, self.ttl)

    def stop(self, timeout: float | None = 10.0) -> None:
        super().stop(timeout)
        self.server.shutdown()


def find_seed_records(
    dht: hivemind.DHT, expected_publisher: str | None = None, expected_sha256: str | None = None
) -> list[SeedRecord]:
    """Valid, unexpired seed records matching the expectations; malformed ones, and ones announcing a seed other
    than `expected_sha256`, are logged and skipped."""
    found = dht.get(SEED_KEY, latest=True)
    now = get_dht_time()

    def parse(raw: Any) -> tuple[str, SeedRecord]:
        record = SeedRecord.from_dht_value(raw)
        if record.expiration < now:
            raise MalformedRecord("seed record expired")
        return record.publisher, record

    records = []
    for record in open_entries(SEED_KEY, None if found is None else found.value, parse).values():
        if expected_publisher is not None and record.publisher != expected_publisher:
            continue
        if expected_sha256 is not None and record.sha256 != expected_sha256:
            logger.warning(
                "ignoring seed %s announced by %s: not the pinned seed %s",
                record.sha256[:12],
                record.publisher[:16],
                expected_sha256[:12],
            )
            continue
        records.append(record)
    return records


async def _download(daemon_maddr: Any, record: SeedRecord, timeout: float, parallel: int) -> bytes:
    p2p = await P2P.replicate(daemon_maddr)
    try:
        peer = PeerID.from_base58(record.peer_id)
        offsets = list(range(0, record.size, record.chunk_bytes))
        chunks: dict[int, bytes] = {}
        gate = asyncio.Semaphore(parallel)

        async def fetch(offset: int) -> None:
            length = min(record.chunk_bytes, record.size - offset)
            ask = runtime_pb2.ExpertRequest(
                uid=record.sha256, metadata=canonical_json(dict(offset=offset, length=length))
            )
            async with gate:
                reply = await p2p.call_protobuf_handler(peer, HANDLER_NAME, ask, runtime_pb2.ExpertResponse)
            if len(reply.metadata) != length:
                raise SeedError(f"chunk at offset {offset} has {len(reply.metadata)} bytes, expected {length}")
            chunks[offset] = reply.metadata

        await asyncio.wait_for(asyncio.gather(*(fetch(o) for o in offsets)), timeout)
        return b"".join(chunks[o] for o in offsets)
    finally:
        await p2p.shutdown()


def fetch_seed(
    dht: hivemind.DHT,
    expected_publisher: str | None = None,
    expected_sha256: str | None = None,
    timeout: float = 60.0,
    max_bytes: int = 4 << 30,
    parallel: int = 4,
) -> bytes:
    """Download the seed and return its bytes, verified against the signed record's size and sha256.

    With `expected_sha256` (the pinned seed), only bytes hashing to it are ever returned; records of other seeds
    are logged and ignored. Without `expected_publisher`/`expected_sha256`, all valid records must agree on one
    sha256 (several publishers may serve it; they are tried in turn); disagreement is a SeedError, since we cannot
    tell which seed is honest. Raises SeedError naming each publisher tried and why it failed (timeout, tampered
    bytes, oversize).
    """
    records = find_seed_records(dht, expected_publisher, expected_sha256)
    if not records:
        raise SeedError(f"no valid seed record in the DHT (publisher={expected_publisher}, sha256={expected_sha256})")
    shas = sorted({r.sha256 for r in records})
    if len(shas) > 1:
        raise SeedError(
            f"{len(shas)} conflicting seeds published ({', '.join(s[:12] for s in shas)}); "
            "pass expected_publisher or expected_sha256"
        )
    failures = []
    daemon_maddr = dht.run_coroutine(_daemon_maddr)
    for record in records:
        who = f"{record.publisher[:16]}@{record.peer_id[:16]}"
        if record.size > max_bytes:
            failures.append(f"{who}: size {record.size} above max_bytes {max_bytes}")
            continue
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                blob = pool.submit(asyncio.run, _download(daemon_maddr, record, timeout, parallel)).result()
        except (asyncio.TimeoutError, TimeoutError):
            failures.append(f"{who}: no complete download within {timeout:.1f}s")
            continue
        except Exception as e:
            failures.append(f"{who}: {(str(e).splitlines() or [type(e).__name__])[0]}")
            continue
        sha = hashlib.sha256(blob).hexdigest()
        if len(blob) != record.size or sha != record.sha256:
            failures.append(
                f"{who}: served bytes fail verification (sha256 {sha[:16]}, expected {record.sha256[:16]})"
            )
            continue
        logger.info("fetched seed %s (%d bytes) from %s", sha[:16], len(blob), who)
        return blob
    raise SeedError("could not fetch a verified seed: " + "; ".join(failures))
