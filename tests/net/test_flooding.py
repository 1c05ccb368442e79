"""Tests of flooding an expert (the caps of moe/net/server.py, the busy replies of moe/net/client.py): a real
ExpertServer on loopback, one peer keeping many maximum-size requests in flight, another peer calling it like a
validator. Before the caps the flood queued ahead of everyone and the honest calls timed out; with them the flooder
gets busy replies and the honest calls are answered."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable

import pytest
import torch
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2
from torch import nn

from moe.net.client import ClientConfig, ExpertBusy, SyncExpertClient
from moe.net.direct import KEY_BYTES, DirectConnection
from moe.net.server import ExpertServer, ServerConfig, forward_handle, session_handle
from moe.net.wire import encode_request

from .conftest import X, tiny_lm

FLOOD_REQUEST = encode_request(torch.zeros(16, 256, dtype=torch.uint8), "topk", 16)
"""4096 positions: the most a default ServerConfig accepts in one request (a topk reply keeps the flooder cheap)."""
WINDOWS = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
"""One batch of a validator's windows (batch_size 8, seq_len 64)."""
HONEST_CALLS = 20
HONEST_TIMEOUT_SECONDS = 2.0


class PacedLM(nn.Module):
    """tiny_lm that sleeps 20 µs a position first, as a real model's forward takes time in proportion to its input
    (sleeping rather than computing, so that the flood loads the server without starving the test's CPUs)."""

    def __init__(self):
        super().__init__()
        self.lm = tiny_lm(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(x.numel() * 2e-5)
        return self.lm(x)


class GatedLM(nn.Module):
    """tiny_lm whose forwards wait for `opened`: requests stay in flight for as long as a test needs."""

    def __init__(self, opened: threading.Event):
        super().__init__()
        self.lm, self.opened = tiny_lm(0), opened

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.opened.wait(30)
        return self.lm(x)

    def __deepcopy__(self, memo: dict) -> GatedLM:
        return self  # the server's two weight buffers share the one gate


class Flooder:
    """Keeps `concurrency` maximum-size requests in flight to `victim` from the peer of `client`, over raw P2P or
    raw direct connections (an attacker has no back-off), counting what it sends, what is answered and what is
    refused as busy."""

    def __init__(self, client: SyncExpertClient, victim: PeerID, path: str, concurrency: int = 64):
        self.client, self.victim, self.path, self.concurrency = client, victim, path, concurrency
        self.sent = self.answered = self.busy = self.failed = 0
        self.stopping = False

    def start(self) -> Flooder:
        self._future = self.client._loop.submit(self._flood())
        return self

    def stop(self) -> None:
        """Let the requests in flight finish, then stop (cancelling them mid-call trips hivemind's P2P client)."""
        self.stopping = True
        self._future.result(timeout=60)

    async def _flood(self) -> None:
        await asyncio.gather(*(self._keep_sending() for _ in range(self.concurrency)))

    async def _keep_sending(self) -> None:
        send = await self._sender()
        while not self.stopping:
            self.sent += 1
            try:
                await send(FLOOD_REQUEST)
                self.answered += 1
            except Exception as e:  # noqa: BLE001 - an attacker ignores every refusal
                self.busy += "busy" in str(e)
                self.failed += "busy" not in str(e)

    async def _sender(self) -> Callable:
        p2p = self.client.client.p2p
        if self.path == "p2p":

            async def send(raw: bytes):
                request = runtime_pb2.ExpertRequest(metadata=raw)
                return await p2p.call_protobuf_handler(
                    self.victim, forward_handle(None), request, runtime_pb2.ExpertResponse
                )

            return send
        key = os.urandom(KEY_BYTES)
        reply = await p2p.call_protobuf_handler(
            self.victim, session_handle(None), runtime_pb2.ExpertRequest(metadata=key), runtime_pb2.ExpertInfo
        )
        info = json.loads(reply.serialized_info)
        conn = await DirectConnection.open(info["host"], info["port"], bytes.fromhex(info["session"]), key)
        return conn.request


def wait_until(condition: Callable[[], bool], what: str, limit_seconds: float = 30.0) -> None:
    """Poll `condition` until it holds; raises (naming `what`) if it never does, so a broken setup cannot hang."""
    deadline = time.monotonic() + limit_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("path", ["p2p", "direct"])
def test_a_flooded_expert_keeps_answering_an_honest_validator(path):
    """While one peer keeps 64 maximum-size requests in flight, at least 90% of another peer's validator-like calls
    are answered within the call timeout, and the flooder gets busy replies."""
    honest_config = ClientConfig(forward_timeout_seconds=HONEST_TIMEOUT_SECONDS, direct=path == "direct")
    with ExpertServer(PacedLM(), ServerConfig()) as server:
        with (
            SyncExpertClient(initial_peers=server.maddrs) as attacker,
            SyncExpertClient(honest_config, initial_peers=server.maddrs) as validator,
        ):
            flood = Flooder(attacker, server.peer_id, path).start()
            try:
                wait_until(lambda: flood.answered + flood.busy >= 1, "the flood to reach the server")
                answered = sum(
                    server.peer_id in validator.call_many([server.peer_id], WINDOWS) for _ in range(HONEST_CALLS)
                )
            finally:
                flood.stop()
    assert answered >= 0.9 * HONEST_CALLS, f"only {answered}/{HONEST_CALLS} honest calls answered under the flood"
    assert flood.busy > 0 and flood.answered > 0, f"flooder: {flood.answered} answered, {flood.busy} busy"


def in_flight(client: SyncExpertClient, server: ExpertServer, n: int) -> list:
    """Start `n` concurrent calls of `client` to `server` (their futures), once the server holds them all."""
    before = server.gate.total_in_flight
    futures = [client._loop.submit(client.client.call(server.peer_id, X)) for _ in range(n)]
    wait_until(lambda: server.gate.total_in_flight == before + n, f"{n} requests in flight")
    return futures


@pytest.mark.parametrize("path", ["p2p", "direct"])
def test_only_the_peer_over_its_cap_is_refused(path):
    """A peer with `max_concurrent_requests_per_peer` requests in flight gets a busy reply for one more, at once
    (while its others still wait), without being backed off or blamed; another peer's request is admitted."""
    opened = threading.Event()
    config = ClientConfig(direct=path == "direct", forward_timeout_seconds=30.0)
    with ExpertServer(GatedLM(opened), ServerConfig(max_concurrent_requests_per_peer=2)) as server:
        with (
            SyncExpertClient(config, initial_peers=server.maddrs) as a,
            SyncExpertClient(config, initial_peers=server.maddrs) as b,
        ):
            try:
                held = in_flight(a, server, 2)
                with pytest.raises(ExpertBusy):
                    a.call(server.peer_id, X)
                assert a.health.available(server.peer_id) and a.health.failures(server.peer_id) == 0
                assert not a.faults
                held += in_flight(b, server, 1)
            finally:
                opened.set()
            assert all(f.result(30).shape == (2, 8, 256) for f in held)
            assert server.busy == 1
            assert a.call(server.peer_id, X).shape == (2, 8, 256)


@pytest.mark.parametrize("path", ["p2p", "direct"])
def test_a_full_queue_refuses_at_once(path):
    """With `max_queued_requests` requests in the server, any peer's next one gets a busy reply at once, and is
    served again once the queue drains."""
    opened = threading.Event()
    config = ClientConfig(direct=path == "direct", forward_timeout_seconds=30.0)
    with ExpertServer(GatedLM(opened), ServerConfig(max_queued_requests=2)) as server:
        with (
            SyncExpertClient(config, initial_peers=server.maddrs) as a,
            SyncExpertClient(config, initial_peers=server.maddrs) as b,
        ):
            try:
                held = in_flight(a, server, 2)
                with pytest.raises(ExpertBusy):
                    b.call(server.peer_id, X)
            finally:
                opened.set()
            assert all(f.result(30).shape == (2, 8, 256) for f in held)
            assert b.call(server.peer_id, X).shape == (2, 8, 256)
            assert server.busy == 1
