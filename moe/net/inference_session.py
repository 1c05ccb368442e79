"""Server side of inference sessions: a KV cache per caller's sequence, so a generating client sends each byte once.

A client opens a session with its prompt (one prefill, the distributions of every prompt position back), then sends
one byte (or a few) per step and gets the next-byte distribution back (moe.net.session_wire has the layouts). The
expert keeps a `moe.model.kv_cache.IncrementalDecoder` per session, which slides past the session's capacity.

Everything a peer sends is hostile, so the table is bounded and owned:
- memory: a session's cache is allocated in full when it opens; an open that would take the server past
  `max_sessions`, a peer past `max_sessions_per_peer`, or the caches past `max_total_cache_bytes` is refused
  ("session limit: ..."), and a session's capacity is cut to what `max_cache_bytes_per_session` holds;
- time: a session idle for `idle_timeout_seconds` is dropped (on the next message and by a periodic sweep);
- ownership: a session id is 16 random bytes bound to the peer that opened it; a step or close naming an id the
  caller does not own gets the same "unknown or expired session" error as an id that never existed;
- input: a prompt longer than the session's capacity, more than `max_step_bytes` at once, an id outside the
  vocabulary or a malformed message is a one-line error to its sender; nobody else's session is touched.
When the expert's weights change, a session's cache is recomputed from its window on its next step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe.config_checks import require_at_least, require_positive
from moe.model.kv_cache import IncrementalDecoder, KVCache
from moe.model.transformer import ByteLM
from moe.net.session_wire import (
    CLOSE,
    OPEN,
    SESSION_ID_BYTES,
    decode_session_message,
    encode_open_reply,
)
from moe.net.wire import VOCAB, WireError, encode_logp

logger = logging.getLogger(__name__)

UNKNOWN_SESSION = "unknown or expired session"
SESSION_LIMIT = "session limit"
"""Start of the error to an open refused for the server's bounds (clients may try another expert)."""


@dataclass
class SessionConfig:
    """Bounds of an expert's inference sessions (all refusals are one-line errors to the caller)."""

    max_sessions: int = 64
    """Sessions open at once, all peers together."""
    max_sessions_per_peer: int = 8
    """Sessions one peer may hold open at once."""
    max_cache_bytes_per_session: int = 16 << 20
    """KV-cache bytes one session may take; its capacity (positions) is cut to fit."""
    max_total_cache_bytes: int = 256 << 20
    """KV-cache bytes all sessions together may take."""
    idle_timeout_seconds: float = 60.0
    """Seconds without a message after which a session is dropped and its memory freed."""
    max_step_bytes: int = 64
    """Bytes one step may append."""
    max_steps_per_second_per_peer: float = 2000.0
    """Session messages one peer may send per second (a step costs one position, so more than forwards)."""

    def __post_init__(self):
        require_at_least(self, 1, ["max_sessions", "max_sessions_per_peer", "max_step_bytes"])
        require_at_least(self, 1, ["max_cache_bytes_per_session", "max_total_cache_bytes"])
        require_positive(self, ["idle_timeout_seconds", "max_steps_per_second_per_peer"])


class SessionError(ValueError):
    """A session message the server refuses (bad, unknown, or over a bound); its message goes back to the caller."""


@dataclass
class _Session:
    owner: Hashable
    decoder: IncrementalDecoder
    wire_format: str
    topk: int
    version: int
    last_used: float
    lock: threading.Lock


ModelLease = Callable[[], AbstractContextManager[tuple[ByteLM, int]]]
"""Lends the served model and its weights version for the duration of one computation."""


class SessionTable:
    """The open sessions of one expert, bounded as the module docstring says; safe to use from several threads."""

    def __init__(self, config: SessionConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config, self.clock = config or SessionConfig(), clock
        self._sessions: dict[bytes, _Session] = {}
        self._lock = threading.Lock()
        self.reserved_bytes = 0
        """KV-cache bytes held by the open sessions."""

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self,
        owner: Hashable,
        lease: ModelLease,
        prompt: torch.Tensor,
        wire_format: str,
        topk: int,
        max_context: int = 0,
    ) -> tuple[bytes, int, torch.Tensor]:
        """Open a session for `owner` and prefill `prompt` (1-D ids) → (session id, capacity, prompt logits (T, V)).

        Raises SessionError when the prompt does not fit the session or a bound is reached."""
        cfg = self.config
        with lease() as (model, version):
            per_position = KVCache.bytes_per_position(model)
            capacity = min(model.config.max_seq_len, cfg.max_cache_bytes_per_session // per_position)
            if max_context:
                capacity = min(capacity, max_context)
            if capacity < 2:
                raise SessionError(f"{SESSION_LIMIT}: a session may hold {capacity} positions, 2 needed")
            if len(prompt) > capacity:
                raise SessionError(f"prompt of {len(prompt)} bytes exceeds the session's {capacity}-byte context")
            nbytes = per_position * capacity
            sid = self._reserve(owner, nbytes)
            try:
                decoder = IncrementalDecoder(model, capacity)
                session = _Session(owner, decoder, wire_format, topk, version, self.clock(), threading.Lock())
                with session.lock:
                    with self._lock:
                        self._sessions[sid] = session
                    logits = decoder.feed(prompt)
            except BaseException:
                self._drop(sid, nbytes)
                raise
        logger.debug(
            "session %s opened by %s: %d bytes of prompt, capacity %d", sid.hex()[:8], owner, len(prompt), capacity
        )
        return sid, capacity, logits

    def _reserve(self, owner: Hashable, nbytes: int) -> bytes:
        """A fresh session id with `nbytes` of cache counted for `owner`, or SessionError at a bound."""
        cfg = self.config
        self.expire()
        with self._lock:
            if len(self._sessions) >= cfg.max_sessions:
                raise SessionError(f"{SESSION_LIMIT}: {cfg.max_sessions} sessions open")
            if sum(s.owner == owner for s in self._sessions.values()) >= cfg.max_sessions_per_peer:
                raise SessionError(f"{SESSION_LIMIT}: {cfg.max_sessions_per_peer} sessions of this peer open")
            if self.reserved_bytes + nbytes > cfg.max_total_cache_bytes:
                raise SessionError(f"{SESSION_LIMIT}: {cfg.max_total_cache_bytes} bytes of cache in use")
            self.reserved_bytes += nbytes
            return os.urandom(SESSION_ID_BYTES)

    def _drop(self, sid: bytes, nbytes: int) -> None:
        with self._lock:
            self._sessions.pop(sid, None)
            self.reserved_bytes -= nbytes

    def step(self, owner: Hashable, sid: bytes, ids: torch.Tensor, lease: ModelLease) -> tuple[torch.Tensor, str, int]:
        """Append `ids` to `owner`'s session `sid` → (their logits (n, V), wire format, topk); SessionError if the
        caller owns no such live session, or the session is busy with another step."""
        session = self._owned(owner, sid)
        if not session.lock.acquire(blocking=False):
            raise SessionError("session busy with another step")
        try:
            with lease() as (model, version):
                if version != session.version:  # the expert's weights changed: recompute the window with them
                    session.decoder.refill(model)
                    session.version = version
                logits = session.decoder.feed(ids)
            session.last_used = self.clock()
        finally:
            session.lock.release()
        return logits, session.wire_format, session.topk

    def close(self, owner: Hashable, sid: bytes) -> None:
        """Drop `owner`'s session `sid` and free its cache; SessionError if the caller owns no such live session."""
        session = self._owned(owner, sid)
        with self._lock:
            if self._sessions.get(sid) is session:
                del self._sessions[sid]
                self.reserved_bytes -= session.decoder.nbytes

    def _owned(self, owner: Hashable, sid: bytes) -> _Session:
        now = self.clock()
        with self._lock:
            session = self._sessions.get(sid)
        if session is None or session.owner != owner or now - session.last_used > self.config.idle_timeout_seconds:
            raise SessionError(UNKNOWN_SESSION)  # the same answer whether the id exists or not
        session.last_used = now
        return session

    def expire(self) -> int:
        """Drop the sessions idle for longer than the timeout (and not computing); returns how many."""
        now, dropped = self.clock(), 0
        with self._lock:
            for sid, s in list(self._sessions.items()):
                if now - s.last_used > self.config.idle_timeout_seconds and not s.lock.locked():
                    del self._sessions[sid]
                    self.reserved_bytes -= s.decoder.nbytes
                    dropped += 1
        if dropped:
            logger.debug("expired %d idle sessions", dropped)
        return dropped


def serve_session_message(table: SessionTable, raw: bytes, owner: Hashable, lease: ModelLease) -> tuple[bytes, int]:
    """Answer one session message from `owner` → (reply payload, positions computed). Raises WireError or
    SessionError (both ValueError) with the one-line reason for the caller."""
    op, f = decode_session_message(raw, max_ids=_max_ids(table, lease))
    if op == CLOSE:
        table.close(owner, f["session_id"])
        return b"", 0
    ids = f["ids"]
    if op == OPEN:
        sid, capacity, logits = table.open(owner, lease, ids, f["wire_format"], f["topk"], f["max_context"])
        return encode_open_reply(sid, capacity, _encode(logits, f["wire_format"], f["topk"])), len(ids)
    if len(ids) > table.config.max_step_bytes:
        raise SessionError(f"a step of {len(ids)} bytes exceeds max_step_bytes={table.config.max_step_bytes}")
    logits, wire_format, topk = table.step(owner, f["session_id"], ids, lease)
    return _encode(logits, wire_format, topk), len(ids)


def _max_ids(table: SessionTable, lease: ModelLease) -> int:
    """Most ids any message may carry: a prompt as long as the model's context (checked precisely later)."""
    with lease() as (model, _):
        return max(model.config.max_seq_len, table.config.max_step_bytes)


def _encode(logits: torch.Tensor, wire_format: str, topk: int) -> bytes:
    if logits.dim() != 2 or logits.shape[-1] < VOCAB:
        raise RuntimeError(f"expert returned logits of shape {tuple(logits.shape)}")
    logp = F.log_softmax(logits[:, :VOCAB].float(), dim=-1)[None]  # (1, n, 256)
    try:
        return encode_logp(logp, wire_format, topk=topk or 16)
    except WireError as e:
        raise SessionError(str(e)) from None


__all__ = [
    "SESSION_LIMIT",
    "UNKNOWN_SESSION",
    "SessionConfig",
    "SessionError",
    "SessionTable",
    "serve_session_message",
]
