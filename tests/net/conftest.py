"""Fixtures of the network tests: real hivemind DHT peers and expert servers on loopback, always shut down."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.server import ExpertServer, ServerConfig
from moe.net.wire import encode_frame


@pytest.fixture(scope="module")
def module_pair(dht_pair):
    """Two joined DHT peers shared by a module's tests (tests/conftest.py)."""
    return dht_pair


@pytest.fixture
def fresh_pair(fresh_dht_pair):
    """Two joined DHT peers for one test (tests/conftest.py)."""
    return fresh_dht_pair


# experts served and called over real P2P on loopback (test_server.py, test_client.py)

X = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
"""The (B, T) = (2, 8) byte batch the expert tests send."""


def tiny_lm(seed: int = 0) -> nn.Module:
    """A seeded byte model small enough to serve in tests; V = 260 >= 256, like the real model."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(256, 16), nn.Linear(16, 260))


class EvilServer(ExpertServer):
    """A real server whose replies are malicious in the way `mode` says."""

    mode = "nan"

    def _process(self, raw: bytes) -> bytes:
        out = torch.log_softmax(torch.randn(2, 8, 256), -1)
        if self.mode == "nan":
            return encode_frame(out * float("nan"))
        if self.mode == "shape":
            return encode_frame(out[:, :3])
        if self.mode == "garbage":
            return os.urandom(997)
        return encode_frame(out + 0.5)  # "unnormalized"


class SlowServer(ExpertServer):
    """A real server that sleeps `delay` seconds before each forward."""

    delay = 0.0

    def _process(self, raw: bytes) -> bytes:
        time.sleep(self.delay)
        return super()._process(raw)


@pytest.fixture(scope="module")
def servers():
    """An honest, an evil and a slow expert server (in that order), each on its own P2P daemon; shut down after."""
    started = []
    try:
        for cls, seed in ((ExpertServer, 0), (EvilServer, 1), (SlowServer, 2)):
            started.append(cls(tiny_lm(seed), ServerConfig(max_tokens=256)).start())
        yield started
    finally:
        for s in started:
            s.shutdown()


@pytest.fixture(scope="module")
def clients(servers):
    """Two clients bootstrapped from every server: [0] takes the direct path when offered, [1] only P2P."""
    peers = [m for s in servers for m in s.maddrs]
    made = []
    try:
        made.append(
            SyncExpertClient(ClientConfig(forward_timeout_seconds=5.0, wire_format="fp32"), initial_peers=peers)
        )
        made.append(
            SyncExpertClient(
                ClientConfig(forward_timeout_seconds=5.0, direct=False, wire_format="fp32"), initial_peers=peers
            )
        )
        yield made
    finally:
        for c in made:
            c.shutdown()
