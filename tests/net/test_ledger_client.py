"""Tests for moe/net/ledger_client.py: parsing the host's signed head, picking the newest one, and a validator's
seed commitment over a real pair of loopback DHT peers (registration and weights are in test_ledger_host.py)."""

from __future__ import annotations

import logging

import pytest

from moe.identity import Hotkey
from moe.net.dht_records import publish_signed, read_signed
from moe.net.ledger_client import (
    COMMIT_CONTEXT,
    COMMITS_KEY,
    HEAD_CONTEXT,
    HEAD_KEY,
    LedgerAccessConfig,
    LedgerHead,
    SubnetHead,
    flagged_by_validators,
    publish_commit,
    read_head,
    register_on_ledger,
)
from moe.net.signed import MalformedRecord
from moe.poi.commit import SeedCommit, check_reveal, make_commit, new_seed

HOST = Hotkey.from_seed(b"h" * 32)
MINER = Hotkey.from_seed(b"m" * 32)


SUBNET_FIELDS = ("uids", "incentive", "difficulty", "emission_share", "commit_reveal", "reveal_period_epochs")


def head_payload(height: int = 12, **overrides) -> dict:
    """A head as `LedgerHost.publish_head` writes it, with one subnet (netuid 1); overrides of a subnet field (uids,
    incentive, difficulty, ...) go into that subnet."""
    subnet = {
        "difficulty": 2,
        "uids": {MINER.address: [0, 7]},
        "incentive": {MINER.address: 0.75},
        "emission_share": 1.0,
        "commit_reveal": True,
        "reveal_period_epochs": 1,
    } | {k: v for k, v in overrides.items() if k in SUBNET_FIELDS}
    payload = {
        "height": height,
        "head_hash": "ab" * 32,
        "epoch": 3,
        "tempo": 4,
        "block_interval": 0.5,
        "subnets": {"1": subnet},
        "stakes": {MINER.address: 1000},
        "seed_sha256": "cd" * 32,
        "total_issuance": 5_000_000_000,
        "chain": "ef" * 32,
        "escrow": {MINER.address: 7},
    }
    return payload | {k: v for k, v in overrides.items() if k not in SUBNET_FIELDS}


def test_from_payload_reads_every_field():
    """A well-formed head payload parses into a LedgerHead with its signer as host and (uid, block) tuples."""
    head = LedgerHead.from_payload(HOST.address, head_payload())
    assert head == LedgerHead(
        host=HOST.address,
        height=12,
        head_hash="ab" * 32,
        epoch=3,
        tempo=4,
        block_interval=0.5,
        subnets={
            1: SubnetHead(
                difficulty=2,
                uids={MINER.address: (0, 7)},
                incentive={MINER.address: 0.75},
                emission_share=1.0,
                commit_reveal=True,
                reveal_period_epochs=1,
            )
        },
        stakes={MINER.address: 1000},
        seed_sha256="cd" * 32,
        total_issuance=5_000_000_000,
        chain="ef" * 32,
        escrow={MINER.address: 7},
    )
    assert LedgerHead.from_payload(HOST.address, head_payload(seed_sha256=None)).seed_sha256 is None  # not learned


@pytest.mark.parametrize("field", list(head_payload()))
def test_from_payload_refuses_a_missing_field(field):
    """A head missing any field raises MalformedRecord naming it."""
    payload = head_payload()
    del payload[field]
    with pytest.raises(MalformedRecord, match=f"malformed ledger head: .*missing keys \\['{field}'\\]"):
        LedgerHead.from_payload(HOST.address, payload)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(height="twelve"),
        dict(height=None),
        dict(epoch=[3]),
        dict(tempo={}),
        dict(block_interval="fast"),
        dict(uids=[1, 2]),  # not a dictionary
        dict(uids={MINER.address: [0]}),  # no registration block
        dict(uids={MINER.address: 5}),
        dict(uids={MINER.address: ["zero", 7]}),
        dict(stakes={MINER.address: "lots"}),
        dict(stakes=None),
        dict(tempo=0),  # would divide by zero in epoch_progress
        dict(incentive={MINER.address: float("nan")}),
        dict(incentive={MINER.address: 2.5}),  # a share above the whole
        dict(incentive={MINER.address: "all"}),
        dict(incentive=[0.5]),
        dict(total_issuance=-1),
        dict(total_issuance=1.5),
        dict(chain="not-a-digest"),
        dict(escrow={MINER.address: -1}),
        dict(escrow={"someone": 5}),
        dict(subnets=[]),  # not a mapping
        dict(subnets={"01": {}}),  # a padded netuid
        dict(subnets={"70000": {}}),  # beyond u16
        dict(subnets={str(n): {} for n in range(100)}),  # too many to walk
        dict(commit_reveal=1),  # an int for a bool
        dict(emission_share=1.5),
        dict(reveal_period_epochs=0),
    ],
)
def test_from_payload_refuses_mistyped_fields(overrides):
    """A head with a mistyped field (a word for a number, a list for a dict, a short uid entry) raises
    MalformedRecord."""
    with pytest.raises(MalformedRecord, match="malformed ledger head"):
        LedgerHead.from_payload(HOST.address, head_payload(**overrides))


@pytest.mark.parametrize("tempo", [1, 4, 10])
def test_epoch_progress_counts_the_blocks_of_the_current_epoch(tempo):
    """epoch_progress is the fraction of the epoch's blocks produced, counted block by block: it rises by 1/tempo
    per block and wraps to 0 at the last block of an epoch (where the epoch pays out)."""
    produced = 0
    for height in range(3 * tempo):
        produced = (produced + 1) % tempo  # block `height` is the (produced)-th of its epoch, 0 when it closes one
        head = LedgerHead.from_payload(HOST.address, head_payload(height=height, tempo=tempo))
        assert head.epoch_progress() == produced / tempo
        assert 0.0 <= head.epoch_progress() < 1.0


def test_read_head_reads_only_the_pinned_host(module_pair, caplog):
    """read_head returns the pinned host's head, never a higher one by another signer; a malformed head of the host
    is logged and skipped (None), one of another context never gets stored, and a host that published nothing
    gives None."""
    a, b = module_pair
    host, other, stray = (Hotkey.from_seed(bytes([i]) * 32) for i in b"hos")
    assert read_head(b, host.address) is None
    assert publish_signed(a, HEAD_KEY, host, head_payload(height=5), HEAD_CONTEXT, ttl=30)
    assert publish_signed(a, HEAD_KEY, other, head_payload(height=9, epoch=4), HEAD_CONTEXT, ttl=30)
    assert not publish_signed(a, HEAD_KEY, stray, head_payload(height=200), "ledger-inbox", ttl=30)  # refused
    mine = read_head(b, host.address)
    assert (mine.host, mine.height, mine.subnets[1].uids) == (host.address, 5, {MINER.address: (0, 7)})
    assert read_head(b, other.address).height == 9
    assert read_head(b, MINER.address) is None
    assert publish_signed(a, HEAD_KEY, host, {"height": 100}, HEAD_CONTEXT, ttl=30)
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_client"):
        assert read_head(b, host.address) is None
    assert f"ledger head by {host.address[:16]}: malformed ledger head" in caplog.text


def test_publish_commit_round_trip_before_and_after_reveal(module_pair):
    """A validator's commitment reads back under its address with seed None, and after the reveal with the seed's
    hex, which opens the commitment."""
    a, b = module_pair
    validator = Hotkey.from_seed(b"v" * 32)
    seed = new_seed()
    commit = make_commit(validator, seed, epoch=3).to_json()
    assert publish_commit(a, validator, commit, None, ttl=30)
    got = read_signed(b, COMMITS_KEY, COMMIT_CONTEXT)[validator.address]
    assert got["commit"] == commit and got["seed"] is None
    assert publish_commit(a, validator, commit, seed, ttl=30)
    got = read_signed(b, COMMITS_KEY, COMMIT_CONTEXT)[validator.address]
    assert got["commit"] == commit and got["seed"] == seed.hex()
    check_reveal(SeedCommit.from_json(got["commit"]), bytes.fromhex(got["seed"]))


def test_flagged_by_validators_needs_a_stake_majority_of_revealed_verdicts(module_pair):
    """An expert is flagged when validators holding over half the stake of those that revealed flag it; a verdict
    before the reveal, from an unstaked signer or with malformed flags does not count."""
    a, b = module_pair
    big, small, unstaked, early = (Hotkey.from_seed(bytes([i]) * 32) for i in (201, 202, 203, 204))
    cheat, disputed, victim = "c" * 64, "d" * 64, "e" * 64
    stakes = {big.address: 600, small.address: 400, early.address: 5000}
    head = LedgerHead.from_payload(HOST.address, head_payload(stakes=stakes))
    commit = make_commit(big, new_seed(), 3).to_json()
    assert publish_commit(a, big, commit, b"s" * 32, 30, flags={cheat: ["copy"], disputed: ["timeout"]})
    assert publish_commit(a, small, commit, b"s" * 32, 30, flags={cheat: ["noncausal"]})
    assert publish_commit(a, unstaked, commit, b"s" * 32, 30, flags={victim: ["copy"]})
    assert publish_commit(a, early, commit, None, 30, flags={victim: ["copy"]})  # not revealed yet
    assert flagged_by_validators(b, head) == {cheat: ["copy", "noncausal"], disputed: ["timeout"]}
    assert publish_commit(a, small, commit, b"s" * 32, 30, flags={cheat: "all of them"})  # malformed: ignored
    assert flagged_by_validators(b, head) == {cheat: ["copy"], disputed: ["timeout"]}
    lone = LedgerHead.from_payload(HOST.address, head_payload(stakes={small.address: 400, big.address: 100}))
    assert flagged_by_validators(b, lone) == {}  # the only valid verdict holds 100 of the 500 that revealed


# attacks on the head: a forger's higher head, and malformed fields from anyone


def test_a_forgers_higher_head_cannot_redirect_uids(module_pair):
    """A forger publishing a higher head that moves the miner's uid (so a validator's weights go to another uid) is
    never read: nodes read the pinned host's head only, and asking for a head without a host is refused."""
    a, b = module_pair
    host, forger = Hotkey.from_seed(b"H" * 32), Hotkey.from_seed(b"F" * 32)
    assert publish_signed(a, HEAD_KEY, host, head_payload(height=5, uids={MINER.address: [0, 7]}), HEAD_CONTEXT, 30)
    forged = head_payload(height=500, uids={MINER.address: [9, 7], forger.address: [0, 1]})
    assert publish_signed(a, HEAD_KEY, forger, forged, HEAD_CONTEXT, 30)
    mine, head = register_on_ledger(b, MINER, 0, timeout=5, host=host.address, netuids=[1])
    assert (mine, head.host) == ({1: (0, 7)}, host.address)
    for anyone in ("", None):
        with pytest.raises(ValueError, match="ledger host"):
            read_head(b, anyone)


def test_ledger_access_needs_the_hosts_key():
    """Joining a ledger-enabled network without pinning the host's key is a one-line config error."""
    with pytest.raises(ValueError, match="ledger.host"):
        LedgerAccessConfig(enabled=True)
    with pytest.raises(ValueError, match="ledger.host"):
        LedgerAccessConfig(enabled=True, host="not-a-key")
    assert LedgerAccessConfig(enabled=True, host=HOST.address).host == HOST.address
    assert LedgerAccessConfig().host == ""  # a node outside any ledger network needs no host


@pytest.mark.parametrize(
    "overrides",
    [
        dict(block_interval=-1.0),  # time.sleep(-1.0) raises in every waiting node
        dict(block_interval=0),
        dict(block_interval=True),
        dict(height=True),  # a bool where an int belongs
        dict(height=12.0),  # a float where an int belongs
        dict(height=-1),
        dict(epoch=-2),
        dict(epoch=3.5),
        dict(tempo=True),
        dict(difficulty=0),
        dict(difficulty=2.0),
        dict(subnets={"-1": {}}),
        dict(head_hash="ab"),
        dict(head_hash=7),
        dict(uids={MINER.address: [0.9, 7]}),  # int() would quietly make it uid 0
        dict(uids={MINER.address: [True, 7]}),
        dict(uids={MINER.address: [-1, 7]}),
        dict(uids={MINER.address: [0, -7]}),
        dict(uids={MINER.address: [0, 7, 1]}),
        dict(uids={"miner": [0, 7]}),  # not an address
        dict(stakes={MINER.address: -5}),
        dict(stakes={MINER.address: True}),
        dict(stakes={MINER.address: 1.5}),
        dict(incentive={"miner": 0.5}),
        dict(seed_sha256="cd" * 31),
        dict(seed_sha256=5),
        dict(extra=1),  # an unknown key
    ],
)
def test_from_payload_refuses_out_of_range_fields(overrides):
    """A head with a bool or float where an int belongs, a negative count, a non-positive block interval or
    difficulty, a short hash or a key that is not an address raises MalformedRecord."""
    with pytest.raises(MalformedRecord, match="malformed ledger head"):
        LedgerHead.from_payload(HOST.address, head_payload(**overrides))


def test_a_malformed_head_of_the_pinned_host_is_skipped_not_crashed_on(module_pair, caplog):
    """The pinned host's head with a negative block interval (or a float uid) is skipped with one log line: a
    validator waiting for an epoch times out instead of crashing in time.sleep."""
    from moe.roles.validator import _wait_for_fresh_epoch

    a, b = module_pair
    host = Hotkey.from_seed(b"B" * 32)
    bad = head_payload(height=30, block_interval=-1.0, uids={MINER.address: [0.9, 7]})
    assert publish_signed(a, HEAD_KEY, host, bad, HEAD_CONTEXT, 30)
    with caplog.at_level(logging.WARNING, logger="moe.net.ledger_client"):
        assert read_head(b, host.address) is None
        with pytest.raises(TimeoutError):
            _wait_for_fresh_epoch(b, host.address, last_epoch=-1, timeout=1.0, deadline_fraction=1.0)
    assert f"ledger head by {host.address[:16]}: malformed ledger head" in caplog.text
