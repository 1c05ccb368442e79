"""Tests for moe/report/ledger_history.py: a read-only replay that agrees with the ledger itself."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from moe.ledger import RAO_PER_TAO, Ledger
from moe.report.ledger_history import read_ledger_history
from moe.report.run_data import Missing

from .conftest import HONEST, VALIDATOR, write_ledger


def test_history_ends_where_the_ledger_is_and_leaves_the_file_alone(tmp_path):
    """The last sample equals the ledger's own height, issuance and balances, and the file's bytes are unchanged."""
    path = tmp_path / "ledger.sqlite"
    write_ledger(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    history = read_ledger_history(path, [*HONEST, VALIDATOR, "nobody"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with Ledger.open(path) as ledger:
        assert history.heights == list(range(ledger.height + 1))
        assert history.issuance_tao[-1] == ledger.total_issuance / RAO_PER_TAO
        for hk in [*HONEST, VALIDATOR]:
            assert history.holdings_tao[hk][-1] == (ledger.balance(hk) + ledger.stake_of(hk)) / RAO_PER_TAO
    assert history.holdings_tao["nobody"] == [0.0] * len(history.heights)
    assert history.stopped == ""


def test_corrupt_or_missing_ledger_is_missing(tmp_path):
    """An absent file, or one that is not a SQLite ledger, is Missing with a reason (never an exception)."""
    with pytest.raises(Missing, match="no ledger"):
        read_ledger_history(tmp_path / "ledger.sqlite", [])
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Missing):
        read_ledger_history(bad, [])


def test_tampered_block_ends_the_history_there(tmp_path):
    """A block whose contents no longer match its hash stops the replay: the history holds the blocks before it and
    says why it stopped."""
    path = tmp_path / "ledger.sqlite"
    write_ledger(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE blocks SET timestamp = timestamp + 0.5 WHERE height = 3")
    history = read_ledger_history(path, HONEST)
    assert history.heights == [0, 1, 2]
    assert "block 3" in history.stopped
