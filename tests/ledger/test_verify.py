"""Tests for moe/ledger/verify.py and cli.py: tampering is caught and named, a killed writer leaves a valid file."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
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
from moe.ledger.emission import MAX_SUPPLY_RAO
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.sigcheck import ParallelSignatures, check_range, claim_chunks
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


def test_a_block_repeating_the_last_emission_record_after_a_halving_is_refused(tmp_path, keys):
    """The replay compares a block's emission record with the mint it expects only once while both stay the same
    (later blocks share the parsed record); a forger who repeats the pre-halving record, byte for byte, in the
    first block after the halving is still caught there."""
    half_cap = MAX_SUPPLY_RAO // 2
    cfg = LedgerConfig(tempo=100, max_uids=8, subnet_shares={1: 1.0})
    genesis = GenesisConfig(ledger=cfg, balances={keys[0].address: half_cap - 3 * TAO}, timestamp=1000.0)
    path = tmp_path / "halving.db"
    led = Ledger.open(path, genesis)
    for t in range(6):
        led.produce_block(1001.0 + t)
    led.close()
    texts = [r[4] for r in rows(path)]
    minted = [json.loads(t)[0]["minted"] for t in texts[1:]]
    assert minted == [TAO, TAO, TAO, TAO // 2, TAO // 2, TAO // 2]  # block 4 is the first after the halving
    assert verify_ledger(path).ok
    with sqlite3.connect(path) as c:
        prev = c.execute("SELECT hash FROM blocks WHERE height=3").fetchone()[0]
        for h, _, _, ts, text in rows(path)[4:]:
            text = texts[3] if h == 4 else text  # the very text of block 3, so a replay shares its parsed record
            new = block_hash(h, prev, ts, json.loads(text))
            c.execute("UPDATE blocks SET prev_hash=?, hash=?, records=? WHERE height=?", (prev, new, text, h))
            prev = new
    report = verify_ledger(path)
    assert report.bad_height == 4 and "emission record differs" in report.reason


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
    try:  # chunk 0 is the replay's own; a later one is the worker's, or the replay's if it got there first
        assert sigs.bad_at(1) is None and sigs.bad_at(3) in (None, [1]) and not sigs.bad_at(4)
    finally:
        sigs.close()
    reports = [verify_ledger(forged, workers=w, chunk_blocks=2) for w in (0, 2)]
    assert reports[0].bad_height == 3 and "signature" in reports[0].reason
    assert summary(reports[0]) == summary(reports[1])


def forge_first_weights(records):
    w = [r for r in records if r["kind"] == "weights"][0]
    w["signature"] = ("00" if w["signature"][:2] != "00" else "11") + w["signature"][2:]


def test_a_worker_claims_the_chunks_in_order_and_names_the_forged_signature(ledger_path, tmp_path):
    """A worker's loop claims every chunk after the replay's first one, in order, and reports each chunk's
    verdicts, the forged signature of block 3 among them."""
    forged = tmp_path / "forged.db"
    shutil.copy(ledger_path, forged)
    rewrite_from(forged, 3, forge_first_weights)
    counter, claimed, out = multiprocessing.Value("q", 1), [-1], queue.Queue()
    claim_chunks(str(forged), 0, 2, 7, 0, counter, claimed, out)
    results = [out.get_nowait() for _ in range(out.qsize())]
    assert [c for c, _ in results] == [1, 2, 3, 4, 5, 6] and counter.value == 7 and claimed == [6]
    assert results[0][1] == ([2, 3], {3: [0]}) and all(
        r == ([h for h in (2 * c, 2 * c + 1) if h <= 12], {}) for c, r in results[1:]
    )


def test_the_replay_checks_the_chunks_nobody_claimed_and_outlives_a_killed_worker(ledger_path, tmp_path):
    """With no worker, or one killed at once, every verdict is None (the replay checks inline) or right, and the
    replay never waits for a chunk that will not come; verification reports the forged block either way."""
    forged = tmp_path / "forged.db"
    shutil.copy(ledger_path, forged)
    rewrite_from(forged, 3, forge_first_weights)
    alone = ParallelSignatures(forged, 0, 12, workers=0, chunk_blocks=2)
    try:
        assert all(alone.bad_at(h) is None for h in range(13))
    finally:
        alone.close()
    killed = ParallelSignatures(forged, 0, 12, workers=1, chunk_blocks=2)
    try:
        os.kill(killed._workers[0].pid, signal.SIGKILL)
        verdicts = [killed.bad_at(h) for h in range(13)]
        assert verdicts[3] in (None, [0]) and all(v is None or not v for i, v in enumerate(verdicts) if i != 3)
    finally:
        killed.close()
    report = verify_ledger(forged, workers=1, chunk_blocks=2)
    assert report.bad_height == 3 and "signature" in report.reason


def test_the_replay_checks_its_first_chunk_without_waiting_for_a_worker(ledger_path):
    """Chunk 0 is the replay's own: its verdicts come back at once (None: check inline) even while the only worker
    is stalled, instead of after the workers have finished every other chunk."""
    sigs = ParallelSignatures(ledger_path, 0, 12, workers=1, chunk_blocks=2)
    pid, verdicts = sigs._workers[0].pid, []
    os.kill(pid, signal.SIGSTOP)
    try:
        reader = threading.Thread(target=lambda: verdicts.append([sigs.bad_at(0), sigs.bad_at(1)]), daemon=True)
        reader.start()
        reader.join(timeout=30)  # a guard against hanging, not a speed check: the stalled worker never finishes
        assert verdicts == [[None, None]]
    finally:
        os.kill(pid, signal.SIGCONT)
        sigs.close()


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
