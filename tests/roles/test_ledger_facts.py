"""Tests for moe/roles/ledger_facts.py: one verified replay of a real ledger carries every total the summary shows."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from moe.ledger import Ledger
from moe.roles import ledger_facts as ledger_facts_module
from moe.roles.ledger_facts import read_ledger_facts
from moe.roles.summary import build_summary
from tests.roles.test_validation_summary import HONEST, MINERS, VALIDATORS, write_ledger, write_run


def test_the_totals_match_a_ledger_opened_and_read_block_by_block(tmp_path):
    """Miner emission, dividends and the state after replay agree with a plain reopen of the same file."""
    path = tmp_path / "l.db"
    write_ledger(path, [1.0, 2.0, 3.0, 0.0])
    facts = read_ledger_facts(path)
    with Ledger.open(path) as led:
        epochs = [r for b in led.blocks() for r in b.records if r.get("kind") == "epoch"]
        balances = {k.address: led.balance(k.address) for k in [*VALIDATORS, *MINERS]}
        height = led.height
    assert facts.ok and facts.state.height == height and len(epochs) == 2
    assert facts.miner_emission == sum(sum(e["miner_payouts"]) for e in epochs) > 0
    paid = [pair for e in epochs for pair in zip(e["validators"], e["validator_payouts"], strict=True)]
    assert facts.dividends == {v.address: sum(p for h, p in paid if h == v.address) for v in VALIDATORS}
    assert {k: facts.state.balances.get(k, 0) for k in balances} == balances
    assert facts.shares == {1: 1.0}


def test_a_summary_replays_its_ledger_once_and_a_tampered_one_yields_no_totals(tmp_path, monkeypatch):
    """build_summary reads the ledger through one verification; an edited accounts table fails it, and then no
    rewards or market figures are reported from it, while the rest of the summary stays."""
    cfg, layout = write_run(tmp_path, [{h: 1 / 3 for h in HONEST}], ledger_weights=[1.0, 2.0, 3.0, 0.0])
    reads = []
    monkeypatch.setattr(ledger_facts_module, "read_ledger_facts", lambda p: reads.append(p) or read_ledger_facts(p))
    s = build_summary(cfg, layout, 0.0)
    assert reads == [layout.ledger] and s["checks"]["ledger_verifies"] is True and s["rewards"][HONEST[2]] > 0
    with closing(sqlite3.connect(layout.ledger)) as conn, conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE address = ?", (MINERS[2].address,))
    tampered = read_ledger_facts(layout.ledger)
    assert not tampered.ok and tampered.miner_emission == 0 and tampered.dividends == {}
    s = build_summary(cfg, layout, 0.0)
    assert s["checks"]["ledger_verifies"] is False and s["rewards"] == {} and "subnets" not in s
    assert s["mixture"]["eval_bpb"]["all"] == 1.9
