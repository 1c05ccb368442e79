"""Tests for moe/roles/payments_summary.py: the summary's `market` read from a real ledger file."""

from __future__ import annotations

import json

import pytest

from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, GenesisConfig, Ledger, LedgerConfig
from moe.ledger.records import escrow_record, settle_record
from moe.ledger.ticket import chain_digest, sign_ticket
from moe.roles.layout import RunLayout
from moe.roles.payments_summary import payments_summary

CONSUMER, EXPERT, FREE = (Hotkey.from_seed(bytes([i]) * 32) for i in (31, 32, 33))


def write_run(tmp_path) -> RunLayout:
    """A run whose ledger holds one consumer's 3 TAO escrow and 1.5 TAO settled to EXPERT for 4,000 bytes."""
    layout = RunLayout.create(tmp_path, "r")
    g = GenesisConfig(ledger=LedgerConfig(tempo=100, subnet_shares={1: 1.0}), balances={CONSUMER.address: 10**10})
    with Ledger.open(layout.ledger, g) as led:
        assert led.submit(escrow_record(CONSUMER, 3 * RAO_PER_TAO, 0))
        led.produce_block()
        t = sign_ticket(CONSUMER, chain_digest(led.state.chain_id), EXPERT.address, 9, 5, 4000, 3 * RAO_PER_TAO // 2)
        assert led.submit(settle_record(EXPERT, [(t.to_bytes(), 4000, 3 * RAO_PER_TAO // 2)]))
        led.produce_block()
    layout.ledger_rejections.write_text(json.dumps([["settle", EXPERT.address, "x"], ["register", "y", "z"]]))
    return layout


def test_market_reads_payments_spending_prices_and_rejections_from_the_ledger(tmp_path):
    """Paid and spent come from the settlements, bytes from the settled tickets, emission is the rest of the
    expert's reward, prices from the experts, and only refused settle records count as rejected receipts."""
    layout = write_run(tmp_path)
    experts = [
        {"hotkey": EXPERT.address, "price_tao_per_mbyte": 2.0},
        {"hotkey": FREE.address, "price_tao_per_mbyte": 0.0},
    ]
    market = payments_summary(layout, experts, {EXPERT.address: 4.0, FREE.address: 1.0})["market"]
    assert market["paid"] == {EXPERT.address: 1.5, FREE.address: 0.0}
    assert market["emission"] == {EXPERT.address: pytest.approx(2.5), FREE.address: pytest.approx(1.0)}
    assert market["bytes_served"] == {EXPERT.address: 4000, FREE.address: 0}
    assert market["spent"] == {CONSUMER.address: 1.5}
    assert market["price"] == {EXPERT.address: 2.0, FREE.address: 0.0}
    assert market["rejected_receipts"] == 1


def test_a_run_where_nobody_charges_has_no_market(tmp_path):
    """All prices 0: no `market` section (the default run)."""
    layout = write_run(tmp_path)
    assert payments_summary(layout, [{"hotkey": EXPERT.address, "price_tao_per_mbyte": 0.0}], {}) == {}
