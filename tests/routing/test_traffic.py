"""Tests for moe/routing/traffic.py: the router's reservoir of calls, and its publication through a real DHT (index of
receipts, one slot per request) that validators read back, never trusting a slot that holds another call."""

from __future__ import annotations

import torch

from moe.identity import Hotkey
from moe.ledger.ticket import TICKET_BYTES
from moe.net.dht_records import TRAFFIC_SLOT_CONTEXT, publish_signed, traffic_slot_key
from moe.net.receipt import caller_digest, sign_receipt
from moe.net.ticket_desk import split_paid
from moe.net.wire import encode_request, request_width
from moe.routing.traffic import (
    MAX_REQUEST_BYTES,
    TrafficLog,
    TrafficRecord,
    fetch_request,
    publish_traffic,
    read_traffic,
)

EXPERTS = [Hotkey.from_seed(bytes([60 + i]) * 32) for i in range(3)]
ROUTER = Hotkey.from_seed(b"\x70" * 32)


def _record(expert: Hotkey, i: int, size: int = 64) -> TrafficRecord:
    request = bytes([i % 256]) * size
    return TrafficRecord(
        request, sign_receipt(expert, caller_digest(b"router"), 10**12 + i, size, request, b"r%d" % i)
    )


def test_reservoir_keeps_a_uniform_bounded_sample_per_expert():
    kept_first = 0
    for seed in range(200):
        log = TrafficLog(per_expert=4, seed=seed)
        for i in range(40):
            log.offer(*_unpack(_record(EXPERTS[0], i)))
        log.offer(*_unpack(_record(EXPERTS[1], 0)))
        log.offer(*_unpack(_record(EXPERTS[2], 0, size=MAX_REQUEST_BYTES + 1)))  # too big to publish: skipped
        records = log.records()
        by_expert = [sum(r.receipt.address == e.address for r in records) for e in EXPERTS]
        assert by_expert == [4, 1, 0]
        kept_first += any(r.receipt == _record(EXPERTS[0], 0).receipt for r in records)
    assert 0.05 < kept_first / 200 < 0.2  # each of the 40 calls kept with probability 4/40


def _call(expert: Hotkey, i: int, width: int) -> tuple[bytes, object]:
    request = encode_request(torch.full((4, width), i % 256, dtype=torch.long), "q8")
    return request, sign_receipt(expert, caller_digest(b"router"), 10**12 + i, 4 * width, request, b"r%d" % i)


def test_the_few_whole_sequence_calls_are_kept_among_many_probes():
    """A router probes every expert and sends whole sequences to few: among 300 probes (paid ones too), the 3 wide
    calls are in the published sample, first (a uniform sample would hold one with chance 4/101 each)."""
    log = TrafficLog(per_expert=4, seed=0)
    wide = [_call(EXPERTS[0], i, width=24) for i in range(3)]
    for i in range(300):
        request, receipt = _call(EXPERTS[0], 1000 + i, width=8)
        log.offer(request if i % 2 else b"HMP1" + bytes(TICKET_BYTES) + request, receipt)
        if i % 100 == 50:
            log.offer(*wide[i // 100])
    records = log.records()
    assert [r.receipt for r in records[:3]] == [receipt for _, receipt in wide]
    assert len(records) == 4 and request_width(split_paid(records[3].request)[1]) == 8


def _unpack(r: TrafficRecord) -> tuple[bytes, object]:
    return r.request, r.receipt


def test_published_traffic_reads_back_on_another_peer_and_a_swapped_slot_is_refused(dht_pair):
    a, b = dht_pair
    records = [_record(e, i) for i, e in enumerate(EXPERTS)]
    assert publish_traffic(a, ROUTER, records, ttl=60)
    calls = read_traffic(b)
    assert [(c.router, c.slot, c.receipt) for c in calls] == [
        (ROUTER.address, k, r.receipt) for k, r in enumerate(records)
    ]
    assert [fetch_request(b, c) for c in calls] == records
    publish_signed(
        a,
        traffic_slot_key(0),
        ROUTER,
        {"receipt_id": records[1].receipt.receipt_id.hex(), "request": records[1].request.hex()},
        TRAFFIC_SLOT_CONTEXT,
        60,
    )  # slot 0 now holds call 1
    assert fetch_request(b, calls[0]) is None and fetch_request(b, calls[1]) == records[1]
