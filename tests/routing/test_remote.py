"""Tests for moe/routing/remote.py: a `Mixture` over real loopback DHT peers and expert servers, checked against
`route_and_mix` over the same models in process."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import hivemind
import psutil
import pytest
import torch

from moe.identity import Hotkey
from moe.model.tokenizer import encode
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.client import ClientConfig
from moe.net.discovery import announce
from moe.net.expert_record import ExpertRecord
from moe.net.join import NetworkConfig, start_bootstrap_dht, start_dht, visible_maddrs
from moe.net.server import ExpertServer, ServerConfig
from moe.roles.adversary import PeekLM
from moe.routing.mixing import gate_loss, local_caller, route_and_mix
from moe.routing.remote import Mixture, RouterConfig
from moe.routing.signature import SIGNATURE_DIM

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
HONEST, EVIL, EMPTY, COPY, PEEK = 1201, 1202, 1203, 1204, 1205
"""Netuids: two honest experts, one expert that answers garbage, a subnet nobody serves, a copycat's record
naming the first honest expert's peer, and an expert that reads the byte it predicts from the request."""
P = 8  # probe length
ROUTER = RouterConfig(
    k_best=1, probe_len=P, d_gate=16, lr=1e-2, client=ClientConfig(wire_format="fp32", forward_timeout_seconds=20.0)
)
NETWORK = NetworkConfig(heartbeat_interval_seconds=1.0, announce_ttl_seconds=600.0)


def tiny_lm(seed: int) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(MODEL).eval()


def centroid(seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(SIGNATURE_DIM, generator=g), -1).tolist()


def byte_batch(B: int = 4, T: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


class GarbageServer(ExpertServer):
    """A real server whose every reply is random bytes."""

    def _process(self, raw: bytes) -> bytes:
        return os.urandom(997)


@dataclass
class Net:
    router_dht: hivemind.DHT
    peers: list[str]
    models: dict[str, ByteLM]
    """Honest experts' in-process models by hotkey address."""
    evil_peer: str
    copycat: str
    """Hotkey address whose record (on COPY) names the first honest expert's peer."""


def _reap(before: set[int]) -> None:
    """Wait for every process started since `before` to exit; kill (by pid) and fail on any that lingers.

    torch's shared-memory manager is exempt: torch starts one per process and it exits with the process."""
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and not _is_shm_manager(p)]
    _, alive = psutil.wait_procs(new, timeout=15)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    assert not alive, f"processes left running: {[p.pid for p in alive]}"


def _is_shm_manager(p: psutil.Process) -> bool:
    try:
        return p.name() == "torch_shm_manager"
    except psutil.Error:
        return False


def expert_record(hotkey: Hotkey, uid: int, netuid: int, peer_id: str, signature: list[float]) -> ExpertRecord:
    return ExpertRecord(
        uid=uid,
        hotkey=hotkey.address,
        subnet="code",
        netuid=netuid,
        peer_id=peer_id,
        model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=MODEL.vocab_size, params=9000),
        signature_centroid=signature,
    )


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    """A bootstrap peer, four expert peers (two honest ByteLMs on HONEST, a garbage server on EVIL, a peeker on PEEK)
    and a router peer, all on loopback; every server and DHT is shut down and every child process reaped afterwards."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    dhts: list[hivemind.DHT] = []
    servers: list[ExpertServer] = []
    try:
        dhts.append(start_bootstrap_dht())
        peers = visible_maddrs(dhts[0])
        models = {}
        kinds = ((ExpertServer, HONEST), (ExpertServer, HONEST), (GarbageServer, EVIL), (ExpertServer, PEEK))
        for i, (cls, netuid) in enumerate(kinds):
            if i:  # the bootstrap peer serves the first expert, each other expert gets a peer of its own
                dhts.append(start_dht(peers))
            model = PeekLM() if netuid == PEEK else tiny_lm(i)
            hotkey = Hotkey.from_seed(bytes([40 + i]) * 32)
            servers.append(cls(model, ServerConfig(max_tokens=1024), dht=dhts[-1]).start())
            servers[-1].prove_identity(hotkey)
            record = expert_record(hotkey, i, netuid, servers[-1].peer_id.to_base58(), centroid(i))
            assert announce(dhts[-1], record, hotkey, ttl=600)
            if netuid == HONEST:
                models[hotkey.address] = model
        stray = Hotkey.from_seed(bytes([49]) * 32)  # announced with a centroid of the wrong size: not an expert
        record = expert_record(stray, 9, HONEST, servers[0].peer_id.to_base58(), [0.5] * 16)
        assert announce(dhts[0], record, stray, ttl=600)
        copycat = Hotkey.from_seed(bytes([50]) * 32)
        uniform = [1 / SIGNATURE_DIM] * SIGNATURE_DIM  # the prior's favourite on random bytes: it gets rows
        record = expert_record(copycat, 10, COPY, servers[0].peer_id.to_base58(), uniform)
        assert announce(dhts[0], record, copycat, ttl=600)
        dhts.append(start_dht(peers))
        yield Net(dhts[-1], peers, models, servers[2].peer_id.to_base58(), copycat.address)
    finally:
        for s in servers:
            s.shutdown()
        for d in reversed(dhts):
            d.shutdown()
        _reap(before)


@pytest.fixture
def mixture(net) -> Iterator[Mixture]:
    """A mixture over the two honest experts (and the stray record), sharing the router's DHT; gate keys seeded."""
    torch.manual_seed(0)
    mix = Mixture.from_dht(net.peers, [HONEST], ROUTER, NETWORK, dht=net.router_dht)
    try:
        mix.directory.wait_for(3, timeout=30)  # the stray record is discovered, never proven
        mix.wait_for_experts(2, timeout=30)
        with torch.no_grad():
            mix.gate.keys.normal_(std=2.0)
        yield mix
    finally:
        mix.shutdown()


def as_router(gate, x, entries, call):
    """route_and_mix with the test router's settings, in process: the reference every remote result is held to."""
    return route_and_mix(
        gate,
        x,
        entries,
        call,
        ROUTER.k_best,
        P,
        switch_alpha=ROUTER.switch_alpha,
        gate_weight=ROUTER.switch_gate_weight,
        escalate_bits=ROUTER.escalate_bits,
        escalate_window=ROUTER.escalate_window,
    )


def test_only_records_with_full_signatures_are_experts(net, mixture):
    """Records whose centroid is not SIGNATURE_DIM long are left out; the rest get distinct gate slots."""
    assert len(mixture.directory.experts()) == 3
    entries = mixture.entries()
    assert {e.key for e in entries} == set(net.models)
    assert len({e.slot for e in entries}) == 2 and all(len(e.centroid) == SIGNATURE_DIM for e in entries)


def test_log_probs_equal_local_route_and_mix(net, mixture):
    """Over fp32 wire, the mixture's log-probs equal route_and_mix with local_caller over the same models and gate."""
    x = byte_batch(6)
    got = mixture.log_probs(x)
    ref = as_router(mixture.gate, x, mixture.entries(), local_caller(net.models))
    assert got.shape == (6, 20, 256)
    torch.testing.assert_close(got, ref.logp, atol=1e-5, rtol=0)
    assert bool(ref.chosen.any(0).all())  # k_best=1 splits the rows: each expert serves some, others skip them
    assert mixture.faults() == []


def test_generate_greedy_follows_mixture_argmax(net, mixture):
    """At a vanishing temperature, generate appends the argmax byte of the local reference mixture at each step."""
    prompt, n = "def f(x):\n    ", 4
    out = mixture.generate(prompt, n, temperature=1e-6, seed=0, context_bytes=16)
    ids = encode(prompt).astype("int64").tolist()
    call = local_caller(net.models)
    for _ in range(n):
        x = torch.tensor([ids[-16:]])
        logp = as_router(mixture.gate, x, mixture.entries(), call).logp
        ids.append(int(logp[0, -1].argmax()))
    assert out == bytes(ids[-n:])


def test_train_gate_matches_local_training(net, mixture):
    """train_gate takes the same AdamW steps on the same loss as a gate trained in process with local_caller."""
    batches = [(x[:, :-1], x[:, 1:]) for x in (byte_batch(4, 17, seed=s) for s in range(3))]
    ref_gate = copy.deepcopy(mixture.gate)
    seen = []
    losses = mixture.train_gate(iter(batches), steps=3, on_step=lambda step, nll: seen.append(step))

    opt = torch.optim.AdamW(ref_gate.parameters(), lr=ROUTER.lr, weight_decay=0.0)
    call, ref_losses = local_caller(net.models), []
    for x, y in batches:
        out = route_and_mix(ref_gate, x, mixture.entries(), call, ROUTER.k_best, P, call_all=True)
        loss, nll = gate_loss(out, y, P, ROUTER.balance_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ref_losses.append(nll.item())
    assert seen == [1, 2, 3]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (name, p), q in zip(mixture.gate.named_parameters(), ref_gate.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_save_load_round_trips_gate_and_slots(net, mixture, tmp_path):
    """A fresh mixture that loads a saved one has its gate weights and slots, and answers the same log-probs."""
    mixture.slots.slot_of["departed"] = 5  # a slot of an expert not online now is kept too
    mixture.entries()
    mixture.save(tmp_path / "router")
    x = byte_batch(seed=1)
    want = mixture.log_probs(x)
    meta = json.loads((tmp_path / "router" / "gate.json").read_text())
    assert {r["hotkey"] for r in meta["records"]} == set(net.models) and meta["d_gate"] == ROUTER.d_gate

    torch.manual_seed(123)
    other = Mixture.from_dht(net.peers, [HONEST], ROUTER, NETWORK, dht=net.router_dht)
    try:
        other.wait_for_experts(2, timeout=30)
        assert not torch.equal(other.gate.keys, mixture.gate.keys)
        other.load(tmp_path / "router")
        assert other.slots.slot_of == mixture.slots.slot_of
        for (name, a), b in zip(other.gate.state_dict().items(), mixture.gate.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        torch.testing.assert_close(other.log_probs(x), want, atol=1e-6, rtol=0)
    finally:
        other.shutdown()


def test_garbage_expert_is_dropped_and_reported(net):
    """An expert replying garbage is left out (the rest mix as if it were absent) and shows in faults()."""
    mix = Mixture.from_dht(net.peers, [HONEST, EVIL], ROUTER, NETWORK, dht=net.router_dht)
    try:
        mix.directory.wait_for(4, timeout=30)
        mix.wait_for_experts(3, timeout=30)
        x = byte_batch(seed=2)
        got = mix.log_probs(x)
        entries = mix.entries()
        assert len(entries) == 3
        ref = as_router(mix.gate, x, entries, local_caller(net.models))
        torch.testing.assert_close(got, ref.logp, atol=1e-5, rtol=0)
        evil = next(r.hotkey for r in mix.records() if r.peer_id == net.evil_peer)
        assert not ref.answered[..., [e.key for e in entries].index(evil)].any()
        faults = mix.faults()
        assert faults and {f.peer_id.to_base58() for f in faults} == {net.evil_peer}
    finally:
        mix.shutdown()


def test_record_naming_another_experts_peer_is_left_out(net):
    """The identity hijack: a copycat record (its own valid signature) naming an honest expert's peer. That peer
    proves only its own hotkey, so the copycat's record never counts: it is not an expert, is never called, and the
    mixture equals the reference over the honest experts alone."""
    torch.manual_seed(0)
    mix = Mixture.from_dht(net.peers, [HONEST, COPY], ROUTER, NETWORK, dht=net.router_dht)
    try:
        mix.directory.wait_for(4, timeout=30)
        mix.wait_for_experts(2, timeout=30)
        assert net.copycat in {r.hotkey for r in mix.directory.experts()}
        assert {r.hotkey for r in mix.records()} == set(net.models)
        impostors = mix.impostors()  # what a validator flags `identity` (the stray record names that peer too)
        assert net.copycat in impostors and not impostors & set(net.models)
        x, entries = byte_batch(8, seed=3), mix.entries()
        ref = as_router(mix.gate, x, entries, local_caller(net.models)).logp
        torch.testing.assert_close(mix.log_probs(x), ref, atol=1e-5, rtol=0)
    finally:
        mix.shutdown()


def test_an_expert_the_validators_flagged_is_never_called(net, mixture):
    """After set_trust flags one honest expert, no request reaches its peer (probe or chosen round) and the mixture
    equals the in-process reference over the other expert alone, whose prior is its share over the mean: log 1."""
    dropped, kept = sorted(net.models)
    asked = []
    call_many = mixture.client.call_many
    mixture.client.call_many = lambda peers, inputs: (
        asked.extend(p.to_base58() for p in peers) or call_many(peers, inputs)
    )
    mixture.set_trust({dropped: 0.3, kept: 0.7}, flagged={dropped: ["copy"]})
    assert mixture.distrusted() == {dropped}
    entries = mixture.entries()
    assert [(e.key, e.log_trust) for e in entries] == [(kept, 0.0)]
    x = byte_batch(seed=4)
    got = mixture.log_probs(x)
    peer_of = {r.hotkey: r.peer_id for r in mixture.records()}
    assert asked and set(asked) == {peer_of[kept]}
    ref = as_router(mixture.gate, x, entries, local_caller({kept: net.models[kept]}))
    torch.testing.assert_close(got, ref.logp, atol=1e-5, rtol=0)


def test_trust_reaches_the_gate_as_a_relative_log_share(net, mixture):
    """Scored experts carry log(share / mean share), a zero share floored at 5% of the mean (it lowers the prior but
    excludes nobody); with no positive share at all (no weights yet) everyone is trusted alike; a share for a hotkey
    that is not online changes nobody's prior."""
    a, b = sorted(net.models)
    mixture.set_trust({a: 0.2, b: 0.6, "f" * 64: 0.2})
    trust = {e.key: e.log_trust for e in mixture.entries()}
    assert trust == pytest.approx({a: math.log(0.5), b: math.log(1.5)})
    mixture.set_trust({a: 0.0, b: 0.6})
    trust = {e.key: e.log_trust for e in mixture.entries()}
    assert mixture.distrusted() == set() and trust == pytest.approx({a: math.log(0.05), b: math.log(2.0)})
    mixture.set_trust({a: 0.0, b: 0.0})
    assert mixture.distrusted() == set() and {e.log_trust for e in mixture.entries()} == {0.0}


def test_an_expert_the_ledger_does_not_know_is_never_routed(net, mixture):
    """Following a ledger, an expert whose hotkey is not registered there is left out even before any epoch
    scored anyone; a registered newcomer no epoch has scored yet is routed with a neutral prior."""
    a, b = sorted(net.models)
    mixture.set_trust({}, registered={b})
    assert mixture.distrusted() == {a} and [e.key for e in mixture.entries()] == [b]
    mixture.set_trust({a: 0.5}, registered={a, b})
    assert {e.key: e.log_trust for e in mixture.entries()} == {a: 0.0, b: 0.0}


def test_the_routers_audit_drops_a_peeking_expert(net):
    """The router's sampled causality audit over the live experts flags the peeker `noncausal` and nobody else; from
    then on the peeker is out of the mixture's entries and no request reaches its peer."""
    mix = Mixture.from_dht(net.peers, [HONEST, PEEK], ROUTER, NETWORK, dht=net.router_dht)
    try:
        mix.directory.wait_for(4, timeout=30)
        mix.wait_for_experts(3, timeout=30)
        peeker = next(r for r in mix.records() if r.netuid == PEEK)
        x, donors = byte_batch(8, 20, seed=5), byte_batch(8, 20, seed=6)
        assert peeker.hotkey in {e.key for e in mix.entries()}
        assert mix.audit_causality(x, donors) == {peeker.hotkey: "noncausal"}
        assert {e.key for e in mix.entries()} == set(net.models)
        asked = []
        call_many = mix.client.call_many
        mix.client.call_many = lambda peers, inputs: (
            asked.extend(p.to_base58() for p in peers) or call_many(peers, inputs)
        )
        mix.log_probs(byte_batch(seed=7))
        assert asked and peeker.peer_id not in asked
    finally:
        mix.shutdown()


def test_log_probs_without_experts_raises(net):
    """With no expert known on its subnets, log_probs raises RuntimeError instead of answering."""
    mix = Mixture.from_dht(net.peers, [EMPTY], ROUTER, NETWORK, dht=net.router_dht)
    try:
        with pytest.raises(RuntimeError, match="no experts"):
            mix.log_probs(byte_batch())
        with pytest.raises(TimeoutError):
            mix.wait_for_experts(1, timeout=0.5)
    finally:
        mix.shutdown()


@pytest.mark.parametrize(
    "field, value",
    [
        ("k_best", 0),
        ("probe_len", 0),
        ("batch_size", 0),
        ("d_gate", 0),
        ("eval_batches", 0),
        ("steps", -1),
        ("balance_coef", -0.01),
        ("balance_coef", float("nan")),
        ("lr", 0.0),
        ("lr", float("nan")),
    ],
)
def test_router_config_range_checks_name_the_field(field, value):
    """A RouterConfig value out of range (or NaN) raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        RouterConfig(**{field: value})


def test_router_config_accepts_boundaries():
    """The smallest legal RouterConfig values are accepted."""
    rc = RouterConfig(
        k_best=1, probe_len=1, steps=0, batch_size=1, lr=1e-9, balance_coef=0.0, d_gate=1, eval_batches=1
    )
    assert (rc.k_best, rc.steps, rc.balance_coef) == (1, 0, 0.0)
