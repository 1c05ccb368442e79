"""Tests for moe/poi/traffic_check.py: re-sent router calls catch an expert that answered the router differently,
never an honest one, and a router cannot frame an expert."""

from __future__ import annotations

import dataclasses
import random

import pytest

from moe.identity import Hotkey
from moe.net.receipt import ReceiptError, caller_digest, sign_receipt
from moe.poi.traffic_check import Replay, TrafficCheckConfig, choose_calls, flag_two_faced
from moe.routing.traffic import PublishedCall, TrafficRecord, parse_index, parse_slot

HONEST, CHEAT = Hotkey.from_seed(b"\x01" * 32), Hotkey.from_seed(b"\x02" * 32)
NOW = 1_800_000_000.0


def _call(key: Hotkey, i: int, reply: bytes, age: float = 10.0) -> TrafficRecord:
    request = f"request {i}".encode()
    receipt = sign_receipt(key, caller_digest(b"router"), int((NOW - age) * 1000), 8, request, reply)
    return TrafficRecord(request, receipt)


def test_expert_answering_the_validator_differently_is_flagged_and_honest_one_is_not():
    cfg = TrafficCheckConfig()
    replays = []
    for i in range(4):
        replays.append(Replay(HONEST.address, _call(HONEST, i, b"good"), b"good"))
        replays.append(Replay(CHEAT.address, _call(CHEAT, i, b"uniform"), b"good"))  # seed for the validator
    assert flag_two_faced(replays, cfg) == {CHEAT.address: 1.0}


def test_too_few_answered_calls_or_a_rare_mismatch_flag_nobody():
    cfg = TrafficCheckConfig(min_samples=3, max_mismatch_rate=0.2)
    two = [Replay(CHEAT.address, _call(CHEAT, i, b"uniform"), b"good") for i in range(2)]
    unanswered = [Replay(CHEAT.address, _call(CHEAT, i, b"uniform"), None) for i in range(5)]
    assert flag_two_faced(two + unanswered, cfg) == {}
    one_in_five = [Replay(HONEST.address, _call(HONEST, i, b"good"), b"good") for i in range(4)]
    one_in_five.append(Replay(HONEST.address, _call(HONEST, 9, b"good"), b"other"))
    assert flag_two_faced(one_in_five, cfg) == {}
    assert flag_two_faced(one_in_five, TrafficCheckConfig(max_mismatch_rate=0.1)) == {HONEST.address: 0.2}


def test_a_router_cannot_frame_an_expert():
    """A published receipt the expert did not sign never reaches a validator, nor does a slot holding another
    request than the one the receipt names: parsing refuses both."""
    router = Hotkey.from_seed(b"\x03" * 32)
    real = _call(HONEST, 0, b"good")
    forged = sign_receipt(router, caller_digest(b"router"), real.receipt.time_ms, 8, real.request, b"bad")
    impersonated = dataclasses.replace(forged, expert=real.receipt.expert)  # router signs in the expert's name
    index = {"receipts": [impersonated.to_bytes().hex(), real.receipt.to_bytes().hex(), "zz", 7]}
    calls = parse_index(router.address, index)
    assert [(c.slot, c.receipt) for c in calls] == [(1, real.receipt)]
    slot = {"receipt_id": real.receipt.receipt_id.hex(), "request": real.request.hex()}
    assert parse_slot(calls[0], slot) == real
    for bad in (
        {**slot, "request": b"another request".hex()},
        {**slot, "receipt_id": "00" * 32},
        {**slot, "request": "not hex"},
        {"request": real.request.hex()},
        {**slot, "request": "00" * (1 << 15)},
    ):
        with pytest.raises(ReceiptError):
            parse_slot(calls[0], bad)
    for junk in ({}, {"receipts": "x"}, {"receipts": ["00"] * 65}):
        with pytest.raises(ReceiptError):
            parse_index(router.address, junk)


def test_choose_calls_takes_recent_distinct_calls_of_the_asked_experts():
    cfg = TrafficCheckConfig(per_expert=3, max_age_seconds=100)

    def published(router: str, records: list[TrafficRecord]) -> list[PublishedCall]:
        return [PublishedCall(router, k, r.receipt) for k, r in enumerate(records)]

    fresh = [_call(HONEST, i, b"good") for i in range(5)]
    stale = [_call(HONEST, 10 + i, b"good", age=1000) for i in range(5)]
    future = [_call(HONEST, 20, b"good", age=-3600)]
    other = [_call(CHEAT, 30, b"good")]
    calls = published("router-a", fresh + stale + future + other) + published("router-b", fresh[:2])  # repeats
    chosen = choose_calls(calls, [HONEST.address], cfg, NOW, random.Random(0))
    assert list(chosen) == [HONEST.address] and len(chosen[HONEST.address]) == 3
    assert all(c.receipt in {r.receipt for r in fresh} for c in chosen[HONEST.address])
    assert len({c.receipt.receipt_id for c in chosen[HONEST.address]}) == 3
    few = choose_calls(published("r", fresh[:2]), [HONEST.address, CHEAT.address], cfg, NOW, random.Random(0))
    assert len(few[HONEST.address]) == 2 and few[CHEAT.address] == []


def test_config_is_range_checked():
    for bad in ({"per_expert": -1}, {"min_samples": 0}, {"max_age_seconds": 0}, {"max_mismatch_rate": 1.5}):
        with pytest.raises(ValueError):
            TrafficCheckConfig(**bad)
