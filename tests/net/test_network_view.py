"""Tests for moe/net/network_view.py: a view of real signed records on real DHT peers, forgeries left out and counted.

Records are published with the functions the nodes use: `announce` (the expert heartbeat), `publish_weights` and
`publish_commit` (the validator), `publish_signed` of a head payload and `LedgerHost.step` (the ledger host).
"""

from __future__ import annotations

import dataclasses

from hivemind.utils import get_dht_time

from moe.identity import Hotkey
from moe.ledger import RAO_PER_TAO, WeightSubmission
from moe.net.dht_records import (
    COMMIT_CONTEXT,
    COMMITS_KEY,
    HEAD_CONTEXT,
    HEAD_KEY,
    WEIGHTS_CONTEXT,
    WEIGHTS_KEY,
    experts_key,
    publish_signed,
)
from moe.net.discovery import announce
from moe.net.expert_record import EXPERT_CONTEXT, ExpertRecord
from moe.net.ledger_client import publish_commit, publish_weights
from moe.net.ledger_host import LedgerHost, LedgerHostConfig, local_genesis
from moe.net.network_view import read_network_view
from moe.net.signed import SignedValue
from moe.poi.commit import make_commit, new_seed

PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
TTL = 30.0


def key(i: int) -> Hotkey:
    return Hotkey.from_seed(bytes([i]) * 32)


def expert_record(hotkey: Hotkey, netuid: int, uid: int = 0, step: int = 7, bpb: float | None = 2.5) -> ExpertRecord:
    return ExpertRecord(
        uid=uid,
        hotkey=hotkey.address,
        subnet="code",
        netuid=netuid,
        peer_id=PEER_ID,
        model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=256, params=5000),
        train_step=step,
        claimed_eval_bpb=bpb,
        signature_centroid=[0.5] * 4,
    )


def head_payload(uids: dict[str, int], stakes: dict[str, int], incentive: dict[str, float], netuid: int = 7) -> dict:
    """A head as `LedgerHost.publish_head` builds it."""
    return {
        "height": 42,
        "head_hash": "ab" * 32,
        "epoch": 3,
        "tempo": 20,
        "block_interval": 0.25,
        "subnets": {
            str(netuid): {
                "difficulty": 64,
                "uids": {hk: [uid, 1] for hk, uid in uids.items()},
                "incentive": incentive,
                "emission_share": 1.0,
                "commit_reveal": True,
                "reveal_period_epochs": 1,
            }
        },
        "stakes": stakes,
        "seed_sha256": None,
        "total_issuance": 2_500_000_000,
        "chain": "00" * 32,
        "escrow": {},
    }


def test_view_joins_expert_validator_and_pinned_head(fresh_dht_pair):
    """An announced expert shows its record's step and claim, the pinned head's uid, stake and incentive, and the
    flags and measured bpb of the validators' revealed verdicts; each validator shows its stake and latest weights."""
    a, b = fresh_dht_pair
    expert, validator, host = key(11), key(12), key(13)
    netuid = 7
    assert announce(a, expert_record(expert, netuid, uid=9, step=120, bpb=2.25), expert, TTL)
    sub = WeightSubmission.create(validator, netuid, 3, [4], [1.0])
    assert publish_weights(a, validator, [sub])
    seed = new_seed()
    commit = make_commit(validator, seed, 3).to_json()
    assert publish_commit(a, validator, commit, seed, TTL, flags={expert.address: ["noncausal"]})
    measurer = key(14)  # a verdict carrying measured bpb, as `publish_commit` would with a `bpb` map
    verdict = {"commit": make_commit(measurer, seed, 3).to_json(), "seed": seed.hex(), "flags": {}}
    assert publish_signed(a, COMMITS_KEY, measurer, {**verdict, "bpb": {expert.address: 3.0}}, COMMIT_CONTEXT, TTL)
    uids = {expert.address: 4, validator.address: 5}
    stakes = {validator.address: 300 * RAO_PER_TAO}
    head = head_payload(uids, stakes, {expert.address: 0.75})
    assert publish_signed(a, HEAD_KEY, host, head, HEAD_CONTEXT, TTL)

    view = read_network_view(b, {netuid: "code"}, ledger_host=host.address, announce_ttl=TTL)

    assert view.rejected == {}
    assert [(s.netuid, s.name, s.experts) for s in view.subnets] == [(netuid, "code", 1)]
    (e,) = view.experts
    assert (e.hotkey, e.uid, e.ledger_uid, e.train_step, e.claimed_bpb) == (expert.address, 9, 4, 120, 2.25)
    assert (e.stake_tao, e.incentive, e.flags) == (0.0, 0.75, {"noncausal": 1})
    assert (e.measured_bpb, e.latency_p50_ms, e.price) == (3.0, None, 0.0)
    assert 0.0 <= e.heartbeat_age_seconds <= TTL and 0.0 < e.expires_in_seconds <= TTL
    v, m = sorted(view.validators, key=lambda r: r.hotkey != validator.address)
    assert (m.hotkey, m.ledger_uid, m.weights_epoch, m.revealed) == (measurer.address, None, None, True)
    assert (v.hotkey, v.ledger_uid, v.stake_tao) == (validator.address, 5, 300.0)
    assert (v.commit_epoch, v.revealed, v.flagged) == (3, True, 1)
    assert (v.weights_epoch, v.weights_netuid, v.weights) == (3, netuid, {4: 65535})
    ledger = view.ledger
    assert (ledger.found, ledger.height, ledger.epoch, ledger.registered) == (True, 42, 3, 2)
    assert ledger.total_stake_tao == 300.0 and ledger.issuance_tao == 2.5
    assert ledger.head_signers == [host.address]


def test_forged_expert_records_are_left_out_and_counted(dht_pair):
    """A record naming another miner's hotkey and a record filed under the wrong netuid are rejected and counted;
    the honest record on the same key is shown."""
    a, b = dht_pair
    honest, victim, impersonator, misfiler = key(21), key(22), key(23), key(24)
    netuid = 3101
    assert announce(a, expert_record(honest, netuid), honest, TTL)
    impersonation = dataclasses.replace(expert_record(victim, netuid), expiration=get_dht_time() + TTL)
    forged = SignedValue.sign(impersonator, impersonation.payload(), context=EXPERT_CONTEXT)
    assert a.store(experts_key(netuid), forged, impersonation.expiration, subkey=impersonator.address)
    assert announce(a, expert_record(misfiler, netuid + 1), misfiler, TTL)  # a real record for netuid + 1 ...
    found = a.get(experts_key(netuid + 1), latest=True).value[misfiler.address]
    assert a.store(experts_key(netuid), found.value, found.expiration_time, subkey=misfiler.address)  # ... misfiled

    view = read_network_view(b, [netuid], announce_ttl=TTL)

    assert [e.hotkey for e in view.experts] == [honest.address]
    assert view.rejected == {experts_key(netuid): 2}


def test_forged_weights_and_commits_are_left_out_and_counted(fresh_dht_pair):
    """A weight submission whose weights were changed after signing, a submission naming another validator and a
    commitment not signed by its publisher are each rejected and counted; no validator row comes from them."""
    a, b = fresh_dht_pair
    honest, forger = key(31), key(32)
    tampered = WeightSubmission.create(forger, 0, 3, [1, 2], [1.0, 1.0]).to_dict()
    tampered["weights"] = [65535, 0]
    foreign = WeightSubmission.create(honest, 0, 3, [1], [1.0]).to_dict()
    payload = {"submissions": [tampered, foreign]}
    assert publish_signed(a, WEIGHTS_KEY, forger, payload, WEIGHTS_CONTEXT, TTL)
    stolen = make_commit(honest, new_seed(), 3).to_json()  # honest's signed commitment, republished by the forger
    assert publish_commit(a, forger, stolen, None, TTL)

    view = read_network_view(b, [], announce_ttl=TTL)

    assert view.validators == []
    assert view.rejected == {WEIGHTS_KEY: 2, COMMITS_KEY: 1}


def test_head_counts_only_from_the_pinned_host(tmp_path, fresh_dht_pair):
    """A real ledger host's head is read when pinned; unpinned, or pinned to another key, no head is believed and the
    signers are only listed."""
    a, b = fresh_dht_pair
    host_key, other = key(41), key(42)
    lh = LedgerHostConfig(block_interval_seconds=0.25, tempo=20, difficulty=4)
    genesis = local_genesis(lh, [1], {host_key.address: 10 * RAO_PER_TAO})
    host = LedgerHost(a, tmp_path / "ledger.sqlite", genesis, host_key, 0.25)
    try:
        host.step()
    finally:
        host.stop()

    pinned = read_network_view(b, [], ledger_host=host_key.address).ledger
    unpinned = read_network_view(b, []).ledger
    wrong = read_network_view(b, [], ledger_host=other.address).ledger

    assert pinned.found and pinned.height == host.height and pinned.registered == 0
    assert (unpinned.found, unpinned.height, unpinned.head_signers) == (False, None, [host_key.address])
    assert (wrong.found, wrong.height) == (False, None)


def test_malformed_verdicts_are_rejected(fresh_dht_pair):
    """Validly signed commit payloads with a malformed verdict field are each rejected and counted, never raised."""
    a, b = fresh_dht_pair
    bad_fields = [{"flags": "all"}, {"flags": {"zz": ["noncausal"]}}, {"bpb": {key(1).address: "low"}}, {"seed": 5}]
    for i, bad in enumerate(bad_fields):
        validator = key(51 + i)
        payload = {"commit": make_commit(validator, new_seed(), 1).to_json(), "seed": None, "flags": {}, **bad}
        assert publish_signed(a, COMMITS_KEY, validator, payload, COMMIT_CONTEXT, TTL)

    view = read_network_view(b, [])

    assert view.validators == [] and view.rejected == {COMMITS_KEY: len(bad_fields)}
