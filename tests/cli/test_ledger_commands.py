"""Tests for moe/cli/ledger_commands.py through the `hivemoe ledger` command: verify's exit status and show's tables.

tests/ledger/test_verify.py covers what verify_ledger detects; here the command line around it is checked.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from moe.cli.main import main
from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, LedgerConfig

TAO = 10**9


def tao(rao: int) -> str:
    return f"{rao / TAO:,.9f}"


@pytest.fixture
def keys() -> list[Hotkey]:
    return [Hotkey.from_seed(bytes([i + 101]) * 32) for i in range(4)]


@pytest.fixture
def ledger_path(tmp_path, keys) -> Path:
    """A 9-block ledger: four registered hotkeys, two staked validators, weights, a transfer and two epochs."""
    cfg = LedgerConfig(tempo=4, max_uids=8, initial_difficulty=4, subnet_shares={1: 1.0})
    genesis = GenesisConfig(ledger=cfg, balances={k.address: (100 + 10 * i) * TAO for i, k in enumerate(keys)})
    path = tmp_path / "ledger.db"
    with Ledger.open(path, genesis) as led:
        for k in keys:
            assert led.register(k, 1)
        led.produce_block(1001.0)
        for k in keys[:2]:
            assert led.add_stake(k, 50 * TAO)
        led.produce_block(1002.0)
        for k in keys[:2]:
            assert led.set_weights(k, 1, [2, 3], [1.0, 3.0])
        assert led.transfer(keys[3], keys[2].address, 7 * TAO)
        for t in range(6):
            led.produce_block(1003.0 + t)
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["ledger", *argv])
    return rc, capsys.readouterr().out


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich tables as wide as they need (no wrapped or cut cells)."""
    monkeypatch.setenv("COLUMNS", "200")


def test_verify_returns_0_and_names_the_head(ledger_path, capsys):
    """`hivemoe ledger verify` on a clean ledger returns 0 and reports its block count, head hash and the rao its
    epochs paid out, reconciled with the accounts."""
    with Ledger.open(ledger_path) as led:
        head, height = led.head_hash, led.height
        emitted = sum(
            sum(r["miner_payouts"]) + sum(r["validator_payouts"]) + r.get("owner_payout", 0)
            for b in led.blocks()
            for r in b.records
            if r["kind"] == "epoch"
        )
    rc, out = run(capsys, "verify", str(ledger_path))
    assert rc == 0 and f"ok: {height + 1} blocks, head {head}" in out
    assert f"reconciled to the rao: {emitted / 1e9:,.9f} TAO emitted" in out


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE blocks SET timestamp = timestamp + 0.5 WHERE height = 4",
        "UPDATE blocks SET hash = '" + "0" * 64 + "' WHERE height = 4",
        "UPDATE blocks SET records = '[]' WHERE height = 4",
    ],
    ids=["timestamp", "hash", "records"],
)
def test_verify_returns_1_on_a_corrupted_block_row(ledger_path, capsys, sql):
    """After one block row is edited in the SQLite file, verify returns 1 and names that block."""
    with sqlite3.connect(ledger_path) as c:
        assert c.execute(sql).rowcount == 1
    rc, out = run(capsys, "verify", str(ledger_path))
    assert rc == 1 and "FAILED" in out and "bad block 4" in out


def test_show_prints_every_balance_and_stake(ledger_path, capsys):
    """`hivemoe ledger show` prints one row per account with its balance and stake in TAO, and the latest epoch."""
    with Ledger.open(ledger_path) as led:
        st = led.state
        want = {a: (tao(st.balances.get(a, 0)), tao(st.stakes.get(a, 0))) for a in set(st.balances) | set(st.stakes)}
        issuance = tao(st.total_issuance)
    rc, out = run(capsys, "show", str(ledger_path))
    assert rc == 0
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[0] in {a[:16] for a in want}:
            rows[cells[0]] = (cells[1], cells[2])
    assert rows == {a[:16]: v for a, v in want.items()}
    assert f"issuance {issuance} TAO" in out and "netuid 1 epoch 1" in out


def test_show_of_a_tampered_ledger_warns_and_returns_1(ledger_path, capsys):
    """show on a ledger with a bad block still prints the state before it, with a warning, and returns 1."""
    with sqlite3.connect(ledger_path) as c:
        c.execute("UPDATE blocks SET timestamp = timestamp + 0.5 WHERE height = 6")
    rc, out = run(capsys, "show", str(ledger_path))
    assert rc == 1 and "warning: bad block 6" in out and "height 5" in out and "Accounts" in out


def test_missing_file_returns_1(tmp_path, capsys):
    """verify and show of a path with no ledger return 1 and say so."""
    for command in ("verify", "show"):
        rc, out = run(capsys, command, str(tmp_path / "none.db"))
        assert rc == 1 and "no ledger file" in out


def test_missing_subcommand_is_a_usage_error(capsys):
    """`hivemoe ledger` without verify/show, or without a path, exits with argparse's status 2."""
    for argv in ([], ["verify"], ["audit", "x.db"]):
        assert main(["ledger", *argv]) == 2
    assert "usage: hivemoe ledger" in capsys.readouterr().err


def test_verify_with_a_genesis_pin(ledger_path, capsys):
    """`--genesis-hash` passes with the chain's own block 0 hash and fails, naming block 0, with any other."""
    with Ledger.open(ledger_path) as led:
        genesis_hash = next(led.blocks()).hash
    rc, out = run(capsys, "verify", str(ledger_path), "--genesis-hash", genesis_hash)
    assert rc == 0, out
    rc, out = run(capsys, "verify", str(ledger_path), "--genesis-hash", "0" * 64)
    assert rc == 1 and "FAILED" in out and "block 0" in out


@pytest.fixture
def subnets_path(tmp_path, keys) -> Path:
    """Three epochs on two subnets: netuid 1 owned, netuid 2 on commit-reveal and Yuma 3, a contribution split."""
    cfg = LedgerConfig(
        tempo=4,
        max_uids=8,
        initial_difficulty=4,
        subnet_shares={1: 1.0, 2: 1.0},
        emission_split="contribution",
        subnet_owners={1: keys[3].address},
        subnet_params={2: {"commit_reveal": True, "yuma_version": 3}},
    )
    stakes = {keys[0].address: 300 * TAO, keys[1].address: 100 * TAO}
    genesis = GenesisConfig(ledger=cfg, balances={k.address: 10 * TAO for k in keys}, stakes=stakes, timestamp=1000.0)
    path = tmp_path / "subnets.db"
    t = 1001.0
    with Ledger.open(path, genesis) as led:
        for n in (1, 2):
            for k in keys:
                assert led.register(k, n)
        salts = {}
        for epoch in range(3):
            for v in keys[:2]:
                assert led.set_weights(v, 1, [2, 3], [1.0, 3.0])
                assert led.set_weights(v, 0, [1, 2], [3.0, 1.0])
                if epoch:
                    assert led.reveal_weights(v, 2, epoch - 1, [2, 3], [1.0, 1.0], salts[v.address])
                salts[v.address] = led.commit_weights(v, 2, [2, 3], [1.0, 1.0])
            for _ in range(4):
                led.produce_block(t)
                t += 1
    return path


def test_show_prints_each_subnets_rules_uids_and_the_split(subnets_path, capsys):
    """show prints per subnet its owner, tempo, Yuma version and commit-reveal, a row per uid with incentive,
    dividends, trust, emission and stake, and the emission split in force."""
    with Ledger.open(subnets_path) as led:
        st = led.state
        ep1, ep2 = st.subnets[1].latest_epoch, st.subnets[2].latest_epoch
        owner, split = st.config.subnet_owners[1], st.latest_split
        stake0 = tao(st.stakes[ep1["hotkeys"][0]])
    rc, out = run(capsys, "show", str(subnets_path))
    assert rc == 0, out
    assert f"netuid 1: owner {owner[:16]}  tempo 4  yuma v1  commit-reveal off" in out
    assert (
        "netuid 2: owner none  tempo 4  yuma v3  commit-reveal on, reveal after 1 epoch(s)  pending commits 2" in out
    )
    assert f"owner {tao(ep1['owner_payout'])} TAO" in out and ep1["owner_payout"] > 0
    assert f"netuid 2 epoch {ep2['epoch']}" in out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 8 and cells[0].isdigit():
            rows.setdefault(int(cells[0]), []).append(cells)
    assert sorted(rows) == [0, 1, 2, 3] and all(len(r) == 2 for r in rows.values())  # a row per uid and subnet
    uid0 = rows[0][0]
    assert uid0[1] == ep1["hotkeys"][0][:16] and uid0[7] == stake0 and uid0[5] != ""  # a validator: vtrust shown
    uid3 = rows[3][0]
    assert float(uid3[2]) == pytest.approx(ep1["incentive"][3], abs=1e-4) and float(uid3[4]) == pytest.approx(1.0)
    assert "emission split (contribution, from epoch 2 root weights of 2 validator(s)): 1: 75.0%  2: 25.0%" in out
    assert split["shares"] == pytest.approx([0.75, 0.25])


def test_verify_counts_commits_reveals_and_splits(subnets_path, capsys):
    """verify of a commit-reveal ledger says how many commits, reveals and splits it replayed."""
    rc, out = run(capsys, "verify", str(subnets_path))
    assert rc == 0 and "replayed 6 commits, 4 reveals, 3 splits" in out


def test_show_before_any_split_names_the_genesis_shares(ledger_path, capsys):
    """A static ledger shows its genesis shares as the split in force."""
    rc, out = run(capsys, "show", str(ledger_path))
    assert rc == 0 and "emission split (static, genesis shares): 1: 100.0%" in out
    assert "netuid 1: owner none  tempo 4  yuma v1  commit-reveal off" in out
