"""Tests for moe/poi/traffic_check.py: re-sent router calls catch an expert that answered the router differently,
never an honest one, and a router cannot frame an expert."""

from __future__ import annotations

import dataclasses
import random

import pytest

from moe.identity import Hotkey
from moe.net.receipt import ReceiptError, caller_digest, sign_receipt
from moe.poi.traffic_check import Replay, TrafficCheckConfig, choose_calls, flag_two_faced
from moe.routing.traffic import TrafficRecord

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
    """Published samples whose receipt the expert did not sign, or that name another request, never reach a
    validator: parsing refuses them."""
    router = Hotkey.from_seed(b"\x03" * 32)
    real = _call(HONEST, 0, b"good")
    forged = sign_receipt(router, caller_digest(b"router"), real.receipt.time_ms, 8, real.request, b"bad")
    impersonated = TrafficRecord(real.request, dataclasses.replace(forged, expert=real.receipt.expert))
    with pytest.raises(ReceiptError, match="unsigned or for another request"):
        TrafficRecord.from_json(impersonated.to_json())
    with pytest.raises(ReceiptError, match="unsigned or for another request"):
        TrafficRecord.from_json([real.receipt.to_bytes().hex(), b"another request".hex()])
    assert TrafficRecord.from_json(real.to_json()) == real
    for junk in (None, "x", ["zz", "00"], [1, 2], [real.receipt.to_bytes().hex()]):
        with pytest.raises(ReceiptError):
            TrafficRecord.from_json(junk)


def test_choose_calls_takes_recent_distinct_calls_of_the_asked_experts():
    cfg = TrafficCheckConfig(per_expert=3, max_age_seconds=100)
    fresh = [_call(HONEST, i, b"good") for i in range(5)]
    stale = [_call(HONEST, 10 + i, b"good", age=1000) for i in range(5)]
    future = [_call(HONEST, 20, b"good", age=-3600)]
    other = [_call(CHEAT, 30, b"good")]
    published = {"router-a": fresh + stale + future + other, "router-b": fresh[:2]}  # b repeats a's calls
    chosen = choose_calls(published, [HONEST.address], cfg, NOW, random.Random(0))
    assert list(chosen) == [HONEST.address] and len(chosen[HONEST.address]) == 3
    assert all(c in fresh for c in chosen[HONEST.address])
    assert len({c.receipt.receipt_id for c in chosen[HONEST.address]}) == 3
    few = choose_calls({"r": fresh[:2]}, [HONEST.address, CHEAT.address], cfg, NOW, random.Random(0))
    assert len(few[HONEST.address]) == 2 and few[CHEAT.address] == []


def test_config_is_range_checked():
    for bad in ({"per_expert": -1}, {"min_samples": 0}, {"max_age_seconds": 0}, {"max_mismatch_rate": 1.5}):
        with pytest.raises(ValueError):
            TrafficCheckConfig(**bad)
