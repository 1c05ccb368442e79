"""A router's sample of its own traffic, published so validators can check that experts answer everyone alike.

Every reply carries the expert's signed receipt (moe.net.receipt). The router keeps, for each expert, a uniform
random sample (a reservoir) of its calls to it: the request's exact bytes and the receipt. It publishes them signed
under its hotkey at `TRAFFIC_KEY`; validators re-send some of those requests from their own peer id and compare the
replies with the digests the experts signed (moe.poi.traffic_check). The reservoir is decided after the reply came
back, so an expert cannot tell a sampled call from any other.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from moe.identity import Hotkey
from moe.net.dht_records import TRAFFIC_CONTEXT, TRAFFIC_KEY, publish_signed, read_signed
from moe.net.receipt import Receipt, ReceiptError, digest

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 14
"""Requests longer than this are not sampled (a (16, 128) byte request is 2 KB): the record must stay small."""
MAX_PUBLISHED = 64
"""Samples one router publishes at most; a reader skips a record with more."""


@dataclass(frozen=True)
class TrafficRecord:
    """One sampled call: what the router sent, and the expert's receipt for what it answered."""

    request: bytes
    receipt: Receipt

    def to_json(self) -> list[str]:
        return [self.receipt.to_bytes().hex(), self.request.hex()]

    @classmethod
    def from_json(cls, item) -> TrafficRecord:
        """Parse one published sample; ReceiptError (one line) on a malformed one, or one whose receipt is unsigned
        or names another request (a router cannot frame an expert with a request it never sent)."""
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            raise ReceiptError("a traffic sample is [receipt hex, request hex]")
        if len(item[1]) > 2 * MAX_REQUEST_BYTES:
            raise ReceiptError(f"request over {MAX_REQUEST_BYTES} bytes")
        try:
            receipt, request = Receipt.from_bytes(bytes.fromhex(item[0])), bytes.fromhex(item[1])
        except ValueError as e:
            raise ReceiptError(f"malformed traffic sample: {e}") from None
        if receipt.request != digest(request) or not receipt.verify():
            raise ReceiptError(f"receipt of {receipt.address[:16]} is unsigned or for another request")
        return cls(request, receipt)


class TrafficLog:
    """Per expert, a uniform sample of `per_expert` of the calls made to it (thread-safe: replies arrive on the
    client's loop thread)."""

    def __init__(self, per_expert: int = 4, seed: int | None = None):
        self.per_expert = per_expert
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._kept: dict[str, list[TrafficRecord]] = {}

    def offer(self, request: bytes, receipt: Receipt) -> None:
        """Consider one checked call for the sample (reservoir sampling: every call kept with equal chance)."""
        if len(request) > MAX_REQUEST_BYTES or self.per_expert == 0:
            return
        with self._lock:
            n = self._seen.get(receipt.address, 0) + 1
            self._seen[receipt.address] = n
            kept = self._kept.setdefault(receipt.address, [])
            if len(kept) < self.per_expert:
                kept.append(TrafficRecord(request, receipt))
            elif (j := self._rng.randrange(n)) < self.per_expert:
                kept[j] = TrafficRecord(request, receipt)

    def records(self) -> list[TrafficRecord]:
        with self._lock:
            return [r for kept in self._kept.values() for r in kept][:MAX_PUBLISHED]

    def calls(self, address: str) -> int:
        """Calls seen to the expert with hotkey `address`."""
        with self._lock:
            return self._seen.get(address, 0)


def publish_traffic(dht, hotkey: Hotkey, records: list[TrafficRecord], ttl: float) -> bool:
    """Store a router's sample under its hotkey (replacing its previous one)."""
    payload = {"samples": [r.to_json() for r in records[:MAX_PUBLISHED]]}
    return publish_signed(dht, TRAFFIC_KEY, hotkey, payload, TRAFFIC_CONTEXT, ttl)


def read_traffic(dht) -> dict[str, list[TrafficRecord]]:
    """Router address → its published samples whose receipts are signed and match their requests; anything else is
    logged and skipped."""
    out: dict[str, list[TrafficRecord]] = {}
    for router, payload in read_signed(dht, TRAFFIC_KEY, TRAFFIC_CONTEXT).items():
        samples = payload.get("samples")
        if not isinstance(samples, list) or len(samples) > MAX_PUBLISHED:
            logger.warning("traffic of router %s is malformed; skipped", router[:16])
            continue
        kept = []
        for item in samples:
            try:
                kept.append(TrafficRecord.from_json(item))
            except ReceiptError as e:
                logger.warning("traffic of router %s: %s; sample skipped", router[:16], e)
        out[router] = kept
    return out
