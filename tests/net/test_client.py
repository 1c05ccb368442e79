"""Tests for moe/net/client.py: calling remote experts over real hivemind P2P on 127.0.0.1 — k_min and timeouts,
back-off through PeerHealth, and malicious replies dropped and reported; the `servers` (honest, evil, slow) and
`clients` (direct, P2P-only) fixtures live in conftest.py."""

from __future__ import annotations

import math
import os
import struct
import time

import pytest
import torch
from hivemind.p2p import PeerID

from moe.net.client import ClientConfig, ExpertClient, FaultReport, PeerHealth, PeerUnavailable, SyncExpertClient
from moe.net.server import ExpertServer, ServerConfig, forward_handle
from moe.net.wire import MaliciousReply

from .conftest import X, tiny_lm
from .test_wire import peak_rss_growth, topk_bomb


@pytest.mark.parametrize("mode", ["nan", "shape", "garbage", "unnormalized"])
def test_malicious_replies_are_dropped_and_reported(servers, clients, mode):
    """A malicious reply never reaches the caller: call_many drops it, records a FaultReport and backs the peer off."""
    good, evil = servers[0], servers[1]
    evil.mode = mode
    client = clients[0]
    client.health.record_success(evil.peer_id)
    seen: list[FaultReport] = []
    client.client.on_fault = seen.append
    out = client.call_many([good.peer_id, evil.peer_id], X, k_min=2)
    assert set(out) == {good.peer_id}
    assert seen and seen[-1].peer_id == evil.peer_id and seen[-1] in client.faults
    assert client.health.failures(evil.peer_id) == 1 and not client.health.available(evil.peer_id)
    client.health.record_success(evil.peer_id)
    with pytest.raises(MaliciousReply):
        client.call(evil.peer_id, X)
    client.client.on_fault = None


def test_garbage_protobuf_over_p2p_is_malicious(servers, clients):
    """Bytes that are not even a protobuf, from a raw P2P handler, are reported as malicious."""
    client = clients[1]  # P2P only
    handle = forward_handle("rawgarbage")

    async def garbage(request: bytes, remote_id) -> bytes:
        return b"\xff\xff\xff\xff\x0f" + os.urandom(64)

    srv = servers[1]
    srv._loop.run(srv.p2p._client.add_unary_handler(handle, garbage))
    client.client.uid = "rawgarbage"
    try:
        client.health.record_success(srv.peer_id)
        with pytest.raises(MaliciousReply, match="protobuf"):
            client.call(srv.peer_id, X)
        assert client.faults[-1].peer_id == srv.peer_id
    finally:
        client.client.uid = None
        client.health.record_success(srv.peer_id)


def test_slow_expert_skipped_after_k_min_and_backoff(servers, clients):
    """With k_min answers in, a slow expert is skipped (not penalised); a timeout backs it off; success resets."""
    good, slow = servers[0], servers[2]
    client = clients[0]
    slow.delay = 1.5
    out = client.call_many([good.peer_id, slow.peer_id], X, k_min=1, timeout_after_k_min=0.05)
    assert set(out) == {good.peer_id}
    assert client.health.failures(slow.peer_id) == 0  # skipped, not a failure
    out = client.call_many([slow.peer_id], X, k_min=1, timeout=0.3)
    assert out == {} and client.health.failures(slow.peer_id) == 1
    with pytest.raises(PeerUnavailable):
        client.call(slow.peer_id, X)
    assert client.call_many([slow.peer_id, good.peer_id], X, k_min=1).keys() == {good.peer_id}
    slow.delay = 0.0
    client.health._until[slow.peer_id] = 0.0  # let the back-off lapse without sleeping
    assert client.call(slow.peer_id, X).shape == (2, 8, 256)
    assert client.health.failures(slow.peer_id) == 0


def test_a_skipped_direct_call_finishes_unseen_and_its_connection_serves_the_next_call(servers, clients):
    """A straggler skipped once k_min replied is not cut off mid-reply: its call finishes in the background and its
    direct connection goes back to the pool, so the next call to it opens no new session over P2P."""
    good, slow = servers[0], servers[2]
    client = clients[0]
    client.call(slow.peer_id, X)  # at least one connection to the slow expert, pooled
    pooled = set(client.client._idle[slow.peer_id])
    slow.delay = 0.3
    try:
        out = client.call_many([good.peer_id, slow.peer_id], X, k_min=1, timeout_after_k_min=0.01)
        assert set(out) == {good.peer_id}
        deadline = time.monotonic() + 10
        while len(client.client._idle.get(slow.peer_id, [])) < len(pooled) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(client.client._idle[slow.peer_id]) == pooled
    finally:
        slow.delay = 0.0
    assert client.call(slow.peer_id, X).shape == (2, 8, 256)
    assert set(client.client._idle[slow.peer_id]) == pooled and client.health.failures(slow.peer_id) == 0


def test_config_k_min_zero_waits_for_every_peer_and_one_skips_the_slow(servers, clients):
    """With the default ClientConfig (k_min=0) call_many waits for a slow expert that answers in time and includes
    its reply; with k_min=1 it skips that expert once timeout_after_k_min_seconds pass after the first answer."""
    good, slow = servers[0], servers[2]
    loop, p2p = clients[1]._loop, clients[1].client.p2p  # fresh ExpertClients on a running client's P2P
    wait_all = ExpertClient(p2p, ClientConfig(wire_format="fp32", forward_timeout_seconds=10.0, direct=False))
    first_one = ExpertClient(
        p2p,
        ClientConfig(
            wire_format="fp32", forward_timeout_seconds=10.0, direct=False, k_min=1, timeout_after_k_min_seconds=0.05
        ),
    )
    assert wait_all.config.k_min == 0
    slow.delay = 1.0  # far beyond the 0.05 s grace, far within the 10 s timeout
    try:
        out = loop.run(wait_all.call_many([good.peer_id, slow.peer_id], X), timeout=30)
        assert set(out) == {good.peer_id, slow.peer_id} and out[slow.peer_id].shape == (2, 8, 256)
        assert wait_all.health.failures(slow.peer_id) == 0
        out = loop.run(first_one.call_many([good.peer_id, slow.peer_id], X), timeout=30)
        assert set(out) == {good.peer_id}
        assert first_one.health.failures(slow.peer_id) == 0 and first_one.health.available(slow.peer_id)
    finally:
        slow.delay = 0.0


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(wire_format="fp8"), "wire_format"),
        (dict(forward_timeout_seconds=0.0), "forward_timeout_seconds"),
        (dict(forward_timeout_seconds=-1.0), "forward_timeout_seconds"),
        (dict(forward_timeout_seconds=math.nan), "forward_timeout_seconds"),
        (dict(k_min=-1), "k_min"),
        (dict(timeout_after_k_min_seconds=-0.1), "timeout_after_k_min_seconds"),
        (dict(topk=0), "topk"),
        (dict(topk=256), "topk"),
        (dict(backoff_cap_seconds=0.0), "backoff_cap_seconds"),
    ],
)
def test_bad_client_config_is_refused_naming_the_field(overrides, field):
    """An unknown wire format, a non-positive (or NaN) timeout or a negative k_min raises ValueError naming it."""
    with pytest.raises(ValueError, match=f"^{field} "):
        ClientConfig(**overrides)


def test_peer_health_backoff_grows_caps_and_resets():
    """Back-off doubles with each consecutive failure up to the cap and clears on success."""
    now = [100.0]
    h = PeerHealth(backoff_base=1.0, backoff_cap=5.0, clock=lambda: now[0])
    assert [h.record_failure("p") for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not h.available("p")
    now[0] += 5.0
    assert h.available("p")
    h.record_success("p")
    assert h.failures("p") == 0 and h.record_failure("p") == 1.0


def test_backed_off_peer_is_not_called(servers, clients):
    """call refuses a backed-off peer with PeerUnavailable, and call_many leaves it out without calling it."""
    good = servers[0]
    client = clients[1]
    served = good.served
    client.health.record_failure(good.peer_id)
    try:
        with pytest.raises(PeerUnavailable):
            client.call(good.peer_id, X)
        assert client.call_many([good.peer_id], X) == {}
        assert good.served == served
    finally:
        client.health.record_success(good.peer_id)
    assert set(client.call_many([good.peer_id, good.peer_id], X)) == {good.peer_id}
    assert good.served == served + 1  # a peer listed twice is called once


def test_unreachable_peer_is_missing_and_backed_off(clients):
    """A peer nobody can reach is missing from call_many's result and backed off, without raising."""
    client = clients[1]
    ghost = PeerID.from_base58("12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA")
    try:
        assert client.call_many([ghost], X, timeout=2.0) == {}
        assert client.health.failures(ghost) == 1 and not client.health.available(ghost)
    finally:
        client.health.record_success(ghost)


class BombServer(ExpertServer):
    """A real server whose replies are memory bombs: `mode` "bomb" is a 60 KB topk reply declaring 20000 positions
    (~87 MB once decoded), "lying_header" a 78-byte one whose header claims a (65535, 65535, 255) id frame."""

    mode = "bomb"

    def _process(self, raw: bytes) -> bytes:
        if self.mode == "bomb":
            return topk_bomb(20_000)
        return b"HMT1" + struct.pack("<BB3I", 2, 3, 65535, 65535, 255) + bytes(64)


@pytest.fixture(scope="module")
def bomber():
    """A BombServer and two topk clients bootstrapped from it: [0] takes the direct path, [1] only P2P."""
    server = BombServer(tiny_lm(3), ServerConfig(max_tokens=256)).start()
    made = []
    try:
        for direct in (True, False):
            made.append(SyncExpertClient(ClientConfig(wire_format="topk", direct=direct), initial_peers=server.maddrs))
        yield server, made
    finally:
        for c in made:
            c.shutdown()
        server.shutdown()


@pytest.mark.parametrize("mode, reason", [("bomb", "60037 bytes, at most 1013"), ("lying_header", "declares")])
@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_memory_bomb_from_a_real_server_is_a_fault_without_a_big_allocation(bomber, mode, reason, path):
    """A bomb reply to a (2, 8) topk request is dropped before decoding: a FaultReport naming the size or header,
    the peer backed off, and the client's peak memory barely moves (before the fix it grew by ~87 MB)."""
    server, clients = bomber
    server.mode, client = mode, clients[path]
    client.health.record_success(server.peer_id)
    faults, out = len(client.faults), {}
    grew = peak_rss_growth(lambda: out.update(client.call_many([server.peer_id], X)))
    assert out == {} and grew < 16 << 20, f"client peak memory grew by {grew} bytes"
    assert len(client.faults) == faults + 1 and client.faults[-1].peer_id == server.peer_id
    assert reason in client.faults[-1].reason and client.health.failures(server.peer_id) == 1


@pytest.mark.parametrize(
    "bad, wire_format, reason",
    [
        (X.float(), "fp32", "integer"),
        (X.view(1, 2, 8), "fp32", "integer"),
        (X + 300, "fp32", "outside"),
        (X[:, :0], "fp32", "empty"),
        (torch.zeros(1, 70_000, dtype=torch.long), "fp32", "max_reply_bytes"),  # its fp32 reply would be 72 MB
        (X, "act32", "float"),
        (torch.full((2, 8, 4), math.nan), "act32", "NaN"),
    ],
    ids=["float", "3d", "ids-over-vocab", "empty", "too-long", "ids-as-activations", "nan-activations"],
)
def test_callers_own_bad_input_raises_value_error_and_spares_the_peer(servers, clients, bad, wire_format, reason):
    """Inputs the caller got wrong raise ValueError from call and call_many; the peer is not called, backed off
    or reported."""
    good, client = servers[0], clients[0]
    served, faults = good.served, len(client.faults)
    try:
        with pytest.raises(ValueError, match=reason):
            client.call(good.peer_id, bad, wire_format=wire_format)
        with pytest.raises(ValueError, match=reason):
            client.call_many([good.peer_id], bad, wire_format=wire_format)
        assert client.health.failures(good.peer_id) == 0 and client.health.available(good.peer_id)
        assert good.served == served and len(client.faults) == faults
    finally:
        client.health.record_success(good.peer_id)
    assert client.call(good.peer_id, X).shape == (2, 8, 256)
