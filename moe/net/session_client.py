"""Client side of inference sessions: open a KV-cached session on an expert, send each new byte once, close.

    sessions = SessionClient(expert_client)             # on the client's event loop
    session, prompt_logp = await sessions.open(peer, prompt_ids)   # (T, 256)
    logp = await sessions.step(session, torch.tensor([byte]))     # (1, 256)
    await sessions.close(session)

Messages go over the expert's direct connection when it offers one, else its `hivemoe.expert.inference` P2P handler
(layouts: moe.net.session_wire). Every reply is held to the exact size its message calls for, decoded and validated
as a distribution, and its receipt (when present) checked against the message, as for stateless forwards
(moe.net.client): a malformed reply raises MaliciousReply, is recorded as a fault and backs the peer off. A refusal
(unknown or expired session, a session limit, an over-long prompt) raises SessionRefused and leaves the peer's record
alone; a busy reply raises ExpertBusy; a timeout or broken transport raises and backs the peer off.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError
from hivemind.p2p import P2PHandlerError, PeerID

from moe.net.client import ExpertBusy, ExpertClient, PeerUnavailable
from moe.net.receipt import RECEIPT_OVERHEAD, Receipt, ReceiptError, caller_digest, unframe_reply
from moe.net.server import BUSY_REPLY, inference_handle
from moe.net.session_wire import (
    OPEN_REPLY_HEADER_BYTES,
    decode_open_reply,
    encode_close,
    encode_open,
    encode_step,
)
from moe.net.wire import DIST_FORMATS, MaliciousReply, WireError, decode_logp, reply_nbytes, validate_reply

logger = logging.getLogger(__name__)


class SessionRefused(RuntimeError):
    """The expert refused a session message; its one-line reason is the message."""


@dataclass
class RemoteSession:
    """One open session on one expert, as the client knows it."""

    peer_id: PeerID
    session_id: bytes
    capacity: int
    """Positions the expert's cache holds; past them it slides (moe.model.kv_cache)."""
    wire_format: str
    topk: int
    receipts: list[Receipt | None]
    """The receipt of each reply (None where the expert sent none)."""


class SessionClient:
    """Inference sessions through an `ExpertClient` (its P2P, direct connections, back-off and fault log)."""

    def __init__(self, client: ExpertClient, wire_format: str | None = None):
        self.client = client
        self.wire_format = wire_format or client.config.wire_format
        if self.wire_format not in DIST_FORMATS:
            raise ValueError(f"sessions carry distributions; wire format {self.wire_format!r} is not one")

    async def open(
        self, peer_id: PeerID, prompt: torch.Tensor, max_context: int = 0, timeout: float | None = None
    ) -> tuple[RemoteSession, torch.Tensor]:
        """Open a session on `peer_id` with `prompt` (1-D ids) → (session, log-probs (T, 256) of every prompt
        position). `max_context` caps the session's capacity (0: the expert's own bound)."""
        prompt = torch.as_tensor(prompt).flatten()
        topk = self.client.config.topk
        raw = encode_open(prompt, self.wire_format, topk, max_context)
        T = len(prompt)
        limit = OPEN_REPLY_HEADER_BYTES + reply_nbytes(self.wire_format, (1, T), topk)
        reply, receipt = await self._exchange(peer_id, raw, limit, timeout)
        try:
            sid, capacity, payload = decode_open_reply(reply)
        except WireError as e:
            raise self._malicious(peer_id, str(e)) from None
        session = RemoteSession(peer_id, sid, capacity, self.wire_format, topk, [receipt])
        return session, self._decode(peer_id, payload, T, topk)

    async def step(self, session: RemoteSession, ids: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """Append `ids` (1-D) to the session → log-probs (n, 256) of the byte after each."""
        ids = torch.as_tensor(ids).flatten()
        raw = encode_step(session.session_id, ids)
        limit = reply_nbytes(session.wire_format, (1, len(ids)), session.topk)
        reply, receipt = await self._exchange(session.peer_id, raw, limit, timeout)
        session.receipts.append(receipt)
        return self._decode(session.peer_id, reply, len(ids), session.topk)

    async def close(self, session: RemoteSession, timeout: float | None = None) -> None:
        """Close the session (freeing the expert's memory); a failure is logged, not raised (it expires anyway)."""
        try:
            await self._exchange(session.peer_id, encode_close(session.session_id), 0, timeout)
        except Exception as e:
            logger.debug("closing session on %s: %r", session.peer_id, e)

    async def open_many(
        self, peers: Mapping[Hashable, PeerID], prompt: torch.Tensor, max_context: int = 0
    ) -> dict[Hashable, tuple[RemoteSession, torch.Tensor]]:
        """`open` on every peer in parallel; those that fail are logged and missing from the result."""
        keys = list(peers)
        got = await asyncio.gather(*(self.open(peers[k], prompt, max_context) for k in keys), return_exceptions=True)
        return self._successes(keys, got, "open")

    async def step_many(self, sessions: Mapping[Hashable, RemoteSession], ids: torch.Tensor) -> dict:
        """`step` every session in parallel → {key: log-probs (n, 256)}; those that fail are missing."""
        keys = list(sessions)
        got = await asyncio.gather(*(self.step(sessions[k], ids) for k in keys), return_exceptions=True)
        return self._successes(keys, got, "step")

    async def close_many(self, sessions: Mapping[Hashable, RemoteSession]) -> None:
        await asyncio.gather(*(self.close(s) for s in sessions.values()))

    @staticmethod
    def _successes(keys: list, results: list, what: str) -> dict:
        out = {}
        for k, r in zip(keys, results, strict=True):
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                logger.info("session %s failed for %s: %s", what, k, r)
            else:
                out[k] = r
        return out

    async def _exchange(
        self, peer_id: PeerID, raw: bytes, reply_bytes: int, timeout: float | None
    ) -> tuple[bytes, Receipt | None]:
        """Send one session message → (reply, checked receipt or None); see the module docstring for failures."""
        client, cfg = self.client, self.client.config
        if not client.health.available(peer_id):
            raise PeerUnavailable(f"peer {peer_id} is backed off")
        timeout = cfg.forward_timeout_seconds if timeout is None else timeout
        limit = reply_bytes + RECEIPT_OVERHEAD
        try:
            payload = await asyncio.wait_for(
                client.send_raw(peer_id, raw, limit, inference_handle(client.uid), "session"), timeout
            )
        except asyncio.CancelledError:
            raise
        except P2PHandlerError as e:
            if BUSY_REPLY in str(e):
                raise ExpertBusy(f"expert {peer_id} is busy") from None
            raise SessionRefused(_reason(str(e))) from None
        except DecodeError:
            raise self._malicious(peer_id, "reply is not a valid protobuf message") from None
        except MaliciousReply as e:
            raise self._malicious(peer_id, str(e)) from None
        except asyncio.TimeoutError:
            client.health.record_failure(peer_id)
            raise TimeoutError(f"peer {peer_id} did not answer within {timeout} s") from None
        except BaseException:
            client.health.record_failure(peer_id)
            raise
        if len(payload) > limit:
            raise self._malicious(peer_id, f"session reply of {len(payload)} bytes, at most {limit} expected")
        try:
            reply, receipt = unframe_reply(payload)
            if receipt is not None:
                receipt.check(raw, reply, caller_digest(client.p2p.peer_id.to_bytes()))
        except ReceiptError as e:
            raise self._malicious(peer_id, f"bad receipt: {e}") from None
        client.health.record_success(peer_id)
        return reply, receipt

    def _decode(self, peer_id: PeerID, payload: bytes, n: int, topk: int) -> torch.Tensor:
        try:
            logp = decode_logp(payload, self.wire_format, (1, n), topk)
            return validate_reply(logp, (1, n), self.client.config.tol)[0]
        except MaliciousReply as e:
            raise self._malicious(peer_id, str(e)) from None

    def _malicious(self, peer_id: PeerID, reason: str) -> MaliciousReply:
        self.client._report(peer_id, f"session: {reason}")
        self.client.health.record_failure(peer_id)
        return MaliciousReply(reason)


def _reason(message: str) -> str:
    """The server's one-line reason out of a handler error (hivemind prefixes it with the exception type)."""
    line = next((s.strip() for s in message.splitlines() if s.strip()), message)
    wrapped = re.fullmatch(r"\w+\((['\"])(.*)\1\)", line)  # P2P sends "ValueError('...')"
    return wrapped.group(2) if wrapped else line


__all__ = ["RemoteSession", "SessionClient", "SessionRefused"]
