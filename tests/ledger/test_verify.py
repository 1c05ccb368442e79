"""Tests for moe/ledger/verify.py and cli.py: tampering is caught and named, a killed writer leaves a valid file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moe.cli.ledger_commands import main
from moe.ledger.chain import Ledger, block_hash
from moe.ledger.sigcheck import ParallelSignatures, check_range
from moe.ledger.verify import verify_ledger

TAO = 10**9
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger_path(tmp_path, keys, genesis) -> Path:
    """A 12-block ledger with registrations, stakes, weights, transfers and two epochs."""
    p = tmp_path / "l.db"
    led = Ledger.open(p, genesis)
    for k in keys:
        assert led.register(k, 1)
    led.produce_block(1001.0)
    for k in keys[:2]:
        assert led.add_stake(k, 100 * TAO)
    led.produce_block(1002.0)
    for k in keys[:2]:
        assert led.set_weights(k, 1, [2, 3, 4], [1.0, 2.0, 3.0])
    assert led.transfer(keys[5], keys[6].address, 3 * TAO)
    for t in range(10):
        led.produce_block(1003.0 + t)
    led.close()
    return p


def rows(p: Path) -> list[tuple]:
    with sqlite3.connect(p) as c:
        return c.execute("SELECT height, prev_hash, hash, timestamp, records FROM blocks ORDER BY height").fetchall()


def rewrite_from(p: Path, height: int, edit) -> None:
    """Apply `edit` to block `height`'s records and re-hash every later block, as a forger would."""
    with sqlite3.connect(p) as c:
        prev = None
        for h, _prev, _, ts, recs in rows(p):
            if h < height:
                prev = c.execute("SELECT hash FROM blocks WHERE height=?", (h,)).fetchone()[0]
                continue
            records = json.loads(recs)
            if h == height:
                edit(records)
            new = block_hash(h, prev, ts, records)
            c.execute(
                "UPDATE blocks SET prev_hash=?, hash=?, records=? WHERE height=?", (prev, new, json.dumps(records), h)
            )
            prev = new


def inflate_payout(records):
    next(r for r in records if r["kind"] == "epoch")["miner_payouts"][2] += 1


def test_clean_ledger_verifies(ledger_path, capsys):
    """An untouched ledger verifies, and the CLI exits 0 for verify and prints tables for show."""
    r = verify_ledger(ledger_path)
    assert r.ok and r.blocks == 13 and r.bad_height is None
    assert main(["verify", str(ledger_path)]) == 0
    assert main(["show", str(ledger_path)]) == 0
    out = capsys.readouterr().out
    assert "Accounts" in out and "netuid 1 epoch" in out


def test_edited_record_bytes_name_the_block(ledger_path, capsys):
    """Changing a stored record's bytes in place breaks that block's hash, and verify names that height."""
    with sqlite3.connect(ledger_path) as c:
        recs = c.execute("SELECT records FROM blocks WHERE height=3").fetchone()[0]
        c.execute("UPDATE blocks SET records=? WHERE height=3", (recs.replace('"amount":3000000000', '"amount":3'),))
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 3 and "hash" in r.reason
    assert main(["verify", str(ledger_path)]) == 1
    assert "bad block 3" in capsys.readouterr().out


def test_forged_signature_named_even_when_rehashed(ledger_path):
    """A transfer amount changed and all later hashes recomputed still fails: the signature no longer matches."""

    def edit(records):
        next(r for r in records if r["kind"] == "transfer")["amount"] = 300 * TAO

    rewrite_from(ledger_path, 3, edit)
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 3 and "signature" in r.reason


def test_replaced_signature_named(ledger_path):
    """A weight record whose signature bytes were altered fails verification at its block."""

    def edit(records):
        w = next(r for r in records if r["kind"] == "weights")
        w["signature"] = ("00" if w["signature"][:2] != "00" else "11") + w["signature"][2:]

    rewrite_from(ledger_path, 3, edit)
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 3 and "signature" in r.reason


def test_inflated_payout_named(ledger_path):
    """An epoch payout raised by one rao (hashes recomputed) is caught by replaying the epoch."""

    rewrite_from(ledger_path, 7, inflate_payout)
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 7 and "payouts" in r.reason


def test_tampered_balance_detected(ledger_path):
    """Editing a balance in the accounts table is reported against the head block."""
    with sqlite3.connect(ledger_path) as c:
        c.execute("UPDATE accounts SET balance = balance + 1 WHERE rowid = 1")
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 12 and "accounts table" in r.reason


def test_deleted_block_named(ledger_path):
    """Deleting a block from SQLite is reported as that height missing."""
    with sqlite3.connect(ledger_path) as c:
        c.execute("DELETE FROM blocks WHERE height=5")
    r = verify_ledger(ledger_path)
    assert not r.ok and r.bad_height == 5 and "missing" in r.reason


def test_garbage_file_and_missing_file(tmp_path):
    """A file that is not SQLite, or no file, gives a failed report rather than an exception."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert not verify_ledger(junk).ok
    assert not verify_ledger(tmp_path / "none.db").ok
    assert main(["verify", str(junk)]) == 1


WRITER = """
import sys
from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, LedgerConfig
keys = [Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(4)]
cfg = LedgerConfig(tempo=5, max_uids=8, initial_difficulty=2)
g = GenesisConfig(ledger=cfg, balances={k.address: 10**15 for k in keys})
led = Ledger.open(sys.argv[1], g, synchronous="NORMAL")
for k in keys:
    led.register(k, 1)
i = 0
while True:
    led.transfer(keys[i % 4], keys[(i + 1) % 4].address, 1000 + i)
    led.produce_block(1000.0 + i)
    i += 1
"""


@pytest.fixture
def writer(tmp_path):
    """A real subprocess appending blocks forever; always killed and reaped."""
    path = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stderr=subprocess.PIPE)
    yield proc, path
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_kill_minus_nine_mid_append_leaves_valid_file(writer):
    """SIGKILL while blocks are being appended loses at most the block in progress; the file still verifies."""
    proc, path = writer
    seen, deadline = -1, time.monotonic() + 60
    while seen < 30 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
        if path.exists():
            try:
                with sqlite3.connect(path) as c:
                    seen = c.execute("SELECT COALESCE(MAX(height), -1) FROM blocks").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    assert seen >= 30
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    r = verify_ledger(path)
    assert r.ok, str(r)
    assert r.blocks - 1 >= seen
    assert [h for h, *_ in rows(path)] == list(range(r.blocks))


def test_report_state_is_the_last_good_blocks(ledger_path, tmp_path):
    """After a bad block, the report's state is the state after the block before it, not a half-applied one."""
    good = tmp_path / "good.db"
    shutil.copy(ledger_path, good)
    with sqlite3.connect(good) as c:
        c.execute("DELETE FROM blocks WHERE height >= 7")
    ref = verify_ledger(good)  # fails on the accounts table, with the state after block 6
    rewrite_from(ledger_path, 7, inflate_payout)  # block 7 mints, then its epoch record is refused
    r = verify_ledger(ledger_path)
    assert r.bad_height == 7 and r.state.height == ref.state.height == 6
    assert r.state.balances == ref.state.balances and r.state.total_issuance == ref.state.total_issuance


def test_signature_workers_find_what_inline_checks_find(ledger_path, tmp_path):
    """Signature checks in worker processes give the same reports as inline checks, and name a forged signature."""

    def forge(records):
        w = [r for r in records if r["kind"] == "weights"][1]
        w["signature"] = ("00" if w["signature"][:2] != "00" else "11") + w["signature"][2:]

    def summary(r):
        return (r.ok, r.blocks, r.head_hash, r.bad_height, r.reason)

    clean = [verify_ledger(ledger_path, workers=w, chunk_blocks=2) for w in (0, 2)]
    assert clean[0].ok and summary(clean[0]) == summary(clean[1])
    assert check_range(str(ledger_path), 0, 12) == (list(range(13)), {})
    forged = tmp_path / "forged.db"
    shutil.copy(ledger_path, forged)
    rewrite_from(forged, 3, forge)  # block 3 lies in a chunk the workers check
    assert check_range(str(forged), 2, 5) == ([2, 3, 4, 5], {3: [1]})
    sigs = ParallelSignatures(forged, 0, 12, workers=1, chunk_blocks=2)
    try:
        assert sigs.bad_at(1) is None and list(sigs.bad_at(3)) == [1] and not sigs.bad_at(4)
    finally:
        sigs.close()
    reports = [verify_ledger(forged, workers=w, chunk_blocks=2) for w in (0, 2)]
    assert reports[0].bad_height == 3 and "signature" in reports[0].reason
    assert summary(reports[0]) == summary(reports[1])


def test_spawned_signature_workers_find_what_forked_ones_find(ledger_path, tmp_path):
    """With a second thread running, workers are spawned instead of forked, and the report is the same."""

    def forge(records):
        w = [r for r in records if r["kind"] == "weights"][0]
        w["signature"] = ("00" if w["signature"][:2] != "00" else "11") + w["signature"][2:]

    forged = tmp_path / "forged.db"
    shutil.copy(ledger_path, forged)
    rewrite_from(forged, 3, forge)
    forked = verify_ledger(forged, workers=2, chunk_blocks=2)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        spawned = verify_ledger(forged, workers=2, chunk_blocks=2)
    finally:
        stop.set()
        thread.join()
    assert forked.bad_height == spawned.bad_height == 3 and "signature" in forked.reason
    assert (forked.blocks, forked.head_hash, forked.reason) == (spawned.blocks, spawned.head_hash, spawned.reason)


def test_signature_spelled_with_escapes_is_still_checked(ledger_path, tmp_path):
    """A worker skips only blocks that cannot hold a signature: one whose keys are spelled with JSON escapes is
    parsed and its forged signature found; a block of derived records alone counts as checked, with none bad."""
    path = tmp_path / "escaped.db"
    shutil.copy(ledger_path, path)
    (text,) = sqlite3.connect(path).execute("SELECT records FROM blocks WHERE height=3").fetchone()
    records = json.loads(text)
    w = next(r for r in records if r["kind"] == "weights")
    w["signature"] = ("00" if w["signature"][:2] != "00" else "11") + w["signature"][2:]
    escaped = json.dumps(records).replace('"signature"', '"\\u0073ignature"')
    assert "signature" not in escaped
    with sqlite3.connect(path) as c:
        c.execute("UPDATE blocks SET records=? WHERE height=3", (escaped,))
    assert check_range(str(path), 3, 4) == ([3, 4], {3: [records.index(w)]})
