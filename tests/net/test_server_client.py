"""Expert serving and remote calls over real hivemind P2P on 127.0.0.1: correctness, faults, timeouts, back-off."""

from __future__ import annotations

import os
import time

import pytest
import torch
from hivemind.p2p import P2PHandlerError
from hivemind.proto import runtime_pb2
from torch import nn

from moe.net.client import ClientConfig, FaultReport, PeerHealth, PeerUnavailable, SyncExpertClient
from moe.net.direct import KEY_BYTES, DirectConnection, RemoteError
from moe.net.server import ExpertServer, ServerConfig, forward_handle, session_handle
from moe.net.wire import MaliciousReply, encode_frame, encode_request


def _lm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(256, 16), nn.Linear(16, 260))  # V = 260 >= 256, like the real model


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
    started = []
    try:
        for cls, seed in ((ExpertServer, 0), (EvilServer, 1), (SlowServer, 2)):
            started.append(cls(_lm(seed), ServerConfig(max_tokens=256)).start())
        yield started
    finally:
        for s in started:
            s.shutdown()


@pytest.fixture(scope="module")
def clients(servers):
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


X = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fmt,tol", [("fp32", 1e-6), ("fp16", 2e-2), ("q8", 0.1), ("topk", None)])
@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_round_trip_matches_in_process(servers, clients, fmt, tol, path):
    """A remote forward equals the in-process log_softmax of the same module within the wire format's tolerance."""
    good = servers[0]
    with torch.no_grad():
        ref = torch.log_softmax(_lm(0)(X)[..., :256], -1)
    out = clients[path].call(good.peer_id, X, wire_format=fmt)
    assert out.shape == (2, 8, 256) and out.dtype == torch.float32
    if tol is None:  # topk: the 16 most likely bytes are kept
        vals, ids = ref.topk(16, -1)
        assert (out.gather(-1, ids) - vals).abs().max() < 2e-2
    else:
        assert (out - ref).abs().max() < tol


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


def test_update_weights_changes_served_output(servers, clients):
    """After update_weights the server serves the new weights; a mismatched state dict is refused, old kept."""
    good = servers[0]
    client = clients[0]
    before = client.call(good.peer_id, X)
    new = _lm(7)
    good.update_weights(new.state_dict())
    try:
        after = client.call(good.peer_id, X)
        with torch.no_grad():
            ref = torch.log_softmax(new(X)[..., :256], -1)
        assert (after - ref).abs().max() < 1e-6 and (after - before).abs().max() > 1e-2
        with pytest.raises(RuntimeError):
            good.update_weights({"bogus": torch.zeros(1)})
        assert torch.equal(client.call(good.peer_id, X), after)
    finally:
        good.update_weights(_lm(0).state_dict())


def test_malicious_requests_get_error_replies(servers, clients):
    """Bad requests (bad magic, float ids, ids over 255, oversized batch, 3-D input, wrong format) are refused, and
    the server keeps serving."""
    good = servers[0]
    client = clients[1]
    rejected = good.rejected
    bad = [
        b"nonsense",
        encode_request(torch.rand(2, 8), "fp32"),
        encode_request(torch.full((2, 8), 300, dtype=torch.int64), "fp32"),
        encode_request(torch.zeros(64, 64, dtype=torch.uint8), "fp32"),  # 4096 > max_tokens=256
        encode_request(torch.zeros(2, 2, 2, dtype=torch.uint8), "fp32"),
        encode_request(torch.zeros(2, 8, dtype=torch.uint8), "act32"),
    ]

    async def send(raw: bytes):
        return await client.client.p2p.call_protobuf_handler(
            good.peer_id, forward_handle(None), runtime_pb2.ExpertRequest(metadata=raw), runtime_pb2.ExpertResponse
        )

    for raw in bad:
        with pytest.raises(P2PHandlerError, match="bad request"):
            client._loop.run(send(raw), timeout=10)
    assert good.rejected == rejected + len(bad)
    assert client.call(good.peer_id, X).shape == (2, 8, 256)


def test_direct_path_rejects_forged_session_and_requests(servers, clients):
    """The direct path refuses unknown sessions and tampered requests, and reports server-side refusals."""
    good = servers[0]
    client = clients[0].client
    host, port = good.direct.host, good.direct.port

    async def scenario():
        conn = await DirectConnection.open(host, port, os.urandom(16), os.urandom(KEY_BYTES))
        with pytest.raises(ConnectionError):
            await conn.request(encode_request(X.to(torch.uint8), "fp32"))
        conn.close()
        key = os.urandom(KEY_BYTES)
        reply = await client.p2p.call_protobuf_handler(
            good.peer_id, session_handle(None), runtime_pb2.ExpertRequest(metadata=key), runtime_pb2.ExpertInfo
        )
        import json

        sid = bytes.fromhex(json.loads(reply.serialized_info)["session"])
        conn = await DirectConnection.open(host, port, sid, key)
        with pytest.raises(RemoteError, match="bad request"):
            await conn.request(b"not a request")
        assert (await conn.request(encode_request(X.to(torch.uint8), "fp32")))[:4] == b"HMT1"
        conn.key = os.urandom(KEY_BYTES)  # a client that does not know the key is cut off
        with pytest.raises(ConnectionError):
            await conn.request(encode_request(X.to(torch.uint8), "fp32"))
        conn.close()

    clients[0]._loop.run(scenario(), timeout=20)
    assert clients[0].call(good.peer_id, X).shape == (2, 8, 256)


def test_hidden_expert_serves_activations():
    """A "hidden" expert returns its module's float output exactly over act32, and refuses wrong widths."""
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(3, 4, 8)
    with ExpertServer(ffn, ServerConfig(kind="hidden", d_in=8)) as srv:
        with SyncExpertClient(ClientConfig(wire_format="act32"), initial_peers=srv.maddrs) as client:
            out = client.call(srv.peer_id, x)
            with torch.no_grad():
                assert torch.equal(out, ffn(x))
            with pytest.raises(P2PHandlerError, match="bad request"):
                client.call(srv.peer_id, torch.randn(3, 4, 5))
            assert client.info(srv.peer_id)["kind"] == "hidden"


@pytest.mark.slow
def test_serving_through_a_dht():
    """Server and client attached to two real DHT nodes reach each other by peer id through the DHT's daemons."""
    from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs

    dht_a = start_bootstrap_dht()
    dht_b = None
    try:
        dht_b = start_dht(visible_maddrs(dht_a))
        with (
            ExpertServer(_lm(0), dht=dht_a) as srv,
            SyncExpertClient(ClientConfig(wire_format="fp32"), dht=dht_b) as client,
        ):
            with torch.no_grad():
                ref = torch.log_softmax(_lm(0)(X)[..., :256], -1)
            assert (client.call(srv.peer_id, X) - ref).abs().max() < 1e-6
            assert srv.peer_id == dht_a.peer_id
    finally:
        for d in (dht_b, dht_a):
            if d is not None:
                d.shutdown()
