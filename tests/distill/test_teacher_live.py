"""The teacher over a real network: two expert servers on loopback, one of which dies mid-run. The teacher goes on,
renormalised over the survivor (exactly what the mixture of the survivor alone gives), and logs the change."""

from __future__ import annotations

import logging

import torch

from moe.distill.attribution import DistillTraffic
from moe.distill.teacher import CachedTeacher
from moe.distill.teacher_cache import TeacherCache
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.client import ClientConfig
from moe.net.discovery import announce
from moe.net.expert_record import ExpertRecord
from moe.net.join import NetworkConfig, start_bootstrap_dht, start_dht, visible_maddrs
from moe.net.server import ExpertServer, ServerConfig
from moe.routing.mixing import local_caller, route_and_mix
from moe.routing.remote import Mixture, RouterConfig
from moe.routing.signature import SIGNATURE_DIM

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
NETUID = 1301
ROUTER = RouterConfig(
    k_best=2,
    probe_len=8,
    d_gate=16,
    switch_alpha=0.0,
    escalate_bits=0.0,
    generalist=False,
    client=ClientConfig(wire_format="fp32", forward_timeout_seconds=3.0, backoff_base_seconds=60.0),
)
NETWORK = NetworkConfig(heartbeat_interval_seconds=1.0, announce_ttl_seconds=600.0)


def _record(hotkey: Hotkey, uid: int, peer_id: str) -> ExpertRecord:
    g = torch.Generator().manual_seed(uid)
    return ExpertRecord(
        uid=uid,
        hotkey=hotkey.address,
        subnet="code",
        netuid=NETUID,
        peer_id=peer_id,
        model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=MODEL.vocab_size, params=9000),
        signature_centroid=torch.softmax(torch.randn(SIGNATURE_DIM, generator=g), -1).tolist(),
    )


def test_an_expert_dying_mid_run_leaves_a_renormalised_teacher(tmp_path, caplog):
    dhts, servers, models = [start_bootstrap_dht()], [], {}
    peers = visible_maddrs(dhts[0])
    mix = None
    try:
        for i in range(2):
            dhts.append(start_dht(peers))
            torch.manual_seed(i)
            model = ByteLM(MODEL).eval()
            hotkey = Hotkey.from_seed(bytes([60 + i]) * 32)
            servers.append(ExpertServer(model, ServerConfig(max_tokens=1024), dht=dhts[-1]).start())
            servers[-1].prove_identity(hotkey)
            assert announce(dhts[-1], _record(hotkey, i, servers[-1].peer_id.to_base58()), hotkey, ttl=600)
            models[hotkey.address] = model
        mix = Mixture.from_dht(peers, [NETUID], ROUTER, NETWORK)
        mix.wait_for_experts(2, timeout=30)
        traffic = DistillTraffic()
        teacher = CachedTeacher(mix.mix, TeacherCache(tmp_path, "fp32"), traffic)
        g = torch.Generator().manual_seed(0)
        teacher(torch.randint(0, 256, (3, 24), generator=g))
        assert set(traffic.positions) == set(models)
        servers[1].shutdown()  # the second expert dies; its DHT record lives on
        dead = list(models)[1]
        x = torch.randint(0, 256, (3, 24), generator=g)
        with caplog.at_level(logging.WARNING, logger="moe.distill.teacher"):
            got = teacher(x)
        assert "renormalised" in caplog.text and dead[:12] in caplog.text
        entries = mix.entries()
        survivor = {k: m for k, m in models.items() if k != dead}
        ref = route_and_mix(mix.gate, x, entries, local_caller(survivor), ROUTER.k_best, ROUTER.probe_len)
        torch.testing.assert_close(got, ref.logp, atol=1e-5, rtol=0)
        assert torch.allclose(got.logsumexp(-1), torch.zeros(3, 24), atol=1e-4)
    finally:
        if mix is not None:
            mix.shutdown()
        for s in servers:
            s.shutdown()
        for d in reversed(dhts):
            d.shutdown()
