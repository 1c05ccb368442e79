"""Tests for commit-reveal weights (moe/ledger/records.py commit/reveal kinds, state.py rules, chain.py helpers)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from moe.ledger.chain import Ledger
from moe.ledger.records import commit_hash, commit_record, reveal_record, signing_bytes
from moe.ledger.verify import verify_ledger
from moe.ledger.weights import to_u16

TAO = 10**9
SALT = bytes(range(32))


def cr_genesis(genesis, **params):
    """The conftest genesis with commit-reveal on netuid 1 (plus `params`), netuid 2 plain, keys 0-1 staked."""
    cfg = dataclasses.replace(genesis.ledger, subnet_params={1: {"commit_reveal": True, **params}})
    stakes = {k: 100 * TAO for k in list(genesis.balances)[:2]}
    return dataclasses.replace(genesis, ledger=cfg, stakes=stakes)


def open_ledger(tmp_path, keys, genesis, **params) -> Ledger:
    """Keys 0-5 registered on netuid 1 (uids 0-5) and key 0 on netuid 2; at the first block of epoch 1."""
    led = Ledger.open(tmp_path / "cr.db", cr_genesis(genesis, **params))
    for k in keys[:6]:
        assert led.register(k, 1)
    assert led.register(keys[0], 2)
    advance(led, 1)
    return led


def step(led: Ledger):
    """Produce the next block, one second after the last."""
    return led.produce_block(led.last_timestamp + 1.0)


def advance(led: Ledger, epoch: int) -> None:
    """Produce blocks until the next block is the first of `epoch`."""
    while led.current_epoch < epoch or (led.height + 1) % led.config.tempo:
        step(led)


def refused(led: Ledger, record: dict, caplog) -> str:
    """The one-line reason `led` gives for refusing `record` (the test fails if it is accepted)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moe.ledger"):
        assert not led.submit(record), f"accepted: {record['kind']}"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return line


@pytest.fixture
def led(tmp_path, keys, genesis):
    ledger = open_ledger(tmp_path, keys, genesis)
    yield ledger
    ledger.close()


def test_commit_hides_weights_until_the_reveal_sets_them(led, keys):
    """A commit stores only a hash; its reveal one epoch later sets the weights, which the epoch then pays by."""
    v = keys[0]
    assert led.commit_weights(v, 1, [2, 3], [1.0, 3.0], salt=SALT) == SALT
    step(led)
    sub = led.state.subnets[1]
    uids, weights = to_u16([2, 3], [1.0, 3.0])
    assert v.address not in sub.weights
    assert sub.commits[v.address] == ((1, commit_hash(v.address, 1, 1, uids, weights, SALT)),)
    advance(led, 2)
    assert led.reveal_weights(v, 1, 1, [2, 3], [1.0, 3.0], SALT)
    blk = step(led)
    assert blk.records[0]["kind"] == "reveal"
    assert sub.weights[v.address] == (blk.height, dict(zip(uids, weights, strict=True)))
    assert v.address not in sub.commits  # consumed
    advance(led, 3)
    ep = sub.latest_epoch
    assert ep["epoch"] == 2 and ep["incentive"][2:4] == pytest.approx([0.25, 0.75], abs=1e-4)
    assert verify_ledger(led.path).ok


@pytest.mark.parametrize(
    "uids, weights, salt",
    [([2, 3], [21845, 65535], b"\x01" * 32), ([2, 3], [21846, 65535], SALT), ([2, 4], [21845, 65535], SALT)],
    ids=["wrong salt", "altered weights", "altered uids"],
)
def test_forged_reveal_is_refused(led, keys, caplog, uids, weights, salt):
    """A validly signed reveal whose salt, weights or uids differ from the committed ones is refused as not
    matching its commit, and the genuine reveal is still accepted afterwards."""
    v = keys[0]
    committed = to_u16([2, 3], [1.0, 3.0])
    assert committed == ([2, 3], [21845, 65535])
    assert led.submit(commit_record(v, 1, 1, *committed, SALT))
    advance(led, 2)
    forged = reveal_record(v, 1, 1, uids, weights, salt)
    assert "does not match the commit of epoch 1" in refused(led, forged, caplog)
    assert v.address not in led.state.subnets[1].weights
    assert led.submit(reveal_record(v, 1, 1, *committed, SALT))


def test_reveal_too_early_too_late_and_replayed_are_refused(led, keys, caplog):
    """A reveal in the commit's own epoch is too early, one after the reveal epoch too late (the commit is gone by
    then), and a second copy of an accepted reveal finds no commit."""
    a, b = keys[0], keys[1]
    uids, weights = to_u16([2, 3], [1.0, 3.0])
    for v in (a, b):
        assert led.submit(commit_record(v, 1, 1, uids, weights, SALT))
    step(led)
    assert "reveal too early" in refused(led, reveal_record(a, 1, 1, uids, weights, SALT), caplog)
    advance(led, 2)
    reveal = reveal_record(a, 1, 1, uids, weights, SALT)
    assert led.submit(reveal)
    assert "no pending commit" in refused(led, reveal, caplog)  # same block
    step(led)
    assert "no pending commit" in refused(led, reveal, caplog)  # a later block
    assert b.address in led.state.subnets[1].commits
    advance(led, 3)
    assert b.address not in led.state.subnets[1].commits  # dropped at the end of its reveal epoch
    assert "reveal too late" in refused(led, reveal_record(b, 1, 1, uids, weights, SALT), caplog)


def test_reveal_period_of_two_epochs(tmp_path, keys, genesis, caplog):
    """With reveal_period_epochs 2 a commit of epoch 1 is revealed in epoch 3, not 2."""
    led = open_ledger(tmp_path, keys, genesis, reveal_period_epochs=2)
    uids, weights = to_u16([2], [1.0])
    assert led.submit(commit_record(keys[0], 1, 1, uids, weights, SALT))
    advance(led, 2)
    assert "may be revealed in epoch 3, not 2" in refused(
        led, reveal_record(keys[0], 1, 1, uids, weights, SALT), caplog
    )
    advance(led, 3)
    assert led.reveal_weights(keys[0], 1, 1, [2], [1.0], SALT)
    led.close()


def test_plain_weights_on_a_commit_reveal_subnet_are_refused(led, keys, caplog):
    """On a commit-reveal subnet a weights record is refused by name; on a plain subnet a commit is refused."""
    assert not led.set_weights(keys[0], 1, [2], [1.0])
    assert "netuid 1 uses commit-reveal" in caplog.text
    assert led.set_weights(keys[0], 2, [0], [1.0])  # a plain subnet takes weights records
    caplog.clear()
    assert led.commit_weights(keys[0], 2, [0], [1.0]) is None
    assert "commit-reveal is off on netuid 2" in caplog.text


@pytest.mark.parametrize(
    "signer, epoch, reason",
    [
        (6, 1, "is not registered on netuid 1"),
        (3, 1, "has no stake"),
        (0, 0, "stale epoch 0"),
        (0, 2, "stale epoch 2"),
    ],
    ids=["unregistered", "unstaked", "past epoch", "future epoch"],
)
def test_bad_commits_are_refused(led, keys, caplog, signer, epoch, reason):
    """Commits by an unregistered or unstaked hotkey, or for another epoch than the current one, are refused."""
    record = commit_record(keys[signer], 1, epoch, [2], [65535], SALT)
    assert reason in refused(led, record, caplog)
    assert led.state.subnets[1].commits == {}


def test_one_commit_per_validator_and_epoch(led, keys, caplog):
    """A second commit of one validator in one epoch is refused, in the same block or a later one."""
    assert led.commit_weights(keys[0], 1, [2], [1.0]) is not None
    assert "already committed" in refused(led, commit_record(keys[0], 1, 1, [3], [65535], SALT), caplog)
    step(led)
    assert "already committed" in refused(led, commit_record(keys[0], 1, 1, [3], [65535], SALT), caplog)
    assert led.commit_weights(keys[1], 1, [3], [1.0]) is not None  # another validator may


def test_eleventh_pending_commit_is_refused(tmp_path, keys, genesis, caplog):
    """A validator holds at most 10 unrevealed commits per subnet; revealing one makes room again."""
    led = open_ledger(tmp_path, keys, genesis, reveal_period_epochs=10)
    salts = {}
    for epoch in range(1, 11):
        advance(led, epoch)
        salts[epoch] = led.commit_weights(keys[0], 1, [2], [1.0])
        assert salts[epoch] is not None
    advance(led, 11)
    assert len(led.state.subnets[1].commits[keys[0].address]) == 10
    reason = refused(led, commit_record(keys[0], 1, 11, [2], [65535], SALT), caplog)
    assert "too many unrevealed commits" in reason
    assert led.reveal_weights(keys[0], 1, 1, [2], [1.0], salts[1])
    assert led.commit_weights(keys[0], 1, [2], [1.0]) is not None
    led.close()
    assert verify_ledger(tmp_path / "cr.db").ok


def test_commits_of_a_pruned_uid_are_dropped(tmp_path, keys, genesis):
    """When a validator's uid is pruned for a newcomer its pending commits go with it."""
    led = open_ledger(tmp_path, keys, genesis, max_uids=6, immunity_period=0)
    assert led.commit_weights(keys[0], 1, [2], [1.0]) is not None
    step(led)
    assert keys[0].address in led.state.subnets[1].commits
    # every uid scores 0; the oldest registration (uid 0, keys[0]) is pruned first
    assert led.register(keys[6], 1)
    step(led)
    assert led.uid(1, keys[0].address) is None and led.state.subnets[1].commits == {}
    led.close()


def crafted(base: dict, key) -> list[tuple[str, dict]]:
    """Variants of a valid commit or reveal with one field of the wrong type, out of range, missing or extra, each
    re-signed by `key` so that only the field checks can stop them."""
    values = {"float": 1.0, "bool": True, "string": "1", "huge": 2**70, "negative": -1, "none": None, "list": [[1]]}
    values |= {"object": {"a": 1}, "deep": [[[[[[1]]]]]]}
    out = []
    for field in base:
        if field not in ("kind", "signature"):
            out += [(f"{field}={name}", {**base, field: value}) for name, value in values.items()]
            out.append((f"missing {field}", {k: v for k, v in base.items() if k != field}))
    if "salt" in base:
        for name, salt in {
            "odd": "abc" * 11,
            "upper": "AB" * 32,
            "15 bytes": "ab" * 15,
            "65 bytes": "ab" * 65,
        }.items():
            out.append((f"salt {name}", {**base, "salt": salt}))
        out.append(("uid 65536", {**base, "uids": [65536]}))
    else:
        out.append(("short hash", {**base, "hash": "ab" * 31}))
    out.append(("extra", {**base, "extra": 1}))
    return [(name, sign(key, rec)) for name, rec in out]


def sign(key, record: dict) -> dict:
    body = {k: v for k, v in record.items() if k != "signature"}
    return {**body, "signature": key.sign(signing_bytes(body)).hex()}


@pytest.mark.parametrize("kind", ["commit", "reveal"])
def test_crafted_commits_and_reveals_are_refused_in_one_line(led, keys, caplog, kind):
    """Every wrong-typed, out-of-range, missing or extra field of a commit or reveal is refused with one line and
    changes nothing; the valid record they came from is then accepted."""
    v = keys[0]
    uids, weights = to_u16([2, 3], [1.0, 3.0])
    if kind == "reveal":
        assert led.submit(commit_record(v, 1, 1, uids, weights, SALT))
        advance(led, 2)
        base = reveal_record(v, 1, 1, uids, weights, SALT)
    else:
        base = commit_record(v, 1, 1, uids, weights, SALT)
    before = (led.state.subnets[1].commits.copy(), led.state.subnets[1].weights.copy())
    for name, record in crafted(base, v):
        reason = refused(led, record, caplog)
        assert "\n" not in reason, name
    assert (led.state.subnets[1].commits, led.state.subnets[1].weights) == before
    assert led.submit(base)
    step(led)
    assert verify_ledger(led.path).ok


@pytest.mark.parametrize(
    "uids, weights, reason",
    [([2, 3], [65535], "2 uids but 1 weights"), ([2, 2], [1, 2], "duplicate uids"), ([7], [65535], "unknown uid 7")],
)
def test_revealed_weights_get_the_weights_checks(led, keys, caplog, uids, weights, reason):
    """A reveal that matches its commit but carries weights a weights record could not set is refused all the same."""
    assert led.submit(commit_record(keys[0], 1, 1, uids, weights, SALT))
    advance(led, 2)
    assert reason in refused(led, reveal_record(keys[0], 1, 1, uids, weights, SALT), caplog)
