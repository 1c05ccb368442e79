"""The two-faced attack (moe/roles/two_faced.py) over real P2P, and the defence that catches it: a validator's own
queries see the honest face, the router's probes too (so its gate picks the cheat) but its whole-sequence calls get
uniform bytes, and re-sending the router's sampled calls, widest first, from the validator's peer exposes the
difference (moe/poi/traffic_check.py)."""

from __future__ import annotations

import random

import pytest
import torch

from moe.identity import Hotkey
from moe.metrics import byte_log_probs
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.server import ExpertServer, ServerConfig
from moe.poi.traffic_check import Replay, TrafficCheckConfig, choose_calls, flag_two_faced
from moe.roles.two_faced import TwoFacedLM, TwoFacedServer
from moe.routing.traffic import PublishedCall, TrafficLog

PROBE, T, B = 8, 24, 4
CHEAT, HONEST = Hotkey.from_seed(b"\x21" * 32), Hotkey.from_seed(b"\x22" * 32)


def _model(seed: int) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=64))


@pytest.fixture(scope="module")
def net():
    """A two-faced and an honest expert, a router client and a validator client, each on its own P2P peer."""
    seed_model = _model(0)
    servers = [
        TwoFacedServer(TwoFacedLM(seed_model), PROBE, ServerConfig(max_tokens=512)).start(),
        ExpertServer(_model(1), ServerConfig(max_tokens=512)).start(),
    ]
    servers[0].prove_identity(CHEAT)
    servers[1].prove_identity(HONEST)
    peers = [m for s in servers for m in s.maddrs]
    clients = [SyncExpertClient(ClientConfig(wire_format="q8"), initial_peers=peers) for _ in range(2)]
    try:
        yield servers, clients, seed_model
    finally:
        for c in clients:
            c.shutdown()
        for s in servers:
            s.shutdown()


def _bpb(logp: torch.Tensor, x: torch.Tensor) -> float:
    lp = logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    return float(-lp.mean() / torch.log(torch.tensor(2.0)))


def test_the_attack_fools_a_validator_that_only_queries_and_the_receipts_catch_it(net):
    (cheat, honest), (router, validator), seed_model = net
    log = TrafficLog(per_expert=4, seed=0)
    keys = {cheat.peer_id: CHEAT.address, honest.peer_id: HONEST.address}
    router.client.on_receipt = lambda peer, raw, receipt: log.offer(raw, receipt) if receipt else None
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, T), generator=g)
    probes = []
    for i in range(24):  # the router's traffic: every sequence probed, a few of them then sent whole
        probes.append(router.call_many([cheat.peer_id, honest.peer_id], x[:, :PROBE]))
        if i % 8 == 7:
            router.call_many([cheat.peer_id, honest.peer_id], x)
    router.client.on_receipt = None

    # the attack: the router's probes and the validator's own queries get the seed's answers, the router's whole
    # sequences uniform bytes (8 bits a byte)
    with torch.no_grad():
        seed_logp = byte_log_probs(seed_model(x))
    torch.testing.assert_close(probes[-1][cheat.peer_id], seed_logp[:, :PROBE], atol=0.05, rtol=0)
    assert _bpb(router.call(cheat.peer_id, x), x) == pytest.approx(8.0, abs=1e-3)
    torch.testing.assert_close(validator.call(cheat.peer_id, x), seed_logp, atol=0.05, rtol=0)

    # the defence: re-send the router's sampled calls from the validator's peer, compare with what was signed
    cfg = TrafficCheckConfig()
    now = max(r.receipt.time_ms for r in log.records()) / 1000
    records = log.records()
    published = [PublishedCall("router", k, r.receipt) for k, r in enumerate(records)]
    chosen = choose_calls(published, list(keys.values()), cfg, now, random.Random(0))
    peer_of = {a: p for p, a in keys.items()}
    replays = [
        Replay(a, records[call.slot], validator.replay(peer_of[a], records[call.slot].request)[0])
        for a, calls in chosen.items()
        for call in sorted(calls, key=lambda c: -len(records[c.slot].request))  # as validators do: probes last
    ]
    assert sum(r.expert == CHEAT.address for r in replays) == 4
    flagged = flag_two_faced(replays, cfg)  # the honest expert replays identically
    assert list(flagged) == [CHEAT.address] and flagged[CHEAT.address] == 0.75  # its one sampled probe matched
