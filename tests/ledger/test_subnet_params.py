"""Tests for per-subnet hyperparameters and the owner cut (moe/ledger/genesis.py LedgerConfig, state.py)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from moe.ledger import block_end as block_end_module
from moe.ledger.chain import Ledger, block_hash, genesis_block
from moe.ledger.emission import split_emission
from moe.ledger.genesis import GenesisConfig
from moe.ledger.records import RecordError
from moe.ledger.verify import verify_ledger
from moe.ledger.yuma import yuma_epoch

TAO = 10**9
OWNER = "ee" * 32


def with_config(genesis: GenesisConfig, **changes) -> GenesisConfig:
    return dataclasses.replace(genesis, ledger=dataclasses.replace(genesis.ledger, **changes))


def step(led: Ledger):
    return led.produce_block(led.last_timestamp + 1.0)


def to_epoch_end(led: Ledger) -> None:
    """Produce blocks up to and including the next epoch's last block."""
    step(led)
    while (led.height + 1) % led.config.tempo:
        step(led)


# ---- genesis ----------------------------------------------------------------------------------------------------


def test_default_genesis_record_has_no_new_fields(genesis):
    """A config on the defaults writes exactly the fields it always did, so existing chains keep their hash."""
    cfg = genesis.ledger.to_dict()
    assert "subnet_params" not in cfg and "owner_cut" not in cfg and "emission_split" not in cfg
    assert len(cfg) == 21


def test_new_fields_round_trip_through_the_genesis_record(genesis):
    """Set fields appear in the record with string netuids, parse back to the same config, and change the hash."""
    custom = with_config(
        genesis,
        subnet_owners={1: OWNER},
        owner_cut=0.25,
        subnet_params={2: {"max_uids": 2, "commit_reveal": True, "yuma_version": 3}},
    )
    cfg = custom.record()["config"]
    assert cfg["subnet_owners"] == {"1": OWNER} and cfg["subnet_params"]["2"]["max_uids"] == 2
    parsed = GenesisConfig.from_record(json.loads(json.dumps(custom.record())))
    assert parsed.ledger == custom.ledger
    assert genesis_block(custom).hash != genesis_block(genesis).hash


def test_params_resolve_overrides_over_globals(genesis):
    """params(netuid) takes the subnet's overrides and the global value for everything else."""
    cfg = with_config(genesis, kappa=0.6, subnet_owners={2: OWNER}, subnet_params={2: {"kappa": 0.8}}).ledger
    p1, p2 = cfg.params(1), cfg.params(2)
    assert (p1.kappa, p2.kappa) == (0.6, 0.8)
    assert (p1.owner, p2.owner) == (None, OWNER)
    assert p1.max_uids == p2.max_uids == genesis.ledger.max_uids


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"emission_split": "stake"}, "'emission_split' must be one of static, contribution, root"),
        ({"emission_split": 1}, "'emission_split' must be one of"),
        ({"emission_split": "root", "subnet_shares": {"0": 1.0, "1": 1.0}}, "netuid 0 is the root network"),
        ({"subnet_params": {"1": {"tempo": 3}}}, "unknown subnet_params[1] key(s): 'tempo'"),
        ({"subnet_params": {"1": {"max_uids": 4097}}}, "'max_uids' must be <= 4096"),
        ({"subnet_params": {"1": {"commit_reveal": 1}}}, "'commit_reveal' must be true or false"),
        ({"subnet_params": {"1": {"kappa": 1.5}}}, "'kappa' must be in [0.0, 1.0]"),
        ({"subnet_params": {"1": {"alpha_low": 0.95}}}, "alpha_low 0.95 is above alpha_high 0.9"),
        ({"subnet_params": {"1": []}}, "subnet_params[1] must be an object"),
        ({"subnet_params": {"9": {}}}, "subnet_params key '9' is not a netuid of subnet_shares"),
        ({"subnet_params": {"01": {}}}, "subnet_params key '01' is not a netuid"),
        ({"subnet_owners": {"1": "nobody"}}, "subnet_owners[1] must be a hex address"),
        ({"subnet_owners": {"1": OWNER.upper()}}, "subnet_owners[1] must be a hex address"),
        ({"owner_cut": 1.5}, "'owner_cut' must be in [0.0, 1.0]"),
        ({"owner_cut": True}, "'owner_cut' must be a finite number"),
        ({"yuma_version": 2}, "'yuma_version' must be 1 or 3"),
        ({"liquid_alpha": "yes"}, "'liquid_alpha' must be true or false"),
        ({"reveal_period_epochs": 0}, "'reveal_period_epochs' must be >= 1"),
        ({"reveal_period_epochs": 101}, "'reveal_period_epochs' must be <= 100"),
        ({"alpha_sigmoid_steepness": float("inf")}, "'alpha_sigmoid_steepness' must be a finite number"),
    ],
)
def test_crafted_genesis_values_are_refused_in_one_line(tmp_path, genesis, changes, reason):
    """A genesis record with a bad split mode, unknown override key, bad owner or out-of-range value is refused
    with one line naming it, by the parser and by verify (block 0)."""
    record = genesis.record()
    record["config"].update(changes)
    with pytest.raises(RecordError) as e:
        GenesisConfig.from_record(record)
    assert reason in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "crafted.db"
    Ledger.open(path, genesis).close()
    with sqlite3.connect(path) as c:
        try:
            new_hash = block_hash(0, "0" * 64, genesis.timestamp, [record])
        except ValueError:  # an infinite value has no canonical form; the row is refused as JSON first
            new_hash = "0" * 64
        c.execute("UPDATE blocks SET records=?, hash=? WHERE height=0", (json.dumps([record]), new_hash))
    report = verify_ledger(path)
    assert not report.ok and report.bad_height == 0 and "\n" not in report.reason
    assert reason in report.reason or "not valid JSON" in report.reason


# ---- per-subnet rules take effect -------------------------------------------------------------------------------


def test_max_uids_prunes_on_its_subnet_only(tmp_path, keys, genesis):
    """max_uids 2 on netuid 2 prunes there while netuid 1 (8 uids) keeps everyone; one hotkey holds uids on both."""
    g = with_config(genesis, subnet_params={2: {"max_uids": 2, "immunity_period": 0}})
    led = Ledger.open(tmp_path / "p.db", g)
    for k in keys[:3]:
        assert led.register(k, 1)
    for k in keys[:2]:
        assert led.register(k, 2)
    step(led)
    assert led.state.subnets[2].registry.max_uids == 2 and led.state.subnets[1].registry.max_uids == 8
    assert led.uid(1, keys[0].address) == 0 and led.uid(2, keys[0].address) == 0
    assert led.register(keys[3], 2)  # full: prunes uid 0 (lowest score, oldest)
    assert led.register(keys[3], 1)
    step(led)
    assert led.uid(2, keys[0].address) is None and led.uid(2, keys[3].address) == 0
    assert [led.uid(1, k.address) for k in keys[:4]] == [0, 1, 2, 3]
    assert led.state.subnets[2].bonds == {} or all(b.shape == (2,) for b in led.state.subnets[2].bonds.values())
    to_epoch_end(led)
    assert len(led.state.subnets[2].latest_epoch["uids"]) == 2
    assert verify_ledger(led.path).ok
    led.close()


def test_immunity_per_subnet(tmp_path, keys, genesis):
    """A full one-uid subnet with a long immunity refuses a newcomer; one with no immunity prunes for it."""
    g = with_config(
        genesis, subnet_params={1: {"max_uids": 1, "immunity_period": 100}, 2: {"max_uids": 1, "immunity_period": 0}}
    )
    led = Ledger.open(tmp_path / "p.db", g)
    assert led.register(keys[0], 1) and led.register(keys[0], 2)
    step(led)
    assert not led.register(keys[1], 1)  # the only uid is immune for 100 blocks
    assert led.register(keys[1], 2)
    step(led)
    assert (
        led.uid(1, keys[0].address) == 0 and led.uid(2, keys[1].address) == 0 and led.uid(2, keys[0].address) is None
    )
    led.close()


def test_target_registrations_per_subnet(tmp_path, keys, genesis):
    """Two registrations in an interval leave netuid 1 (target 2) as it was and raise netuid 2 (target 1) by half."""
    g = with_config(genesis, adjustment_interval=4, subnet_params={2: {"target_registrations": 1}})
    led = Ledger.open(tmp_path / "p.db", g)
    for n in (1, 2):
        for k in keys[:2]:
            assert led.register(k, n)
    to_epoch_end(led)  # height 3 closes the first adjustment interval
    s1, s2 = led.state.subnets[1], led.state.subnets[2]
    assert (s1.difficulty, s1.burn) == (4, TAO)
    assert (s2.difficulty, s2.burn) == (6, 3 * TAO // 2)
    led.close()


def test_yuma_settings_reach_yuma_epoch(tmp_path, keys, genesis, monkeypatch):
    """Each subnet's epoch calls yuma_epoch with that subnet's kappa, bonds and Yuma settings; a subnet on the
    defaults is called exactly as before per-subnet settings (no new keywords)."""
    calls = []

    def recording(W, S, B, **kw):
        calls.append(kw)
        base = {k: kw[k] for k in ("kappa", "bond_alpha", "bond_penalty")}
        return yuma_epoch(W, S, B, **base)

    monkeypatch.setattr(block_end_module, "yuma_epoch", recording)
    yuma3 = {"yuma_version": 3, "liquid_alpha": True, "alpha_low": 0.6, "alpha_high": 0.8}
    g = with_config(genesis, subnet_params={2: {"kappa": 0.7, "bond_alpha": 0.3, **yuma3}})
    led = Ledger.open(tmp_path / "p.db", g)
    to_epoch_end(led)
    assert calls == [
        {"kappa": 0.5, "bond_alpha": 0.1, "bond_penalty": 1.0},
        {"kappa": 0.7, "bond_alpha": 0.3, "bond_penalty": 1.0, **yuma3, "alpha_sigmoid_steepness": 1000.0},
    ]
    led.close()


def test_a_yuma3_subnet_runs_and_verifies(tmp_path, keys, genesis):
    """A chain with a Yuma-3, liquid-alpha subnet next to a Yuma-1 one pays out exactly and verifies."""
    g = with_config(genesis, subnet_params={2: {"yuma_version": 3, "liquid_alpha": True}})
    led = Ledger.open(tmp_path / "y3.db", g)
    for n in (1, 2):
        for k in keys[:5]:
            assert led.register(k, n)
    for k in keys[:2]:
        assert led.add_stake(k, 100 * TAO)
    to_epoch_end(led)
    for _ in range(3):
        for n in (1, 2):
            for k in keys[:2]:
                assert led.set_weights(k, n, [2, 3, 4], [1.0, 2.0, 4.0])
        to_epoch_end(led)
    for n in (1, 2):
        ep = led.state.subnets[n].latest_epoch
        assert sum(ep["miner_payouts"]) + sum(ep["validator_payouts"]) == ep["emission"]
        assert ep["incentive"][4] > ep["incentive"][2]
    assert verify_ledger(led.path).ok
    led.close()


# ---- owner cut --------------------------------------------------------------------------------------------------


def test_owner_cut_is_paid_exactly(tmp_path, keys, genesis):
    """An owned subnet's owner gets floor(owner_cut * mint) of every block's mint at the epoch end; the payouts
    and what is still pending add up to the minted rao, and a subnet without an owner records no owner fields."""
    g = with_config(genesis, subnet_owners={1: OWNER}, owner_cut=0.18)
    led = Ledger.open(tmp_path / "o.db", g)
    for k in keys[:4]:
        assert led.register(k, 1)
    assert led.add_stake(keys[0], 100 * TAO)
    minted = {1: 0, 2: 0}
    owner_due = 0
    blocks = []
    for _ in range(2 * g.ledger.tempo):  # two epochs
        blk = step(led)
        blocks.append(blk)
        em = next(r for r in blk.records if r["kind"] == "emission")
        for n in minted:
            minted[n] += em["subnets"][str(n)]
        owner_due += split_emission(em["subnets"]["1"], 0.18)[0]
        if len(blocks) == 3:
            assert led.set_weights(keys[0], 1, [1, 2], [1.0, 1.0])
    epochs = [r for b in blocks for r in b.records if r["kind"] == "epoch" and r["netuid"] == 1]
    others = [r for b in blocks for r in b.records if r["kind"] == "epoch" and r["netuid"] == 2]
    assert len(epochs) == 2 and all(r["owner"] == OWNER for r in epochs)
    assert all("owner" not in r and "owner_payout" not in r for r in others)
    paid_owner = sum(r["owner_payout"] for r in epochs)
    sub = led.state.subnets[1]
    assert paid_owner > 0 and led.balance(OWNER) == paid_owner
    assert paid_owner + sub.owner_pending == owner_due  # block 8's cut waits for the next epoch
    paid = paid_owner + sum(sum(r["miner_payouts"]) + sum(r["validator_payouts"]) for r in epochs)
    assert paid + sub.pending + sub.owner_pending == minted[1]
    last = next(r for r in blocks[-1].records if r["kind"] == "emission")["subnets"]["1"]
    assert sub.pending + sub.owner_pending == last  # nothing carried past an epoch: validators existed
    st = led.state
    pending = sum(s.pending + s.owner_pending for s in st.subnets.values())
    assert st.total_issuance == sum(st.balances.values()) + sum(st.stakes.values()) + pending
    assert verify_ledger(led.path).ok
    led.close()


def test_owner_cut_zero_and_full(tmp_path, keys, genesis):
    """owner_cut 0 pays the owner nothing (its fields still recorded), 1 pays it the whole subnet emission."""
    for cut in (0.0, 1.0):
        g = with_config(genesis, subnet_owners={2: OWNER}, owner_cut=cut)
        led = Ledger.open(tmp_path / f"o{cut}.db", g)
        to_epoch_end(led)
        ep = led.state.subnets[2].latest_epoch
        minted = sum(r["subnets"]["2"] for b in led.blocks(1) for r in b.records if r["kind"] == "emission")
        assert ep["owner_payout"] == (0 if cut == 0 else minted)
        assert ep["emission"] == minted - ep["owner_payout"]
        led.close()
