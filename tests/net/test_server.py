"""Tests for moe/net/server.py: serving an expert over real hivemind P2P on 127.0.0.1, refusing bad requests,
swapping weights under load; the `servers` and `clients` fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time

import pytest
import torch
from hivemind.p2p import P2PHandlerError
from hivemind.proto import runtime_pb2
from torch import nn

from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.direct import (
    _REP,
    _REQ,
    KEY_BYTES,
    MAC_BYTES,
    DirectConnection,
    DirectError,
    DirectServer,
    OversizedReply,
    RemoteError,
)
from moe.net.receipt import unframe_reply
from moe.net.server import (
    ExpertServer,
    RequestGate,
    ServerBusy,
    ServerConfig,
    forward_handle,
    info_handle,
    session_handle,
)
from moe.net.wire import DIST_FORMATS, encode_request

from .conftest import X, tiny_lm


@pytest.mark.parametrize("fmt,tol", [("fp32", 1e-6), ("fp16", 2e-2), ("q8", 0.1), ("topk", None)])
@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_round_trip_matches_in_process(servers, clients, fmt, tol, path):
    """A remote forward equals the in-process log_softmax of the same module within the wire format's tolerance."""
    good = servers[0]
    with torch.no_grad():
        ref = torch.log_softmax(tiny_lm(0)(X)[..., :256], -1)
    out = clients[path].call(good.peer_id, X, wire_format=fmt)
    assert out.shape == (2, 8, 256) and out.dtype == torch.float32
    if tol is None:  # topk: the 16 most likely bytes are kept
        vals, ids = ref.topk(16, -1)
        assert (out.gather(-1, ids) - vals).abs().max() < 2e-2
    else:
        assert (out - ref).abs().max() < tol


def test_update_weights_changes_served_output(servers, clients):
    """After update_weights the server serves the new weights; a mismatched state dict is refused, old kept."""
    good = servers[0]
    client = clients[0]
    before = client.call(good.peer_id, X)
    new = tiny_lm(7)
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
        good.update_weights(tiny_lm(0).state_dict())


def test_info_reports_kind_formats_and_weights_version(servers, clients):
    """The info handler names the expert's kind, the formats it serves and its weights version, and no addresses."""
    good = servers[0]
    client = clients[1]
    info = client.info(good.peer_id)
    assert info["kind"] == "lm" and info["formats"] == list(DIST_FORMATS) and info["max_tokens"] == 256
    assert "host_maddrs" not in info
    good.update_weights(tiny_lm(0).state_dict())
    assert client.info(good.peer_id)["version"] == info["version"] + 1


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
        sid = bytes.fromhex(json.loads(reply.serialized_info)["session"])
        conn = await DirectConnection.open(host, port, sid, key)
        with pytest.raises(RemoteError, match="bad request"):
            await conn.request(b"not a request")
        reply, receipt = unframe_reply(await conn.request(encode_request(X.to(torch.uint8), "fp32")))
        assert reply[:4] == b"HMT1" and receipt is None  # no hotkey proven: a plain reply
        conn.key = os.urandom(KEY_BYTES)  # a client that does not know the key is cut off
        with pytest.raises(ConnectionError):
            await conn.request(encode_request(X.to(torch.uint8), "fp32"))
        conn.close()

    clients[0]._loop.run(scenario(), timeout=20)
    assert clients[0].call(good.peer_id, X).shape == (2, 8, 256)


def test_direct_reply_over_the_request_limit_is_blamed_only_when_authentic():
    """A direct reply longer than its request allows raises OversizedReply when its MAC is right (read, not kept,
    and the connection stays in step), DirectError when the MAC is forged, and is cut off unread over the cap."""

    async def hundred_kb(payload: bytes) -> bytes:
        return bytes(100_000)

    async def forger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(20)  # hello
        _, n = _REQ.unpack(await reader.readexactly(_REQ.size))
        await reader.readexactly(n + MAC_BYTES)
        writer.write(_REP.pack(1, 0, 100_000) + bytes(100_000) + os.urandom(MAC_BYTES))  # a MAC nobody computed
        await writer.drain()

    async def scenario():
        honest = DirectServer(hundred_kb)
        await honest.start()
        fake = await asyncio.start_server(forger, "127.0.0.1", 0)
        try:
            key = os.urandom(KEY_BYTES)
            conn = await DirectConnection.open(honest.host, honest.port, honest.open_session(key), key)
            with pytest.raises(OversizedReply, match="100000 bytes, at most 804 expected"):
                await conn.request(b"q", max_reply_bytes=804)
            assert len(await conn.request(b"q", max_reply_bytes=100_000)) == 100_000
            conn.max_reply_bytes = 50_000
            with pytest.raises(DirectError, match="over the 50000 limit"):
                await conn.request(b"q", max_reply_bytes=804)
            conn.close()
            port = fake.sockets[0].getsockname()[1]
            conn = await DirectConnection.open("127.0.0.1", port, os.urandom(16), key)
            with pytest.raises(DirectError, match="authentication"):
                await conn.request(b"q", max_reply_bytes=804)
            conn.close()
        finally:
            await honest.stop()
            fake.close()
            await fake.wait_closed()

    asyncio.run(scenario())


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


class _ThreadRecorder(nn.Module):
    """An identity "hidden" expert that notes which thread ran each forward, sleeping `delay` seconds in it."""

    def __init__(self):
        super().__init__()
        self.threads: list[str] = []
        self.delay = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return x.clone()

    def __deepcopy__(self, memo: dict) -> _ThreadRecorder:
        return self  # the server's two weight buffers: one recorder


@pytest.mark.parametrize("inline_ms", [5.0, 0.0])
def test_short_forwards_run_on_the_event_loop_and_long_ones_on_a_worker(inline_ms):
    """The first forward (no estimate yet) and any expected to take longer than `inline_forward_ms` run on the
    worker thread, the short ones on the server's event loop, with the same results; 0 turns it off."""
    recorder = _ThreadRecorder()
    x = torch.randn(2, 4, 8)
    config = ServerConfig(kind="hidden", d_in=8, inline_forward_ms=inline_ms)
    with ExpertServer(recorder, config) as srv:
        with SyncExpertClient(ClientConfig(wire_format="act32"), initial_peers=srv.maddrs) as client:
            for _ in range(20):  # the first forwards of a process may be slow: the estimate settles within a few
                assert torch.equal(client.call(srv.peer_id, x), x)
            recorder.delay = 0.05  # 10x the limit: once seen, the estimate is past it
            client.call(srv.peer_id, x)
            client.call(srv.peer_id, x)
    ran_on = ["worker" if t.startswith("expert-forward") else "loop" for t in recorder.threads]
    if inline_ms:
        assert ran_on[0] == "worker" and ran_on[19] == "loop" and ran_on[-1] == "worker"
    else:
        assert ran_on == ["worker"] * 22


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(kind="vision"), "kind"),
        (dict(kind="hidden"), "d_in"),
        (dict(kind="hidden", d_in=-3), "d_in"),
        (dict(max_concurrent_requests_per_peer=0), "max_concurrent_requests_per_peer"),
        (dict(max_queued_requests=0), "max_queued_requests"),
        (dict(max_requests_per_second_per_peer=0.0), "max_requests_per_second_per_peer"),
        (dict(max_requests_per_second_per_peer=math.nan), "max_requests_per_second_per_peer"),
        (dict(inline_forward_ms=-1.0), "inline_forward_ms"),
    ],
)
def test_bad_server_config_is_refused_naming_the_field(overrides, field):
    """An unknown expert kind, a "hidden" expert without a positive width, or a load cap under one request (or a
    NaN one) raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        ServerConfig(**overrides)


def test_request_gate_caps_each_peer_and_the_whole_server():
    """The gate admits up to the per-peer and total caps and refuses more at once (ServerBusy); releasing makes room
    again, and one peer at its cap leaves another peer's room alone."""
    gate = RequestGate(per_peer=2, total=3, rate_per_second=1000.0)
    gate.admit("a")
    gate.admit("a")
    with pytest.raises(ServerBusy, match="2 requests of this peer"):
        gate.admit("a")
    gate.admit("b")
    with pytest.raises(ServerBusy, match="3 requests queued"):
        gate.admit("c")
    for peer in ("a", "a", "b"):
        gate.release(peer)
    assert gate.total_in_flight == 0
    gate.admit("c")


def test_request_gate_refuses_a_peer_over_its_rate_until_it_slows_down():
    """A peer that sends more than rate_per_second requests (beyond a burst of one second's worth) is refused, while
    other peers are not, and is admitted again as its budget refills with time."""
    now = [0.0]
    gate = RequestGate(per_peer=100, total=100, rate_per_second=4.0, clock=lambda: now[0])
    for _ in range(4):
        gate.admit("a")
    with pytest.raises(ServerBusy, match="per second"):
        gate.admit("a")
    gate.admit("b")
    now[0] += 0.25  # one request's worth
    gate.admit("a")
    with pytest.raises(ServerBusy, match="per second"):
        gate.admit("a")


def test_handler_names_keep_experts_on_one_peer_apart():
    """Each expert's uid prefixes its handler names, so experts sharing a peer never share a handler."""
    names = {h(uid) for uid in (None, "a", "b") for h in (forward_handle, info_handle, session_handle)}
    assert len(names) == 9
    assert forward_handle("a").startswith("a::") and forward_handle(None) == forward_handle("")


@pytest.mark.slow
def test_serving_through_a_dht():
    """Server and client attached to two real DHT nodes reach each other by peer id through the DHT's daemons."""
    from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs

    dht_a = start_bootstrap_dht()
    dht_b = None
    try:
        dht_b = start_dht(visible_maddrs(dht_a))
        with (
            ExpertServer(tiny_lm(0), dht=dht_a) as srv,
            SyncExpertClient(ClientConfig(wire_format="fp32"), dht=dht_b) as client,
        ):
            with torch.no_grad():
                ref = torch.log_softmax(tiny_lm(0)(X)[..., :256], -1)
            assert (client.call(srv.peer_id, X) - ref).abs().max() < 1e-6
            assert srv.peer_id == dht_a.peer_id
    finally:
        for d in (dht_b, dht_a):
            if d is not None:
                d.shutdown()
