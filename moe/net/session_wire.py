"""Byte layouts of inference-session messages (moe.net.inference_session), shared by server and client.

Every message is a request payload on an expert's direct connection or its `hivemoe.expert.inference` P2P handler,
told apart from a stateless forward request (moe.net.wire, magic HMQ1) by its magic. Little-endian:

    open  = HMI1 | 1 | format u8 | topk u8 | max_context u32 | prompt frame (T,) ids
            reply: session id (16) | capacity u32 | distributions of the T prompt positions (1, T, 256) in format
    step  = HMI1 | 2 | session id (16) | ids frame (n,)
            reply: distributions of the n new positions (1, n, 256) in the session's format
    close = HMI1 | 3 | session id (16)
            reply: empty

An id frame is a moe.net.wire frame of uint8 (bytes) or int32 (special ids too). A reply is framed with the
expert's receipt (moe.net.receipt) like any other; `positions` in the receipt is the number of ids sent.
"""

from __future__ import annotations

import struct

import torch

from moe.model.tokenizer import VOCAB_SIZE
from moe.net.wire import DIST_FORMATS, WireError, decode_frames, encode_frame

SESSION_MAGIC = b"HMI1"
OPEN, STEP, CLOSE = 1, 2, 3
SESSION_ID_BYTES = 16
_OPEN = struct.Struct("<BBI")
_OPEN_REPLY = struct.Struct("<16sI")


def is_session_message(raw: bytes | memoryview) -> bool:
    return bytes(raw[:4]) == SESSION_MAGIC


def encode_ids(ids: torch.Tensor) -> bytes:
    ids = ids.detach().cpu().flatten()
    return encode_frame(ids.to(torch.uint8 if bool((ids < 256).all()) else torch.int32))


def encode_open(prompt: torch.Tensor, wire_format: str, topk: int, max_context: int = 0) -> bytes:
    if wire_format not in DIST_FORMATS:
        raise WireError(f"sessions serve distributions; {wire_format!r} is not one of {DIST_FORMATS}")
    head = _OPEN.pack(DIST_FORMATS.index(wire_format), topk, max_context)
    return SESSION_MAGIC + bytes([OPEN]) + head + encode_ids(prompt)


def encode_step(session_id: bytes, ids: torch.Tensor) -> bytes:
    return SESSION_MAGIC + bytes([STEP]) + _sid(session_id) + encode_ids(ids)


def encode_close(session_id: bytes) -> bytes:
    return SESSION_MAGIC + bytes([CLOSE]) + _sid(session_id)


def _sid(session_id: bytes) -> bytes:
    if len(session_id) != SESSION_ID_BYTES:
        raise WireError(f"a session id is {SESSION_ID_BYTES} bytes, got {len(session_id)}")
    return bytes(session_id)


def decode_session_message(raw: bytes | memoryview, max_ids: int) -> tuple[int, dict]:
    """(op, fields) of a session message; raises WireError on anything malformed, unknown, or over `max_ids` ids.

    fields: open → wire_format, topk, max_context, ids; step → session_id, ids; close → session_id.
    """
    raw = memoryview(raw)
    if len(raw) < 5 or not is_session_message(raw):
        raise WireError("session message header missing or bad magic")
    op, body = raw[4], raw[5:]
    if op == OPEN:
        if len(body) < _OPEN.size:
            raise WireError("session open truncated")
        fmt, topk, max_context = _OPEN.unpack_from(body)
        if fmt >= len(DIST_FORMATS):
            raise WireError(f"unknown distribution format index {fmt}")
        if DIST_FORMATS[fmt] == "topk" and not 1 <= topk < 256:
            raise WireError(f"topk must be in 1..255, got {topk}")
        ids = _decode_ids(body[_OPEN.size :], max_ids)
        return OPEN, {"wire_format": DIST_FORMATS[fmt], "topk": topk, "max_context": max_context, "ids": ids}
    if op in (STEP, CLOSE):
        if len(body) < SESSION_ID_BYTES:
            raise WireError("session id truncated")
        sid = bytes(body[:SESSION_ID_BYTES])
        if op == CLOSE:
            if len(body) != SESSION_ID_BYTES:
                raise WireError("unexpected bytes after a session close")
            return CLOSE, {"session_id": sid}
        return STEP, {"session_id": sid, "ids": _decode_ids(body[SESSION_ID_BYTES:], max_ids)}
    raise WireError(f"unknown session op {op}")


def _decode_ids(buf: memoryview, max_ids: int) -> torch.Tensor:
    """A non-empty 1-D id frame of at most `max_ids` ids, all in the vocabulary, as int64."""
    (x,) = decode_frames(buf, 1, max_bytes=4 * max_ids)
    if x.dtype not in (torch.uint8, torch.int32) or x.dim() != 1:
        raise WireError(f"session ids must be a 1-D uint8 or int32 frame, got {x.dtype} {tuple(x.shape)}")
    if not 1 <= len(x) <= max_ids:
        raise WireError(f"{len(x)} bytes in a session message, 1..{max_ids} allowed")
    x = x.long()
    if bool(((x < 0) | (x >= VOCAB_SIZE)).any()):
        raise WireError(f"ids outside 0..{VOCAB_SIZE - 1}")
    return x


def encode_open_reply(session_id: bytes, capacity: int, logp_payload: bytes) -> bytes:
    return _OPEN_REPLY.pack(session_id, capacity) + logp_payload


def decode_open_reply(reply: bytes) -> tuple[bytes, int, bytes]:
    """(session id, capacity, distribution payload); WireError if too short to hold the header."""
    if len(reply) < _OPEN_REPLY.size:
        raise WireError(f"session open reply of {len(reply)} bytes is shorter than its header")
    sid, capacity = _OPEN_REPLY.unpack_from(reply)
    return sid, capacity, reply[_OPEN_REPLY.size :]


OPEN_REPLY_HEADER_BYTES = _OPEN_REPLY.size
