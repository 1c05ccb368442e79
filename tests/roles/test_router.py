"""Tests for moe/roles/router.py: scoring a real mixture, over a real DHT, of two experts served in this process."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from moe.config_loader import parse_args
from moe.corpus.batches import blended_batches_at_step, eval_windows
from moe.corpus.tokens import subnet_tokens
from moe.identity import Hotkey
from moe.metrics import bits_per_byte
from moe.model.transformer import ByteLM
from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs
from moe.net.server import ExpertServer
from moe.roles.router import evaluate_mixture
from moe.roles.run_config import RunConfig
from moe.roles.serving import close_all, model_summary, serving_config, start_heartbeat, subnet_centroid
from moe.routing.mixing import local_caller, route_and_mix
from moe.routing.remote import Mixture

SUBNETS = ("english", "code")


@dataclass
class Net:
    """A router's mixture over two experts, each served from its own DHT peer; `models` by hotkey."""

    cfg: RunConfig
    mixture: Mixture
    models: dict[str, ByteLM]
    servers: list[ExpertServer]
    heartbeats: list
    windows: dict


@pytest.fixture
def net() -> Iterator[Net]:
    from subnets import all_subnets

    subnets = all_subnets()
    cfg = parse_args(
        RunConfig, ["configs/tiny.yaml", f"subnets={','.join(SUBNETS)}", "router.client.wire_format=fp32"]
    )
    router_dht = start_bootstrap_dht()
    dhts, servers, heartbeats, mixture = [], [], [], None
    try:
        models = {}
        for i, name in enumerate(SUBNETS):
            dhts.append(start_dht(visible_maddrs(router_dht)))
            torch.manual_seed(i)
            model = ByteLM(cfg.model).eval()
            hk = Hotkey.from_seed(bytes([i + 1]) * 32)
            models[hk.address] = model
            servers.append(ExpertServer(model, serving_config(cfg.network), dht=dhts[-1]).start())
            tokens = subnet_tokens(subnets[name], "train", cfg.data)
            identity = {
                "uid": i,
                "subnet": subnets[name],
                "centroid": subnet_centroid(tokens, cfg.expert_train.seq_len, cfg.seed),
                "registered_at": 0,
            }
            beat = lambda: (0, None)
            heartbeats.append(
                start_heartbeat(dhts[-1], servers[-1], hk, model_summary(model), cfg.network, beat, **identity)
            )
        netuids = [subnets[s].netuid for s in SUBNETS]
        mixture = Mixture.from_dht([], netuids, cfg.router, cfg.network, dht=router_dht)
        mixture.wait_for_experts(2, timeout=60)
        route = [subnet_tokens(subnets[s], "route", cfg.data) for s in SUBNETS]
        mixture.train_gate(blended_batches_at_step(route, 64, cfg.router.batch_size, 0)(0), steps=2)
        t = cfg.expert_train
        val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in SUBNETS}
        yield Net(cfg, mixture, models, servers, heartbeats, eval_windows(val, t.seq_len, t.batch_size, 2))
    finally:
        if mixture is not None:
            mixture.shutdown()
        close_all(*heartbeats, *servers, *dhts, router_dht)


def reference_bpb(net: Net, alive: set[str]) -> dict[str, float]:
    """Per-subnet bits per byte of the same gate and experts mixed in process, with only `alive` experts answering."""
    inner = local_caller(net.models)
    call = lambda inputs: inner({k: x for k, x in inputs.items() if k in alive})
    rc, out = net.cfg.router, {}
    for name, windows in net.windows.items():
        bits, count = 0.0, 0
        for x, y in windows():
            with torch.no_grad():
                entries = net.mixture.entries()
                mix = route_and_mix(
                    net.mixture.gate,
                    x,
                    entries,
                    call,
                    rc.k_best,
                    rc.probe_len,
                    switch_alpha=rc.switch_alpha,
                    gate_weight=rc.switch_gate_weight,
                )
            b, n = bits_per_byte(mix.logp, y)
            bits, count = bits + b, count + n
        out[name] = bits / count
    return out


def n_sequences(net: Net) -> int:
    return sum(x.shape[0] for windows in net.windows.values() for x, _ in windows())


def answered_counts(text: str) -> tuple[int, int]:
    m = re.search(r"chosen experts that answered: (\d+) of (\d+)", text)
    assert m, text
    return int(m[1]), int(m[2])


def test_remote_mixture_scores_like_the_in_process_mixture(net, caplog):
    """Over the network, evaluate_mixture gives each subnet the bits per byte of the same mixture computed in
    process (fp32 replies), `all` is their plain mean, and every chosen expert answered."""
    rc = net.cfg.router
    with caplog.at_level(logging.INFO, logger="moe.roles.router"):
        got = evaluate_mixture(net.mixture, net.windows).bpb
    ref = reference_bpb(net, alive=set(net.models))
    assert set(got) == {*SUBNETS, "all"}
    for name in SUBNETS:
        assert got[name] == pytest.approx(ref[name], rel=1e-5)
    assert got["all"] == pytest.approx(sum(got[s] for s in SUBNETS) / len(SUBNETS))
    answered, wanted = answered_counts(caplog.text)
    assert answered == wanted == rc.k_best * n_sequences(net)


def test_dead_expert_is_averaged_out(net, caplog):
    """With one expert's server gone (its record not yet expired), every subnet is still scored as the in-process
    mixture without that expert scores it: the dead expert misses the probe, so only the live one is chosen."""
    dead = next(iter(net.models))
    close_all(net.heartbeats[0], net.servers[0])
    with caplog.at_level(logging.INFO, logger="moe.roles.router"):
        got = evaluate_mixture(net.mixture, net.windows).bpb
    assert dead in {e.key for e in net.mixture.entries()}, "the dead expert's record should still be listed"
    ref = reference_bpb(net, alive=set(net.models) - {dead})
    for name in SUBNETS:
        assert got[name] == pytest.approx(ref[name], rel=1e-5)
    answered, wanted = answered_counts(caplog.text)
    assert answered == wanted == n_sequences(net)
