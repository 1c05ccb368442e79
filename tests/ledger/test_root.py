"""Tests for moe/ledger/root.py and the root weights / split records in state.py: emission split across subnets."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from moe.ledger.chain import Ledger
from moe.ledger.emission import split_between_subnets
from moe.ledger.records import RecordError
from moe.ledger.root import check_split, split_shares
from moe.ledger.verify import verify_ledger
from moe.ledger.yuma import yuma_epoch

TAO = 10**9


def root_genesis(genesis, mode: str, **changes):
    """Three subnets of equal genesis share, emission split `mode`; keys 0, 1, 2 staked 300, 100, 100 TAO."""
    cfg = dataclasses.replace(genesis.ledger, subnet_shares={1: 1.0, 2: 1.0, 3: 1.0}, emission_split=mode, **changes)
    keys = list(genesis.balances)
    stakes = {keys[0]: 300 * TAO, keys[1]: 100 * TAO, keys[2]: 100 * TAO}
    return dataclasses.replace(genesis, ledger=cfg, stakes=stakes)


def step(led: Ledger):
    return led.produce_block(led.last_timestamp + 1.0)


def to_epoch_end(led: Ledger) -> list:
    """Produce blocks up to and including the current epoch's last block; returns them."""
    out = [step(led)]
    while (led.height + 1) % led.config.tempo:
        out.append(step(led))
    return out


def records(blocks, kind: str) -> list[dict]:
    return [r for b in blocks for r in b.records if r["kind"] == kind]


# ---- pure math --------------------------------------------------------------------------------------------------


def test_contribution_split_is_the_stake_weighted_mean_of_normalized_rows():
    """Contribution shares equal a plain-Python stake-weighted mean of each validator's normalized row."""
    rows = [{1: 3, 2: 1}, {2: 5}, {1: 1, 2: 1, 3: 2}]
    stakes = [300, 100, 50]
    want = [0.0, 0.0, 0.0]
    for s, row in zip(stakes, rows, strict=True):
        for n, w in row.items():
            want[n - 1] += s / sum(stakes) * w / sum(row.values())
    assert split_shares("contribution", stakes, rows, [1, 2, 3], 0.5) == pytest.approx(want, abs=1e-12)


def test_root_split_is_yuma_incentive_over_subnets():
    """Root shares are yuma_epoch's incentive on the (validators x subnets) matrix, so a minority cannot lift a
    subnet the stake majority does not weigh."""
    rows = [{1: 3, 2: 1}, {3: 1}]
    stakes = [300, 100]
    got = split_shares("root", stakes, rows, [1, 2, 3], 0.5)
    want = yuma_epoch(np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([300.0, 100.0]), kappa=0.5).incentive
    assert got == pytest.approx(want.tolist(), abs=1e-12)
    assert got[2] == 0.0 and got[0] == pytest.approx(0.75)  # the 25% minority's subnet 3 is clipped away


def test_nobody_weighs_gives_all_zero_and_unweighed_subnets_get_zero():
    """No validators (or none weighing these netuids) gives all zeros; a subnet nobody weighs gets exactly 0."""
    assert split_shares("contribution", [], [], [1, 2], 0.5) == [0.0, 0.0]
    assert split_shares("root", [], [], [1, 2], 0.5) == [0.0, 0.0]
    assert split_shares("contribution", [5], [{7: 1}], [1, 2], 0.5) == [0.0, 0.0]
    assert split_shares("contribution", [5], [{1: 1}], [1, 2], 0.5) == [1.0, 0.0]


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda r: r.update(shares=[0.6 + 1e-6, 0.4, 0.0]), "'shares' differs"),
        (lambda r: r.update(shares=[0.6, 0.4, 1e-12]), "'shares' differs"),  # a zero share must stay 0
        (lambda r: r.update(shares=[0.6, 0.4, -0.0]), None),  # -0.0 == 0.0: harmless
        (lambda r: r.update(shares=[0.6, 0.4]), "'shares' differs"),
        (lambda r: r.update(shares=[0.6, 0.4, 0]), "'shares' differs"),  # an int
        (lambda r: r.update(validators=["ab" * 32]), "'validators' differs"),
        (lambda r: r.update(mode="root"), "'mode' differs"),
        (lambda r: r.pop("epoch"), "wrong fields"),
    ],
)
def test_check_split_names_the_differing_field(edit, reason):
    """check_split accepts replay's own record and names the first field of a tampered one."""
    want = {"kind": "split", "epoch": 3, "mode": "contribution", "netuids": [1, 2, 3], "shares": [0.6, 0.4, 0.0],
            "validators": ["cd" * 32], "validator_stakes": [5]}  # fmt: skip
    got = {**want, "shares": list(want["shares"])}
    edit(got)
    if reason is None:
        assert check_split(got, want) is got
        return
    with pytest.raises(RecordError, match=reason):
        check_split(got, want)


# ---- on a ledger ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["contribution", "root"])
def test_split_from_root_weights_applies_to_the_next_blocks_mint(tmp_path, keys, genesis, mode):
    """Root weights set in epoch 1 give a split record at its last block; minting follows the genesis shares up
    to that block and the split from the next block on; a subnet nobody weighs mints nothing."""
    led = Ledger.open(tmp_path / "r.db", root_genesis(genesis, mode))
    to_epoch_end(led)
    assert led.set_weights(keys[0], 0, [1, 2], [3.0, 1.0])
    assert led.set_weights(keys[1], 0, [2], [1.0])
    blocks = to_epoch_end(led)
    (split,) = records(blocks, "split")
    rows = {keys[0].address: {1: 65535, 2: 21845}, keys[1].address: {2: 65535}}
    stakes = [led.stake_of(a) for a in sorted(rows)]
    want = split_shares(mode, stakes, [rows[a] for a in sorted(rows)], [1, 2, 3], 0.5)
    assert split["shares"] == pytest.approx(want, abs=1e-12) and split["netuids"] == [1, 2, 3]
    assert split["validators"] == sorted([keys[0].address, keys[1].address])
    assert split["validator_stakes"] == [led.stake_of(a) for a in split["validators"]]
    if mode == "contribution":
        assert want == pytest.approx([0.5625, 0.4375, 0.0])
    assert records(blocks, "emission")[-1]["subnets"]["3"] > 0  # the epoch's own last block: genesis shares
    assert blocks[-1].records[-1] == split  # after the block's emission and epochs
    nxt = step(led)
    (em,) = records([nxt], "emission")
    per = split_between_subnets(em["minted"], dict(zip(split["netuids"], split["shares"], strict=True)))
    assert em["subnets"] == {str(n): a for n, a in per.items()} and em["subnets"]["3"] == 0
    assert led.state.latest_split == split
    assert verify_ledger(led.path).ok
    led.close()


def test_no_split_without_root_weights(tmp_path, genesis):
    """Until some staked validator sets root weights there is no split record and the genesis shares apply."""
    led = Ledger.open(tmp_path / "r.db", root_genesis(genesis, "contribution"))
    blocks = to_epoch_end(led) + to_epoch_end(led)
    assert records(blocks, "split") == [] and led.state.latest_split is None
    em = records(blocks, "emission")[-1]
    assert em["subnets"] == {str(n): a for n, a in split_between_subnets(em["minted"], {1: 1, 2: 1, 3: 1}).items()}
    led.close()


def test_top_max_validators_by_stake_are_counted(tmp_path, keys, genesis):
    """With max_validators 2 the smallest of three root validators is left out of the split."""
    led = Ledger.open(tmp_path / "r.db", root_genesis(genesis, "contribution", max_validators=2))
    assert led.add_stake(keys[2], 50 * TAO)  # keys 0, 1, 2 now stake 300, 100, 150
    to_epoch_end(led)
    assert led.set_weights(keys[0], 0, [1], [1.0])
    assert led.set_weights(keys[1], 0, [2], [1.0])
    assert led.set_weights(keys[2], 0, [3], [1.0])
    (split,) = records(to_epoch_end(led), "split")
    assert sorted(split["validators"]) == sorted([keys[0].address, keys[2].address])
    assert split["shares"] == pytest.approx([300 / 450, 0.0, 150 / 450])
    led.close()


def test_root_weights_rules(tmp_path, keys, genesis, caplog):
    """Root weights need stake but no registration, name only subnets, follow the rate limit, and are never
    subject to commit-reveal; with a static split netuid 0 is no subnet at all."""
    g = root_genesis(genesis, "root", commit_reveal=True)
    led = Ledger.open(tmp_path / "r.db", g)
    with caplog.at_level(logging.WARNING, logger="moe.ledger"):
        assert led.set_weights(keys[0], 0, [1, 3], [1.0, 1.0])  # not registered anywhere: fine
        assert not led.set_weights(keys[0], 0, [2], [1.0])
        assert "already set weights on netuid 0" in caplog.text
        assert not led.set_weights(keys[3], 0, [1], [1.0])
        assert "has no stake" in caplog.text
        assert not led.set_weights(keys[1], 0, [4], [1.0])
        assert "netuid 4, which is not a subnet" in caplog.text
        assert not led.set_weights(keys[1], 1, [0], [1.0])  # the subnets themselves use commit-reveal
        assert "netuid 1 uses commit-reveal" in caplog.text
    led.close()
    static = Ledger.open(tmp_path / "s.db", root_genesis(genesis, "static"))
    assert not static.set_weights(keys[0], 0, [1], [1.0])
    assert "unknown netuid 0" in caplog.text
    static.close()


def test_split_follows_changed_root_weights(tmp_path, keys, genesis):
    """A later epoch's root weights give a new split, which replaces the old one from the next block on."""
    led = Ledger.open(tmp_path / "r.db", root_genesis(genesis, "contribution"))
    to_epoch_end(led)
    assert led.set_weights(keys[0], 0, [1], [1.0])
    (first,) = records(to_epoch_end(led), "split")
    assert led.set_weights(keys[0], 0, [2, 3], [1.0, 1.0])
    (second,) = records(to_epoch_end(led), "split")
    assert first["shares"] == [1.0, 0.0, 0.0] and second["shares"] == pytest.approx([0.0, 0.5, 0.5])
    em = records([step(led)], "emission")[0]
    assert em["subnets"]["1"] == 0 and abs(em["subnets"]["2"] - em["subnets"]["3"]) <= 1
    assert verify_ledger(led.path).ok
    led.close()
