"""Tests for moe/roles/serving.py: what every serving node does (centroid, summary, registration, heartbeat, close)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from moe.config_loader import parse_args
from moe.corpus.tokens import subnet_tokens
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.discovery import discover
from moe.net.expert_record import ExpertRecord
from moe.net.join import NetworkConfig, start_bootstrap_dht
from moe.net.ledger_client import LedgerAccessConfig
from moe.net.loop import PeriodicThread
from moe.net.server import ExpertServer
from moe.roles.run_config import RunConfig
from moe.roles.serving import (
    close_all,
    model_summary,
    register_if_ledger,
    serving_config,
    start_heartbeat,
    subnet_centroid,
)
from moe.routing.signature import SIGNATURE_DIM

PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return parse_args(RunConfig, ["configs/tiny.yaml"])


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


@pytest.fixture(scope="module")
def dht():
    """One real DHT peer on loopback for the module's tests, shut down afterwards."""
    node = start_bootstrap_dht()
    try:
        yield node
    finally:
        node.shutdown()


def test_centroid_is_deterministic_per_seed(cfg, subnets):
    """The same tokens and run seed give the same published centroid, a distribution over the signature buckets."""
    tokens = subnet_tokens(subnets["code"], "train", cfg.data)
    a = subnet_centroid(tokens, 64, run_seed=5)
    assert a == subnet_centroid(tokens, 64, run_seed=5)
    assert a != subnet_centroid(tokens, 64, run_seed=6)
    assert len(a) == SIGNATURE_DIM and min(a) >= 0 and sum(a) == pytest.approx(1.0, abs=1e-4)


def test_centroid_tells_subnets_apart(cfg, subnets):
    """Each subnet's centroid lies nearer its own centroid under another seed than any other subnet's centroid."""
    cents = {}
    for name, subnet in subnets.items():
        tokens = subnet_tokens(subnet, "train", cfg.data)
        cents[name] = [np.array(subnet_centroid(tokens, 64, run_seed=s)) for s in (0, 1)]
    for name, (c0, c1) in cents.items():
        own = np.abs(c0 - c1).sum()
        others = [np.abs(c0 - cs[0]).sum() for other, cs in cents.items() if other != name]
        assert own < min(others), (name, own, others)


@pytest.mark.parametrize("mcfg", [None, ModelConfig()], ids=["tiny", "default"])
def test_model_summary_matches_model_and_passes_record_checks(cfg, mcfg):
    """The summary holds the model's own shape and parameter count, and a signed expert record carrying it is
    accepted by readers unchanged."""
    torch.manual_seed(0)
    model = ByteLM(mcfg or cfg.model)
    c = model.config
    summary = model_summary(model)
    distinct = {id(p): p.numel() for p in model.parameters()}
    assert summary == {
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "d_ff": c.d_ff,
        "vocab_size": c.vocab_size,
        "params": sum(distinct.values()),
    }
    hk = Hotkey.from_seed(b"\x01" * 32)
    record = ExpertRecord(uid=1, hotkey=hk.address, subnet="code", netuid=2, peer_id=PEER_ID, model=summary)
    assert ExpertRecord.from_dht_value(record.to_dht_value(hk)).model == summary


@pytest.mark.parametrize(
    "host,direct", [("0.0.0.0", None), ("::", None), ("", None), ("127.0.0.1", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")]
)
def test_serving_config_direct_path_only_on_a_concrete_host(host, direct):
    """A node on a wildcard host serves over P2P only; on a concrete address the direct path listens there."""
    sc = serving_config(NetworkConfig(host=host))
    assert sc.kind == "lm" and sc.direct_host == direct


def test_register_without_dht_or_ledger_keeps_uid(dht):
    """Without a DHT, or with the ledger disabled, the node keeps its configured uid at block 0 at once."""
    hk = Hotkey.from_seed(b"\x02" * 32)
    assert register_if_ledger(None, hk, LedgerAccessConfig(enabled=True, host=hk.address), 7, 1) == (7, 0)
    assert register_if_ledger(dht, hk, LedgerAccessConfig(enabled=False), 9, 1) == (9, 0)


def test_registration_that_never_lands_serves_unregistered(dht, caplog):
    """With the ledger enabled but no ledger host in the network, registration times out into a warning and the
    node serves under its configured uid, unregistered."""
    hk = Hotkey.from_seed(b"\x03" * 32)
    host = Hotkey.from_seed(b"\x04" * 32).address
    ledger = LedgerAccessConfig(enabled=True, host=host, register_timeout_seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="moe.roles.serving"):
        assert register_if_ledger(dht, hk, ledger, 11, 1) == (11, 0)
    assert "serving as uid 11, unregistered" in caplog.text


def wait_until(predicate, timeout: float):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None


def test_heartbeat_announces_the_served_expert_and_its_progress(cfg, subnets, dht):
    """The heartbeat's record names the server's peer, the node's identity and shape, and follows progress()."""
    torch.manual_seed(0)
    model = ByteLM(cfg.model)
    hk = Hotkey.from_seed(b"\x04" * 32)
    subnet = subnets["math"]
    net = NetworkConfig(heartbeat_interval_seconds=0.2, announce_ttl_seconds=5.0)
    centroid = [1.0 / SIGNATURE_DIM] * SIGNATURE_DIM
    progress = {"now": (0, None)}
    server = heartbeat = None
    try:
        server = ExpertServer(model, serving_config(net), dht=dht).start()
        identity = {"uid": 3, "subnet": subnet, "centroid": centroid, "registered_at": 17}
        heartbeat = start_heartbeat(dht, server, hk, model_summary(model), net, lambda: progress["now"], **identity)
        first = wait_until(lambda: discover(dht, [subnet.netuid]), timeout=30)
        assert first, "no record announced"
        (r,) = first
        assert (r.uid, r.hotkey, r.subnet, r.netuid) == (3, hk.address, "math", subnet.netuid)
        assert r.peer_id == str(server.peer_id) and r.model == model_summary(model)
        assert r.signature_centroid == centroid and r.registered_at == 17.0
        assert (r.train_step, r.claimed_eval_bpb) == (0, None)
        progress["now"] = (12, 2.5)
        later = wait_until(
            lambda: [x for x in discover(dht, [subnet.netuid]) if x.train_step == 12 and x.claimed_eval_bpb == 2.5],
            timeout=30,
        )
        assert later, "the heartbeat did not re-announce the new progress"
    finally:
        close_all(heartbeat, server)


class Part(PeriodicThread):
    """A real background part (as a heartbeat or directory is) that notes in `log` when it is stopped."""

    def __init__(self, name: str, log: list[str]):
        super().__init__(name, interval=0.05)
        self.log = log

    def step(self) -> None:
        pass

    def stop(self, timeout: float | None = 10.0) -> None:
        self.log.append(f"stop {self._thread.name}")
        super().stop(timeout)


class ShutdownPart(Part):
    """A part with both methods, as a server or DHT offering shutdown(): close_all must use shutdown."""

    def shutdown(self) -> None:
        self.log.append(f"shutdown {self._thread.name}")
        PeriodicThread.stop(self)


def test_close_all_in_order_skipping_none():
    """close_all stops each part in the order given, prefers shutdown() over stop(), skips None, and leaves
    no part's thread running."""
    log: list[str] = []
    a, b, c = Part("a", log).start(), ShutdownPart("b", log).start(), Part("c", log).start()
    close_all(None, a, None, b, c, None)
    assert log == ["stop a", "shutdown b", "stop c"]
    assert not (a._thread.is_alive() or b._thread.is_alive() or c._thread.is_alive())


def test_close_all_of_nothing_started():
    """A node that failed before starting anything closes cleanly: close_all(None, None) does nothing."""
    close_all(None, None, None)
    close_all()
