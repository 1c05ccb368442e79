"""Tests for moe/ledger/chain.py and state.py: producing blocks, rejecting bad records, deterministic replicas."""

from __future__ import annotations

import json
import logging
import random
import sqlite3

import pytest

from moe.ledger.chain import Block, Ledger, LedgerError, block_hash, block_hash_from_json, read_blocks
from moe.ledger.records import registration_record, stake_record, transfer_record, weights_record
from moe.ledger.registration import registration_prefix, solve_pow
from moe.ledger.verify import verify_ledger
from moe.ledger.weights import WeightSubmission, canonical_json

TAO = 10**9


def issuance_matches(ledger: Ledger) -> bool:
    st = ledger.state
    pending = sum(s.pending for s in st.subnets.values())
    return st.total_issuance == sum(st.balances.values()) + sum(st.stakes.values()) + pending


def network(ledger: Ledger, keys, t0: float = 1001.0) -> float:
    """Register all keys on netuid 1, stake the first two as validators; returns the next timestamp."""
    for k in keys:
        assert ledger.register(k, 1)
    ledger.produce_block(t0)
    for k in keys[:2]:
        assert ledger.add_stake(k, 100 * TAO)
    ledger.produce_block(t0 + 1)
    return t0 + 2


def test_rewards_flow_from_weights(tmp_path, keys, genesis):
    """Miners weighted by staked validators earn by incentive, validators by dividends; rao are conserved."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    t = network(led, keys)
    for v in keys[:2]:
        assert led.set_weights(v, 1, [2, 3, 4], [1.0, 1.0, 2.0])
    while led.height < 7:
        led.produce_block(t)
        t += 1
    ep = led.state.subnets[1].latest_epoch
    assert ep["epoch"] == 1 and ep["incentive"][2:5] == pytest.approx([0.25, 0.25, 0.5], abs=1e-4)
    assert sum(ep["miner_payouts"]) + sum(ep["validator_payouts"]) == ep["emission"]
    assert led.balance(keys[4].address) > led.balance(keys[2].address) > 1000 * TAO
    assert led.balance(keys[5].address) == 1000 * TAO  # never weighted
    assert led.total_issuance == 8000 * TAO + 7 * TAO
    assert issuance_matches(led)


def test_invalid_records_are_rejected_and_never_stored(tmp_path, keys, genesis, caplog):
    """Bad signature, wrong netuid, unknown uid, stale epoch and a second submission in one epoch are refused."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    t = network(led, keys[:4])
    led.produce_block(t)  # weights will go into the first block of epoch 1, with blocks of that epoch to follow
    t += 1
    v = keys[0]
    ep = led.current_epoch
    forged = WeightSubmission.create(v, 1, ep, [2], [1.0])
    forged.weights = [1]
    bad = [
        forged,
        WeightSubmission.create(v, 9, ep, [2], [1.0]),  # unknown netuid
        WeightSubmission.create(v, 1, ep, [7], [1.0]),  # unknown uid
        WeightSubmission.create(v, 1, ep - 1, [2], [1.0]),  # stale epoch
        WeightSubmission.create(keys[3], 1, ep, [2], [1.0]),  # registered but no stake
        WeightSubmission.create(keys[6], 1, ep, [2], [1.0]),  # not registered
    ]
    with caplog.at_level(logging.WARNING):
        assert [led.submit(s) for s in bad] == [False] * len(bad)
    assert "bad signature" in caplog.text and "unknown netuid" in caplog.text and "stale epoch" in caplog.text
    assert led.set_weights(v, 1, [2], [1.0])
    assert not led.set_weights(v, 1, [3], [1.0])  # rate limit within the queue
    blk = led.produce_block(t)
    assert not led.set_weights(v, 1, [3], [1.0])  # rate limit across blocks, same epoch
    weights = [r for r in blk.records if r["kind"] == "weights"]
    assert len(weights) == 1 and weights[0]["uids"] == [2]
    stored = [r for b in led.blocks() for r in b.records if r["kind"] == "weights"]
    assert stored == weights


def test_blocks_interval_rate_limit(tmp_path, keys, genesis):
    """With weights_rate_limit set, a validator must wait that many blocks even across an epoch boundary."""
    genesis.ledger.weights_rate_limit = 6
    led = Ledger.open(tmp_path / "l.db", genesis)
    t = network(led, keys[:4])
    assert led.set_weights(keys[0], 1, [2], [1.0])
    while led.current_epoch == led.state.epoch_of(led.height):
        led.produce_block(t)
        t += 1
    assert not led.set_weights(keys[0], 1, [2], [1.0])


def test_transfers_stakes_and_nonces(tmp_path, keys, genesis):
    """Transfers move rao, overdrafts and replayed nonces are rejected, unstaking returns rao to the balance."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    a, b = keys[0], keys[1]
    rec = transfer_record(a, b.address, 5 * TAO, 0)
    assert led.submit(rec)
    assert not led.submit(rec)  # same nonce again
    assert not led.transfer(a, b.address, 10_000 * TAO)  # overdraft
    assert led.add_stake(a, 10 * TAO) and led.add_stake(a, -4 * TAO)
    assert not led.add_stake(a, -7 * TAO)
    led.produce_block(1001.0)
    assert led.balance(a.address) == (1000 - 5 - 6) * TAO and led.stake_of(a.address) == 6 * TAO
    assert led.balance(b.address) == 1005 * TAO
    assert not led.submit(rec)
    assert issuance_matches(led)


def test_burn_registration_recycles_and_pow_is_checked(tmp_path, keys, genesis):
    """Burning rao to register lowers issuance by the burn; a seal that misses the difficulty is rejected."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    cost = led.state.subnets[2].burn
    assert not led.submit(registration_record(keys[0], 2, led.head_hash, burn=cost - 1))
    assert led.register(keys[0], 2, burn=cost)
    led.produce_block(1001.0)
    assert led.balance(keys[0].address) == 1000 * TAO - cost
    assert led.total_issuance == 8000 * TAO - cost + TAO and led.state.burned == cost
    led.state.subnets[1].difficulty = 2**255  # no small nonce meets this
    assert not led.submit(registration_record(keys[1], 1, led.head_hash, nonce=0))
    assert not led.submit(registration_record(keys[1], 1, "ab" * 32, nonce=0))  # unknown block hash
    assert issuance_matches(led)


def test_full_subnet_prunes_after_immunity(tmp_path, keys, genesis):
    """With max_uids taken, a newcomer replaces the lowest-scoring uid once immunity has passed."""
    genesis.ledger.max_uids = 3
    led = Ledger.open(tmp_path / "l.db", genesis)
    for k in keys[:3]:
        assert led.register(k, 1)
    led.produce_block(1001.0)
    assert not led.register(keys[3], 1)  # all immune
    for t in range(3):
        led.produce_block(1002.0 + t)
    assert led.register(keys[3], 1)
    led.produce_block(1010.0)
    assert led.uid(1, keys[3].address) is not None
    assert sum(led.uid(1, k.address) is None for k in keys[:3]) == 1


def test_replicas_agree_and_reopen_replays(tmp_path, keys, genesis):
    """Two ledgers fed the same signed records and timestamps have the same head hash; reopening replays to it."""
    a = Ledger.open(tmp_path / "a.db", genesis)
    b = Ledger.open(tmp_path / "b.db", genesis)
    t = 1001.0
    for step in range(10):
        if step == 0:
            d = a.state.subnets[1].difficulty
            nonces = [solve_pow(registration_prefix(1, a.head_hash, k.public_bytes), d) for k in keys]
            recs = [registration_record(k, 1, a.head_hash, nonce=n) for k, n in zip(keys, nonces, strict=True)]
        elif step == 1:
            recs = [stake_record(k, 50 * TAO, 0) for k in keys[:3]]
        elif step == 2:
            subs = [WeightSubmission.create(k, 1, a.current_epoch, [3, 4, 5], [1, 2, 3]) for k in keys[:3]]
            recs = [weights_record(sub) for sub in subs]
        else:
            recs = []
        for r in recs:
            assert a.submit(r) and b.submit(r)
        assert a.produce_block(t).hash == b.produce_block(t).hash
        t += 1
    head = a.head_hash
    a.close()
    again = Ledger.open(tmp_path / "a.db")
    assert again.head_hash == head and again.height == 10
    assert again.state.balances == b.state.balances


def test_open_refuses_other_genesis_and_backwards_time(tmp_path, keys, genesis):
    """A file opened with a different genesis raises LedgerError; a block timestamp going back raises ValueError."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    with pytest.raises(ValueError, match="before"):
        led.produce_block(999.0)
    led.close()
    genesis.chain_id = "other"
    with pytest.raises(LedgerError, match="different genesis"):
        Ledger.open(tmp_path / "l.db", genesis)
    with pytest.raises(LedgerError, match="no chain"):
        Ledger.open(tmp_path / "empty.db")


def test_malformed_records_are_rejected(tmp_path, keys, genesis):
    """Unknown kinds, non-dicts, NaN fields and bool amounts are rejected with a logged reason."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    rec = transfer_record(keys[0], keys[1].address, 1, 0)
    for bad in ({"kind": "mint", "amount": 5}, [1, 2], {**rec, "amount": float("nan")}, {**rec, "amount": True}):
        assert not led.submit(bad)
    assert led.produce_block(1001.0).records[0]["kind"] == "emission"


def test_failed_block_write_changes_nothing(tmp_path, keys, genesis):
    """A block whose SQLite write fails leaves state and queue as they were; the retry equals a replica's block."""
    led, replica = Ledger.open(tmp_path / "a.db", genesis), Ledger.open(tmp_path / "b.db", genesis)
    t = network(led, keys[:4])
    assert network(replica, keys[:4]) == t and led.head_hash == replica.head_hash
    for ledger in (led, replica):
        assert ledger.set_weights(keys[0], 1, [2, 3], [1.0, 2.0])
        assert ledger.transfer(keys[2], keys[5].address, 7 * TAO)
    before = (dict(led.state.balances), dict(led.state.nonces), led.height, led.head_hash, led.total_issuance)
    with sqlite3.connect(tmp_path / "a.db") as c:
        c.execute("CREATE TRIGGER fail BEFORE INSERT ON blocks BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk on fire"):
        led.produce_block(t)  # height 3 ends epoch 0: emission, Yuma and payouts are all taken back
    assert (led.height, led.head_hash) == before[2:4]
    with sqlite3.connect(tmp_path / "a.db") as c:
        c.execute("DROP TRIGGER fail")
    assert led.produce_block(t).hash == replica.produce_block(t).hash  # no read in between: straight from the retry
    assert led.state.balances == replica.state.balances and led.state.subnets[1].latest_epoch is not None
    with sqlite3.connect(tmp_path / "a.db") as c:
        c.execute("CREATE TRIGGER fail BEFORE INSERT ON blocks BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    assert led.transfer(keys[2], keys[5].address, 7 * TAO)
    before = (dict(led.state.balances), dict(led.state.nonces), led.height, led.head_hash, led.total_issuance)
    with pytest.raises(sqlite3.DatabaseError, match="disk on fire"):
        led.produce_block(t + 1)
    assert (dict(led.state.balances), dict(led.state.nonces), led.height, led.head_hash, led.total_issuance) == before
    assert verify_ledger(tmp_path / "a.db").ok


def test_reads_between_submits_see_the_last_block(tmp_path, keys, genesis):
    """Balances read between submits are the last block's; queued records still count for later submits."""
    led, replica = Ledger.open(tmp_path / "a.db", genesis), Ledger.open(tmp_path / "b.db", genesis)
    a, b = keys[0], keys[5]
    base = led.balance(a.address)
    for ledger in (led, replica):
        assert ledger.transfer(a, b.address, 5 * TAO)
    assert led.balance(a.address) == base and led.state.nonces.get(a.address, 0) == 0
    for ledger in (led, replica):
        assert ledger.transfer(a, b.address, 6 * TAO)  # nonce 1: the first transfer is back in force
    assert led.uid(1, a.address) is None and led.total_issuance == 8000 * TAO
    assert not led.transfer(a, b.address, base - 10 * TAO)  # only base - 11 TAO is left after the queue
    assert led.produce_block(1001.0).hash == replica.produce_block(1001.0).hash
    assert led.balance(a.address) == base - 11 * TAO and led.balance(b.address) == 1011 * TAO


def test_hash_from_stored_json_equals_block_hash():
    """Hashing a block from its records' canonical JSON gives block_hash exactly; other text falls back safely."""
    rng = random.Random(3)
    for _ in range(300):
        recs = [
            {"kind": "x", "f": rng.random() * 10 ** rng.randrange(-20, 20), "i": rng.randrange(-(10**30), 10**30)}
            | {"s": "".join(rng.choice('aé"\\\n\u2603z') for _ in range(rng.randrange(6))), "l": [rng.random(), None]}
            for _ in range(rng.randrange(4))
        ]
        height, prev, ts = rng.randrange(10**9), rng.randbytes(32).hex(), rng.random() * 10**9
        h = block_hash(height, prev, ts, recs)
        assert block_hash_from_json(height, prev, ts, canonical_json(recs)) == h
        assert Block(height, prev, ts, recs, h, records_json=json.dumps(recs, indent=1)).hash_ok()  # not canonical
        assert not Block(height + 1, prev, ts, recs, h, records_json=canonical_json(recs).decode()).hash_ok()


def test_shared_repeats_read_like_fresh_parses(tmp_path, keys, genesis):
    """Reading with share_repeats gives the same blocks as fresh parses; only identical consecutive texts share."""
    led = Ledger.open(tmp_path / "l.db", genesis)
    t = network(led, keys[:4])
    for i in range(6):
        if i == 3:
            assert led.transfer(keys[2], keys[5].address, 7 * TAO)
        led.produce_block(t + i)
    fresh = list(led.blocks())
    shared = list(read_blocks(led._conn, share_repeats=True))
    assert [(b.height, b.hash, b.records) for b in fresh] == [(b.height, b.hash, b.records) for b in shared]
    pairs = list(zip(shared, shared[1:], strict=False))
    assert all((a.records is b.records) == (a.records_json == b.records_json) for a, b in pairs)
    assert any(a.records is b.records for a, b in pairs)
