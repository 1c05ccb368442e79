"""Served-traffic receipts (moe/net/receipt.py) over real P2P and the direct path: every reply of an expert with a
proven hotkey carries that hotkey's receipt for exactly this call, a re-sent request gets the same bytes, and a
receipt for anything else is a fault."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
import torch

from moe.identity import Hotkey
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.receipt import (
    RECEIPT_BYTES,
    Receipt,
    ReceiptError,
    caller_digest,
    digest,
    frame_reply,
    sign_receipt,
    unframe_reply,
)
from moe.net.server import ExpertServer, ServerConfig
from moe.net.wire import MaliciousReply, encode_request

from .conftest import X, tiny_lm

KEY = Hotkey.from_seed(b"\x07" * 32)


class ForgingServer(ExpertServer):
    """Signs a receipt for another reply than the one it sends (claims to have answered something it did not)."""

    def _serve(self, raw: bytes, remote: Hashable) -> bytes:
        reply, receipt = unframe_reply(super()._serve(raw, remote))
        forged = sign_receipt(KEY, receipt.caller, receipt.time_ms, receipt.positions, raw, reply + b"x")
        return frame_reply(reply, forged)


@pytest.fixture(scope="module")
def served():
    """An honest server and a forging one, both proving KEY, and a direct and a P2P-only client."""
    servers, clients = [], []
    try:
        for cls in (ExpertServer, ForgingServer):
            servers.append(cls(tiny_lm(0), ServerConfig(max_tokens=256)).start())
            servers[-1].prove_identity(KEY)
        peers = [m for s in servers for m in s.maddrs]
        for direct in (True, False):
            clients.append(SyncExpertClient(ClientConfig(wire_format="q8", direct=direct), initial_peers=peers))
        yield servers, clients
    finally:
        for c in clients:
            c.shutdown()
        for s in servers:
            s.shutdown()


@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_every_reply_carries_a_receipt_for_exactly_this_call(served, path):
    (honest, _), clients = served
    client, seen = clients[path], []
    client.client.on_receipt = lambda peer, raw, receipt: seen.append((peer, raw, receipt))
    client.call(honest.peer_id, X)
    client.client.on_receipt = None
    (peer, raw, receipt), *_ = seen
    assert peer == honest.peer_id and receipt is not None and receipt.verify()
    assert receipt.address == KEY.address and receipt.positions == X.numel()
    assert receipt.caller == caller_digest(client.peer_id.to_bytes())
    assert receipt.request == digest(raw) == digest(encode_request(X.to(torch.uint8), "q8", 16))


def test_a_resent_request_gets_the_bytes_the_expert_signed(served):
    """What a validator relies on: the same request from another peer is answered with the same reply bytes."""
    (honest, _), (router, validator) = served
    seen = []
    router.client.on_receipt = lambda peer, raw, receipt: seen.append((raw, receipt))
    router.call(honest.peer_id, X)
    router.client.on_receipt = None
    raw, receipt = seen[0]
    reply, fresh_receipt = validator.replay(honest.peer_id, raw)
    assert digest(reply) == receipt.reply
    assert fresh_receipt.caller == caller_digest(validator.peer_id.to_bytes()) != receipt.caller


@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_a_receipt_for_another_reply_is_a_fault(served, path):
    (_, forger), clients = served
    client = clients[path]
    faults = len(client.faults)
    with pytest.raises(MaliciousReply, match="bad receipt: receipt names another reply"):
        client.call(forger.peer_id, X)
    assert len(client.faults) == faults + 1 and client.faults[-1].peer_id == forger.peer_id


def test_receipt_bytes_round_trip_and_any_change_breaks_the_signature():
    r = sign_receipt(KEY, caller_digest(b"peer"), 1_700_000_000_000, 16, b"request", b"reply")
    raw = r.to_bytes()
    assert len(raw) == RECEIPT_BYTES and Receipt.from_bytes(raw) == r and r.verify()
    for i in (10, 60, 70, 100, 150, 200):  # expert, caller, time, digests, signature
        tampered = bytearray(raw)
        tampered[i] ^= 1
        assert not Receipt.from_bytes(bytes(tampered)).verify()
    with pytest.raises(ReceiptError, match="208 bytes"):
        Receipt.from_bytes(raw[:-1])
    with pytest.raises(ReceiptError, match="magic"):
        Receipt.from_bytes(b"xxxx" + raw[4:])
    with pytest.raises(ReceiptError, match="names another request"):
        r.check(b"other request", b"reply")
    with pytest.raises(ReceiptError, match="names another caller"):
        r.check(b"request", b"reply", caller_digest(b"someone else"))


def test_reply_framing_rejects_unknown_markers_and_torn_receipts():
    r = sign_receipt(KEY, caller_digest(b"peer"), 1, 1, b"a", b"b")
    assert unframe_reply(frame_reply(b"body", r)) == (b"body", r)
    assert unframe_reply(frame_reply(b"body", None)) == (b"body", None)
    with pytest.raises(ReceiptError, match="unknown reply marker"):
        unframe_reply(b"\x07body")
    with pytest.raises(ReceiptError):
        unframe_reply(frame_reply(b"", r)[:100])
    with pytest.raises(ReceiptError, match="empty"):
        unframe_reply(b"")
