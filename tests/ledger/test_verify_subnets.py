"""Tests for moe/ledger/verify.py on a ledger using per-subnet rules: owner cut, commit-reveal and a root split."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.records import reveal_record
from moe.ledger.verify import verify_ledger
from tests.ledger.test_subnet_params import OWNER, TAO, to_epoch_end
from tests.ledger.test_verify import rewrite_from

SALT = bytes(range(32))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """Six epochs: netuid 1 owned, netuid 2 commit-reveal, root weights steering a contribution split."""
    keys = [Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(8)]
    cfg = LedgerConfig(
        tempo=4,
        max_uids=8,
        immunity_period=3,
        initial_difficulty=4,
        subnet_shares={1: 1.0, 2: 1.0},
        emission_split="contribution",
        subnet_owners={1: OWNER},
        subnet_params={2: {"commit_reveal": True, "bond_alpha": 0.5}},
    )
    g = GenesisConfig(
        ledger=cfg,
        balances={k.address: 1000 * TAO for k in keys},
        stakes={keys[0].address: 300 * TAO, keys[1].address: 100 * TAO},
        timestamp=1000.0,
    )
    path = tmp_path_factory.mktemp("subnets") / "l.db"
    led = Ledger.open(path, g)
    for n in (1, 2):
        for k in keys[:5]:
            assert led.register(k, n)
    to_epoch_end(led)
    for epoch in range(1, 6):
        for v in keys[:2]:
            assert led.set_weights(v, 1, [2, 3, 4], [1.0, 2.0, float(epoch)])
            assert led.set_weights(v, 0, [1, 2], [1.0, float(epoch)])
            if epoch > 1:
                assert led.reveal_weights(v, 2, epoch - 1, [2, 3], [1.0, float(epoch - 1)], SALT)
            assert led.commit_weights(v, 2, [2, 3], [1.0, float(epoch)], salt=SALT) == SALT
        to_epoch_end(led)
    led.close()
    return path


def stored(path: Path) -> list[tuple[int, list]]:
    with sqlite3.connect(path) as c:
        return [(h, json.loads(r)) for h, r in c.execute("SELECT height, records FROM blocks ORDER BY height")]


def first(path: Path, kind: str, after: int = 0) -> int:
    """Height of the first block past `after` holding a record of `kind`."""
    return next(h for h, recs in stored(path) if h > after and any(r["kind"] == kind for r in recs))


def copy_and_rewrite(src: Path, dst: Path, height: int, edit) -> None:
    """A copy of the ledger with block `height` edited and every later block re-hashed, as a forger would."""
    dst.write_bytes(src.read_bytes())
    rewrite_from(dst, height, edit)


def test_a_ledger_using_every_feature_verifies(chain):
    """verify re-derives owner payouts, commits, reveals and splits, inline and with signature workers."""
    report = verify_ledger(chain, workers=0)
    assert report.ok, report
    kinds = {r["kind"] for _, recs in stored(chain) for r in recs}
    assert {"commit", "reveal", "split", "epoch", "emission"} <= kinds
    st = report.state
    assert st.balances[OWNER] > 0 and st.latest_split["mode"] == "contribution"
    assert st.subnets[2].latest_epoch["incentive"][3] > st.subnets[2].latest_epoch["incentive"][2]
    assert verify_ledger(chain, workers=2, chunk_blocks=4).ok


def with_record(kind: str, edit):
    def apply(records):
        edit(next(r for r in records if r["kind"] == kind))

    return apply


@pytest.mark.parametrize(
    "kind, edit, reason",
    [
        ("reveal", lambda r: r.update(salt="00" * 32), "bad signature on reveal record"),
        ("reveal", lambda r: r["weights"].__setitem__(0, 1), "bad signature on reveal record"),
        ("commit", lambda r: r.update(hash="00" * 32), "bad signature on commit record"),
        ("split", lambda r: r["shares"].__setitem__(0, r["shares"][0] + 0.01), "split record field 'shares' differs"),
        ("split", lambda r: r["validator_stakes"].__setitem__(0, 1), "split record field 'validator_stakes'"),
        ("epoch", lambda r: r.update(owner_payout=r["owner_payout"] + 1), "field 'owner_payout' differs"),
        ("epoch", lambda r: r.update(owner="dd" * 32), "field 'owner' differs"),
    ],
    ids=["reveal salt", "reveal weights", "commit hash", "split share", "split stake", "owner payout", "owner"],
)
def test_tampered_records_name_their_block(chain, tmp_path, kind, edit, reason):
    """A stored commit, reveal, split or owner payout edited (and the chain re-hashed) names its block."""
    height = first(chain, kind, after=8)
    bad = tmp_path / "bad.db"
    copy_and_rewrite(chain, bad, height, with_record(kind, edit))
    for workers in (0, 2):
        report = verify_ledger(bad, workers=workers, chunk_blocks=4)
        assert not report.ok and report.bad_height == height, (workers, report)
        assert reason in report.reason


def test_dropped_split_or_resigned_forged_reveal_is_named(chain, tmp_path):
    """A block missing its split record, or holding a reveal its own validator re-signed with other weights, is
    named: the first by the derived record count, the second by the commit it no longer matches."""
    height = first(chain, "split", after=8)
    bad = tmp_path / "nosplit.db"
    copy_and_rewrite(
        chain, bad, height, lambda recs: recs.pop(next(i for i, r in enumerate(recs) if r["kind"] == "split"))
    )
    report = verify_ledger(bad)
    assert report.bad_height == height and "derived records" in report.reason

    keys = {k.address: k for k in (Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(2))}
    height = first(chain, "reveal", after=8)

    def forge(records):
        i = next(i for i, r in enumerate(records) if r["kind"] == "reveal")
        r = records[i]
        weights = [w // 2 + 1 for w in r["weights"]]
        records[i] = reveal_record(keys[r["hotkey"]], r["netuid"], r["epoch"], r["uids"], weights, SALT)

    bad = tmp_path / "forged.db"
    copy_and_rewrite(chain, bad, height, forge)
    report = verify_ledger(bad)
    assert report.bad_height == height and "does not match the commit" in report.reason
