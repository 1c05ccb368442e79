"""Tests for moe/ledger/state.py: the transition functions applied directly, without the Ledger's SQLite blocks."""

from __future__ import annotations

import numpy as np
import pytest

from moe.ledger.block_end import end_block
from moe.ledger.emission import block_emission, split_between_subnets
from moe.ledger.records import (
    RecordError,
    pow_registration_record,
    registration_record,
    stake_record,
    transfer_record,
    weights_record,
)
from moe.ledger.state import LedgerState, apply_signed, genesis_state
from moe.ledger.weights import WeightSubmission

TAO = 10**9
HASH0 = "ab" * 32


def snapshot(st: LedgerState) -> dict:
    """Everything a record or a block can change, as plain comparable values."""
    return {
        "balances": dict(st.balances),
        "stakes": dict(st.stakes),
        "nonces": dict(st.nonces),
        "issuance": st.total_issuance,
        "burned": st.burned,
        "head": (st.height, st.head_hash, dict(st.recent_hashes), list(st._recent_order)),
        "subnets": {
            n: (
                {u: (s.hotkey, s.registered_at, s.score) for u, s in sub.registry.slots.items()},
                sub.difficulty,
                sub.burn,
                sub.registrations,
                sub.pending,
                dict(sub.weights),
                dict(sub.last_set),
                {h: b.tolist() for h, b in sub.bonds.items()},
                sub.last_epoch_height,
                sub.latest_epoch,
            )
            for n, sub in st.subnets.items()
        },
    }


@pytest.fixture
def state(genesis) -> LedgerState:
    """The state after block 0, as the chain leaves it (genesis applied, its hash remembered, journal empty)."""
    st = genesis_state(genesis.record())
    st.remember_hash(0, HASH0)
    st.commit()
    return st


def register(st: LedgerState, hotkey, netuid: int, height: int) -> None:
    rec = pow_registration_record(hotkey, netuid, st.head_hash, st.subnets[netuid].difficulty)
    apply_signed(st, rec, height)


def test_genesis_state_holds_the_allocation(genesis, keys):
    """genesis_state gives each address its balance and stake, counts them in issuance, and opens every subnet."""
    genesis.stakes = {keys[0].address: 7 * TAO}
    st = genesis_state(genesis.record())
    assert st.balances == {k.address: 1000 * TAO for k in keys} and st.stakes == {keys[0].address: 7 * TAO}
    assert st.total_issuance == 8000 * TAO + 7 * TAO and st.burned == 0
    assert st.chain_id == genesis.chain_id and st.config == genesis.ledger
    assert sorted(st.subnets) == [1, 2]
    for sub in st.subnets.values():
        assert sub.registry.slots == {} and sub.pending == 0
        assert (sub.difficulty, sub.burn) == (genesis.ledger.initial_difficulty, genesis.ledger.initial_burn)
    assert st.dirty == {k.address for k in keys} and st.height == -1
    assert st.mark() == 0  # nothing to undo past genesis


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda r: r["balances"].update({"not-an-address": 5}), "not-an-address"),
        (lambda r: r["balances"].update({"ab" * 32: -1}), "balances"),
        (lambda r: r["stakes"].update({"ab" * 32: True}), "stakes"),
        (lambda r: r["config"].update({"tempo_typo": 3}), "tempo_typo"),
        (lambda r: r.pop("chain_id"), "chain_id"),
    ],
)
def test_malformed_genesis_is_a_record_error(genesis, edit, reason):
    """A genesis record with a bad address, amount, config key or a missing field raises RecordError naming it."""
    rec = genesis.record()
    edit(rec)
    with pytest.raises(RecordError, match="malformed genesis") as e:
        genesis_state(rec)
    assert reason in str(e.value)


def test_register_by_pow_and_by_burn(state, keys):
    """A PoW registration takes the lowest free uid; a burn registration also debits, burns and lowers issuance."""
    before = state.total_issuance
    register(state, keys[0], 1, height=1)
    cost = state.subnets[2].burn
    apply_signed(state, registration_record(keys[1], 2, HASH0, burn=cost), 1)
    apply_signed(state, registration_record(keys[2], 2, HASH0, burn=cost), 1)
    assert state.subnets[1].registry.uid_of(keys[0].address) == 0
    assert [state.subnets[2].registry.uid_of(k.address) for k in keys[1:3]] == [0, 1]
    assert state.balances[keys[0].address] == 1000 * TAO
    assert state.balances[keys[1].address] == 1000 * TAO - cost
    assert state.total_issuance == before - 2 * cost and state.burned == 2 * cost
    assert (state.subnets[1].registrations, state.subnets[2].registrations) == (1, 2)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda k, st: registration_record(k, 9, HASH0, burn=st.subnets[1].burn), "unknown netuid 9"),
        (lambda k, st: registration_record(k, 1, "cd" * 32, burn=st.subnets[1].burn), "block hash"),
        (lambda k, st: registration_record(k, 1, HASH0, burn=st.subnets[1].burn - 1), "below the subnet's cost"),
        (lambda k, st: registration_record(k, 1, HASH0, burn=1001 * TAO), "cannot cover a burn"),
        (lambda k, st: {**registration_record(k, 1, HASH0, burn=TAO), "nonce": 0}, "bad signature"),
    ],
)
def test_bad_registrations_are_rejected_unchanged(state, keys, make, reason):
    """Unknown netuids, stale block hashes, short burns, overdrafts and forgeries raise RecordError, changing
    nothing."""
    before = snapshot(state)
    with pytest.raises(RecordError, match=reason):
        apply_signed(state, make(keys[0], state), 1)
    assert snapshot(state) == before


def test_pow_below_difficulty_and_second_registration_rejected(state, keys):
    """A seal that misses the difficulty is refused, and a hotkey cannot take a second uid on one subnet."""
    state.subnets[1].difficulty = 2**255  # no small nonce meets this
    with pytest.raises(RecordError, match="difficulty"):
        apply_signed(state, registration_record(keys[0], 1, HASH0, nonce=0), 1)
    state.subnets[1].difficulty = 1
    apply_signed(state, registration_record(keys[0], 1, HASH0, nonce=0), 1)
    with pytest.raises(RecordError):
        apply_signed(state, registration_record(keys[0], 1, HASH0, nonce=1), 1)
    assert list(state.subnets[1].registry.slots) == [0]


def test_stake_and_transfer_move_rao_and_bump_nonces(state, keys):
    """Staking moves balance to stake, unstaking back, a transfer moves balance; each record advances its nonce."""
    a, b = keys[0], keys[1]
    apply_signed(state, stake_record(a, 10 * TAO, 0), 1)
    apply_signed(state, stake_record(a, -4 * TAO, 1), 1)
    apply_signed(state, transfer_record(a, b.address, 5 * TAO, 2), 1)
    apply_signed(state, transfer_record(b, a.address, 1, 0), 1)
    assert state.stakes[a.address] == 6 * TAO
    assert state.balances[a.address] == (1000 - 6 - 5) * TAO + 1
    assert state.balances[b.address] == 1005 * TAO - 1
    assert state.nonces == {a.address: 3, b.address: 1}
    assert state.total_issuance == sum(state.balances.values()) + sum(state.stakes.values())


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda a, b: stake_record(a, TAO, 1), "nonce 1"),  # from the future
        (lambda a, b: transfer_record(a, b.address, TAO, 3), "nonce 3"),
        (lambda a, b: stake_record(a, 1000 * TAO + 1, 0), "cannot cover a stake"),
        (lambda a, b: stake_record(a, -1, 0), "cannot cover an unstake"),
        (lambda a, b: stake_record(a, 0, 0), "non-zero"),
        (lambda a, b: transfer_record(a, b.address, 1000 * TAO + 1, 0), "cannot cover a transfer"),
        (lambda a, b: transfer_record(a, b.address, 0, 0), "must be >= 1"),
        (lambda a, b: {**transfer_record(a, b.address, TAO, 0), "amount": 2 * TAO}, "bad signature"),
        (lambda a, b: {**transfer_record(a, b.address, TAO, 0), "dst": "cd" * 32}, "bad signature"),
        (lambda a, b: {**transfer_record(a, b.address, TAO, 0), "dst": "nobody"}, "'dst' must be 64 lowercase hex"),
        (lambda a, b: {"kind": "mint", "amount": 5}, "unknown or non-signed"),
        (lambda a, b: [1, 2], "JSON object"),
    ],
)
def test_bad_stakes_and_transfers_are_rejected_unchanged(state, keys, make, reason):
    """Wrong nonces, overdrafts, zero amounts, forgeries and unknown kinds raise RecordError; nothing changes."""
    before = snapshot(state)
    with pytest.raises(RecordError, match=reason):
        apply_signed(state, make(keys[0], keys[1]), 1)
    assert snapshot(state) == before


def test_replayed_record_is_rejected(state, keys):
    """A stake or transfer applied once cannot be applied again: its nonce is spent."""
    for rec in (stake_record(keys[0], TAO, 0), transfer_record(keys[0], keys[1].address, TAO, 1)):
        apply_signed(state, rec, 1)
        before = snapshot(state)
        with pytest.raises(RecordError, match="nonce"):
            apply_signed(state, rec, 2)
        assert snapshot(state) == before


def test_signature_check_can_be_skipped_or_replaced(state, keys):
    """check_signature=False applies a forged record (local replay only); a callable's verdict replaces the check."""
    forged = {**transfer_record(keys[0], keys[1].address, TAO, 0), "amount": 2 * TAO}
    with pytest.raises(RecordError, match="bad signature"):
        apply_signed(state, transfer_record(keys[0], keys[1].address, TAO, 0), 1, check_signature=lambda r: False)
    apply_signed(state, forged, 1, check_signature=False)
    assert state.balances[keys[1].address] == 1002 * TAO


def test_rollback_to_a_mark_undoes_everything_after_it(state, keys):
    """rollback(mark) restores the state exactly as it was at the mark, and rollback() back to the last commit."""
    at_commit = snapshot(state)
    register(state, keys[0], 1, 1)
    apply_signed(state, stake_record(keys[0], 50 * TAO, 0), 1)
    end_block(state, 1)
    state.remember_hash(1, "01" * 32)
    mark, at_mark = state.mark(), snapshot(state)
    register(state, keys[1], 1, 2)
    apply_signed(state, registration_record(keys[2], 2, HASH0, burn=state.subnets[2].burn), 2)
    apply_signed(state, transfer_record(keys[1], keys[3].address, 3 * TAO, 0), 2)
    apply_signed(state, weights_record(WeightSubmission.create(keys[0], 1, 0, [1], [1.0])), 2)
    end_block(state, 2)
    state.remember_hash(2, "02" * 32)
    end_block(state, 3)  # an epoch: Yuma, payouts and new bonds
    assert snapshot(state) != at_mark and state.subnets[1].latest_epoch is not None
    state.rollback(mark)
    assert snapshot(state) == at_mark
    state.rollback()
    assert snapshot(state) == at_commit and state.mark() == 0


def test_commit_makes_changes_permanent(state, keys):
    """After commit, rollback has nothing left to undo."""
    apply_signed(state, stake_record(keys[0], TAO, 0), 1)
    state.commit()
    after = snapshot(state)
    state.rollback()
    assert snapshot(state) == after


def test_copy_is_independent(state, keys):
    """A copy shares nothing with the original: changing, or rolling back, either leaves the other as it was."""
    register(state, keys[0], 1, 1)
    apply_signed(state, stake_record(keys[0], 50 * TAO, 0), 1)
    end_block(state, 1)
    end_block(state, 2)
    end_block(state, 3)  # bonds now exist (numpy arrays)
    state.commit()
    before = snapshot(state)
    c = state.copy()
    assert snapshot(c) == before and c.mark() == 0
    apply_signed(c, transfer_record(keys[0], keys[1].address, TAO, 1), 4)
    register(c, keys[1], 1, 4)
    c.subnets[1].bonds[keys[0].address][0] = 0.123
    end_block(c, 4)
    assert snapshot(state) == before
    c_before = snapshot(c)
    apply_signed(state, stake_record(keys[1], TAO, 0), 4)
    register(state, keys[2], 1, 4)
    assert snapshot(c) == c_before
    state.rollback()
    assert snapshot(state) == before and snapshot(c) == c_before


def test_end_block_mints_the_block_emission(state):
    """Each block mints block_emission(issuance), split between subnets by their shares, held as pending."""
    issued = state.total_issuance
    (rec,) = end_block(state, 1)
    minted = block_emission(issued)
    per = split_between_subnets(minted, {1: 3.0, 2: 1.0})
    assert rec == {"kind": "emission", "minted": minted, "subnets": {"1": per[1], "2": per[2]}}
    assert state.total_issuance == issued + minted
    assert (state.subnets[1].pending, state.subnets[2].pending) == (per[1], per[2])
    assert per[1] == 3 * per[2]


def test_epoch_pays_out_exactly_the_epochs_emission(state, keys):
    """At an epoch boundary each subnet's payouts sum to its emission to the rao and land in the balances."""
    for k in keys[:5]:
        register(state, k, 1, 1)
    for k in keys[:2]:
        apply_signed(state, stake_record(k, 100 * TAO, 0), 1)
    minted = {1: 0, 2: 0}
    for height in (1, 2):
        if height == 2:
            for k, w in zip(keys[:2], ([1.0, 1.0, 2.0], [1.0, 2.0, 2.0]), strict=True):
                apply_signed(state, weights_record(WeightSubmission.create(k, 1, 0, [2, 3, 4], w)), 2)
        (em,) = end_block(state, height)
        for n in minted:
            minted[n] += em["subnets"][str(n)]
        state.remember_hash(height, f"{height:02d}" * 32)
    balances = dict(state.balances)
    out = end_block(state, 3)  # tempo 4: height 3 closes epoch 0
    assert [r["kind"] for r in out] == ["emission", "epoch", "epoch"]
    for n in minted:
        minted[n] += out[0]["subnets"][str(n)]
    ep1, ep2 = out[1], out[2]
    assert ep1["netuid"] == 1 and ep1["epoch"] == 0 and ep1["emission"] == minted[1]
    assert sum(ep1["miner_payouts"]) + sum(ep1["validator_payouts"]) == minted[1]
    assert sum(ep1["miner_payouts"]) == minted[1] // 2  # miner_share 0.5
    assert ep1["miner_payouts"][2:5] == sorted(ep1["miner_payouts"][2:5]) and ep1["miner_payouts"][4] > 0
    paid = {}
    for hks, amounts in ((ep1["hotkeys"], ep1["miner_payouts"]), (ep1["validators"], ep1["validator_payouts"])):
        for hk, amt in zip(hks, amounts, strict=True):
            paid[hk] = paid.get(hk, 0) + amt
    assert {a: state.balances[a] - balances[a] for a in balances} == {a: paid.get(a, 0) for a in balances}
    assert state.subnets[1].pending == 0
    # nobody on subnet 2 can earn: its emission is kept for a later epoch, not lost
    assert ep2["emission"] == minted[2] and sum(ep2["miner_payouts"]) + sum(ep2["validator_payouts"]) == 0
    assert state.subnets[2].pending == minted[2]
    pending = sum(s.pending for s in state.subnets.values())
    assert state.total_issuance == sum(state.balances.values()) + sum(state.stakes.values()) + pending
    assert set(state.subnets[1].bonds) == {k.address for k in keys[:2]}
    assert all(isinstance(b, np.ndarray) for b in state.subnets[1].bonds.values())


def test_replayed_end_block_must_match(state, keys):
    """end_block with recorded derived records accepts the producer's own and rejects a changed emission."""
    replica = state.copy()
    out = end_block(state, 1)
    assert end_block(replica.copy(), 1, recorded=out) == out
    bad = [{**out[0], "minted": out[0]["minted"] + 1}]
    with pytest.raises(RecordError, match="emission record differs"):
        end_block(replica, 1, recorded=bad)
    with pytest.raises(RecordError, match="expected 1 derived"):
        end_block(replica, 1, recorded=[])
