"""A distiller's signed credits on the ledger: accepted in order, replays and forgeries refused, replayed by verify."""

from __future__ import annotations

import pytest

from moe.ledger.chain import Ledger
from moe.ledger.records import distill_record, signing_bytes
from moe.ledger.state import distill_shares
from moe.ledger.verify import verify_ledger


@pytest.fixture
def led(tmp_path, genesis):
    with Ledger.open(tmp_path / "ledger.sqlite", genesis) as ledger:
        yield ledger


def test_latest_totals_are_kept_and_shares_follow_the_credit(led, keys):
    distiller, a, b = keys[5], keys[1].address, keys[2].address
    assert led.submit(distill_record(distiller, 1, {a: 10}, {a: 4.0}))
    led.produce_block(1001.0)
    assert led.submit(distill_record(distiller, 2, {a: 10, b: 30}, {a: 5.0, b: 15.0}))
    led.produce_block(1002.0)
    assert led.state.distill[distiller.address] == (2, {a: (10, 5000), b: (30, 15000)})
    assert distill_shares(led.state) == pytest.approx({a: 0.25, b: 0.75})


def test_replays_forgeries_and_inflated_credits_are_refused(led, keys):
    distiller, a = keys[5], keys[1].address
    first = distill_record(distiller, 3, {a: 10}, {a: 4.0})
    assert led.submit(first)
    led.produce_block(1001.0)
    assert not led.submit(first)  # the same record again
    assert not led.submit(distill_record(distiller, 2, {a: 20}, {a: 9.0}))  # an older epoch
    forged = distill_record(distiller, 4, {a: 10}, {a: 4.0})
    forged["credits"][0][2] = 9000  # the credit raised after signing
    assert not led.submit(forged)
    inflated = {**distill_record(distiller, 4, {a: 10}, {a: 4.0})}
    inflated["credits"] = [[a, 10, 10_001]]  # more credit than positions served, re-signed by the distiller itself
    inflated["signature"] = distiller.sign(signing_bytes(inflated)).hex()
    assert not led.submit(inflated)
    unsorted = distill_record(distiller, 4, {a: 10, keys[0].address: 5}, {a: 4.0, keys[0].address: 1.0})
    unsorted["credits"].reverse()
    unsorted["signature"] = distiller.sign(signing_bytes(unsorted)).hex()
    assert not led.submit(unsorted)
    led.produce_block(1002.0)
    assert led.state.distill[distiller.address] == (3, {a: (10, 4000)})


def test_verify_replays_distill_records(led, keys, tmp_path):
    assert led.submit(distill_record(keys[5], 1, {keys[1].address: 8}, {keys[1].address: 8.0}))
    led.produce_block(1001.0)
    led.close()
    report = verify_ledger(tmp_path / "ledger.sqlite", workers=0)
    assert report.ok, report
