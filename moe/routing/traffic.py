"""A router's sample of its own traffic, published so validators can check that experts answer everyone alike.

Every reply carries the expert's signed receipt (moe.net.receipt). The router keeps, for each expert, a sample of
its calls to it (the request's exact bytes and the receipt), widest first: a uniform sample (a reservoir) per request
width, and the widest widths fill the published places before narrower ones. A router probes every expert on a short
prefix of each sequence and sends whole sequences only to the few it picks, so a uniform sample of its calls is
nearly all probes, and probes are what give a router away: an expert answering a router's whole-sequence calls
cheaply shows it only on those. It publishes the receipts
signed under its hotkey at `TRAFFIC_KEY` (208 bytes each: the index a validator chooses from) and each request
under `traffic_slot_key(k)`, k its place in the index (a request is kilobytes: all of them would not fit one DHT
value). Validators fetch the requests they choose, re-send them from their own peer id and compare the replies with
the digests the experts signed (moe.poi.traffic_check). The reservoir is decided after the reply came back, so an
expert cannot tell a sampled call from any other.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

from moe.identity import Hotkey
from moe.net.dht_records import (
    MAX_TRAFFIC_SLOTS,
    TRAFFIC_CONTEXT,
    TRAFFIC_KEY,
    TRAFFIC_SLOT_CONTEXT,
    publish_signed,
    read_signed,
    traffic_slot_key,
)
from moe.net.receipt import Receipt, ReceiptError, digest
from moe.net.ticket_desk import split_paid
from moe.net.wire import request_width

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 14
"""Requests longer than this are not sampled (a (16, 128) byte request is 2 KB): each slot must stay small."""


@dataclass(frozen=True)
class TrafficRecord:
    """One sampled call: what the router sent, and the expert's receipt for what it answered."""

    request: bytes
    receipt: Receipt


@dataclass(frozen=True)
class PublishedCall:
    """One receipt in a router's published index: its request is in the router's slot `slot`."""

    router: str
    slot: int
    receipt: Receipt


class TrafficLog:
    """Per expert, `per_expert` of the calls made to it, the widest requests first, each width sampled uniformly
    (thread-safe: replies arrive on the client's loop thread)."""

    def __init__(self, per_expert: int = 4, seed: int | None = None):
        self.per_expert = per_expert
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._kept: dict[str, dict[int, _Reservoir]] = {}

    def offer(self, request: bytes, receipt: Receipt) -> None:
        """Consider one checked call for the sample (every call of a width kept with equal chance)."""
        if len(request) > MAX_REQUEST_BYTES or self.per_expert == 0:
            return
        width = _width(request)
        with self._lock:
            by_width = self._kept.setdefault(receipt.address, {})
            by_width.setdefault(width, _Reservoir()).offer(TrafficRecord(request, receipt), self.per_expert, self._rng)
            if len(by_width) > self.per_expert:  # the narrowest width can no longer reach the published places
                del by_width[min(by_width)]

    def records(self) -> list[TrafficRecord]:
        """The sample, at most MAX_TRAFFIC_SLOTS calls, taken evenly across experts."""
        with self._lock:
            kept = [
                [r for w in sorted(by_width, reverse=True) for r in by_width[w].kept][: self.per_expert]
                for by_width in self._kept.values()
            ]
        out = []
        for rank in range(max((len(k) for k in kept), default=0)):  # each expert's first call, then second, ...
            out += [calls[rank] for calls in kept if rank < len(calls)]
        return out[:MAX_TRAFFIC_SLOTS]


@dataclass
class _Reservoir:
    """A uniform sample of the calls offered to it (reservoir sampling)."""

    seen: int = 0
    kept: list[TrafficRecord] = field(default_factory=list)

    def offer(self, record: TrafficRecord, size: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.kept) < size:
            self.kept.append(record)
        elif (j := rng.randrange(self.seen)) < size:
            self.kept[j] = record


def _width(request: bytes) -> int:
    """The sequence length a (possibly paid) request asks about; 0, the narrowest, for one that does not parse."""
    try:
        return request_width(split_paid(request)[1])
    except ValueError:
        return 0


def publish_traffic(dht, hotkey: Hotkey, records: list[TrafficRecord], ttl: float, wait: bool = True) -> bool:
    """Store a router's sample under its hotkey (replacing its previous one): each request in its slot, and the
    index of receipts. With `wait`, returns once all are stored (False if the index was not); without, at once (a
    router serving users must not stall on a loaded DHT: a later publication replaces a lost one)."""
    records = records[:MAX_TRAFFIC_SLOTS]
    stores = []
    for k, r in enumerate(records):  # all at once: one by one, a loaded network takes seconds a store
        payload = {"receipt_id": r.receipt.receipt_id.hex(), "request": r.request.hex()}
        stores.append(publish_signed(dht, traffic_slot_key(k), hotkey, payload, TRAFFIC_SLOT_CONTEXT, ttl, wait=False))
    index = {"receipts": [r.receipt.to_bytes().hex() for r in records]}
    stores.append(publish_signed(dht, TRAFFIC_KEY, hotkey, index, TRAFFIC_CONTEXT, ttl, wait=False))
    if not wait:
        return True
    return [bool(future.result()) for future in stores][-1]


def parse_index(router: str, payload: dict) -> list[PublishedCall]:
    """The signed receipts of one router's index; ReceiptError (one line) if the index is malformed, and a receipt
    its expert did not sign is skipped (a router cannot frame an expert with a reply it never sent)."""
    receipts = payload.get("receipts")
    if not isinstance(receipts, list) or len(receipts) > MAX_TRAFFIC_SLOTS:
        raise ReceiptError(f"traffic index of router {router[:16]} is not a list of at most {MAX_TRAFFIC_SLOTS}")
    out = []
    for k, item in enumerate(receipts):
        try:
            if not isinstance(item, str):
                raise ReceiptError("a receipt is hex")
            receipt = Receipt.from_bytes(bytes.fromhex(item))
            if not receipt.verify():
                raise ReceiptError(f"receipt of {receipt.address[:16]} is not signed by it")
        except (ReceiptError, ValueError) as e:
            logger.warning("traffic of router %s, slot %d: %s; skipped", router[:16], k, e)
            continue
        out.append(PublishedCall(router, k, receipt))
    return out


def parse_slot(call: PublishedCall, payload: dict) -> TrafficRecord:
    """The request of `call` from its slot's payload; ReceiptError unless the slot names this receipt and holds
    exactly the request the expert signed for."""
    receipt_id, request = payload.get("receipt_id"), payload.get("request")
    if not isinstance(receipt_id, str) or not isinstance(request, str) or len(request) > 2 * MAX_REQUEST_BYTES:
        raise ReceiptError("a traffic slot is a receipt id and a request of bounded size, in hex")
    try:
        rid, raw = bytes.fromhex(receipt_id), bytes.fromhex(request)
    except ValueError as e:
        raise ReceiptError(f"malformed traffic slot: {e}") from None
    if rid != call.receipt.receipt_id or digest(raw) != call.receipt.request:
        raise ReceiptError(f"slot {call.slot} of router {call.router[:16]} holds another call")
    return TrafficRecord(raw, call.receipt)


def read_traffic(dht) -> list[PublishedCall]:
    """Every router's published receipts whose experts signed them; anything else is logged and skipped."""
    out = []
    for router, payload in read_signed(dht, TRAFFIC_KEY, TRAFFIC_CONTEXT).items():
        try:
            out += parse_index(router, payload)
        except ReceiptError as e:
            logger.warning("%s; skipped", e)
    return out


def fetch_request(dht, call: PublishedCall) -> TrafficRecord | None:
    """The request behind a published receipt, from its router's slot; None (logged) if absent or not that call."""
    payload = read_signed(dht, traffic_slot_key(call.slot), TRAFFIC_SLOT_CONTEXT).get(call.router)
    if payload is None:
        return None
    try:
        return parse_slot(call, payload)
    except ReceiptError as e:
        logger.warning("%s; not re-sent", e)
        return None
