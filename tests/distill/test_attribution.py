"""Who taught the student: gate-weighted credit, and the signed record validators read (forgeries refused)."""

from __future__ import annotations

import math

import pytest
import torch
from hivemind.utils import get_dht_time

from moe.distill.attribution import DistillTraffic, merged_shares, parse_record, read_distill_traffic
from moe.identity import Hotkey
from moe.net.dht_records import DISTILL_CONTEXT, DISTILL_KEY, publish_signed
from moe.net.signed import MalformedRecord, SignedValue
from moe.routing.mixing import MixOutput

from .helpers import EXPERT_A, EXPERT_B, tiny_model, two_expert_mix


def test_credit_follows_the_gate_and_positions_count_what_was_served():
    traffic = DistillTraffic()
    traffic.record(two_expert_mix(tiny_model(1), tiny_model(2), gate_bias=2.0)(torch.randint(0, 256, (3, 10))))
    assert traffic.positions == {EXPERT_A: 30, EXPERT_B: 30}
    assert traffic.shares()[EXPERT_A] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-5)
    assert sum(traffic.shares().values()) == pytest.approx(1.0)


def test_an_expert_that_answered_only_the_probe_earns_only_there():
    """B answered the first 4 of 10 positions (its probe) and was then left out: it is credited on those 4 only."""
    B, T = 2, 10
    answered = torch.ones(B, T, 2, dtype=torch.bool)
    answered[:, 4:, 1] = False
    out = MixOutput(
        torch.zeros(B, T, 256),
        torch.zeros(B, T, 2),
        torch.ones(B, 2, dtype=torch.bool),
        answered,
        [EXPERT_A, EXPERT_B],
    )
    traffic = DistillTraffic()
    traffic.record(out)
    assert traffic.positions == {EXPERT_A: 20, EXPERT_B: 8}
    assert traffic.credit[EXPERT_B] == pytest.approx(4.0)  # half of 8 probe positions
    assert traffic.credit[EXPERT_A] == pytest.approx(16.0)  # half of 8 + all of 12


def test_state_round_trips_and_bad_records_are_refused():
    traffic = DistillTraffic({EXPERT_A: 3.5}, {EXPERT_A: 4}, windows=1, epoch=2)
    back = DistillTraffic()
    back.restore(traffic.state())
    assert (back.credit, back.positions, back.windows, back.epoch) == ({EXPERT_A: 3.5}, {EXPERT_A: 4}, 1, 2)
    good = traffic.payload()
    for bad in (
        {**good, "credit": {EXPERT_A: 5.0}},  # more credit than positions served
        {**good, "credit": {"not-a-key": 1.0}, "positions": {"not-a-key": 1}},
        {**good, "credit": {EXPERT_A: float("nan")}},
        {**good, "positions": {EXPERT_B: 4}},  # credit and positions name other experts
        {**good, "epoch": -1},
        "credit",
    ):
        with pytest.raises(MalformedRecord):
            parse_record(bad)


def test_records_cross_the_dht_signed_and_a_forged_one_is_skipped(dht_pair):
    a, b = dht_pair
    honest, other, forger, victim = (Hotkey.generate() for _ in range(4))
    traffic = DistillTraffic()
    traffic.record(two_expert_mix(tiny_model(1), tiny_model(2), gate_bias=1.0)(torch.randint(0, 256, (2, 8))))
    assert traffic.publish(a, honest, ttl=60.0)
    second = {**traffic.payload(), "credit": {EXPERT_B: 16.0}, "positions": {EXPERT_B: 16}}
    assert publish_signed(b, DISTILL_KEY, other, second, DISTILL_CONTEXT, ttl=60.0)
    # signed by the forger but filed under a victim's subkey, crediting the forger's friend: readers drop it
    forged = SignedValue.sign(forger, {**second, "expiration": get_dht_time() + 60}, context=DISTILL_CONTEXT)
    b.store(DISTILL_KEY, forged, expiration_time=get_dht_time() + 60, subkey=victim.address)
    records = read_distill_traffic(b)
    assert set(records) == {honest.address, other.address}
    assert records[honest.address].epoch == 1
    assert records[honest.address].shares() == pytest.approx(traffic.shares(), rel=1e-4)  # credit is rounded
    merged = merged_shares(records)
    assert sum(merged.values()) == pytest.approx(1.0) and merged[EXPERT_B] > traffic.shares()[EXPERT_B]
