"""Byte layouts of what experts send over the network, and the checks every reply must pass before it is used.

Nothing here is pickled: a tensor travels as a *frame*, a fixed little-endian header followed by its raw buffer,
and the header's dtype and shape are checked against the buffer length before a single element is read. Peers do
not trust each other, so every decoder raises `MaliciousReply` (or `WireError` for requests) with a one-line reason
instead of returning something half-valid. A reply is decoded against the request it answers: the caller knows
(B, T), the format and k, so every frame header and the total length must match `reply_layout` exactly before any
data is copied, and a 60 KB topk reply cannot claim the (B, T, 256) rows of a million positions.

Frame layout (all integers little-endian):
    magic  b"HMT1"           4 bytes
    dtype  u8                0=float32 1=float16 2=uint8 3=int64 4=int32
    ndim   u8                at most MAX_NDIM
    shape  u32 * ndim
    data   prod(shape) * itemsize bytes, C order, little-endian

Next-byte distribution formats (a payload is a concatenation of frames):
    fp32   [logp f32 (B, T, 256)]                                   1024 bytes a position
    fp16   [logp f16 (B, T, 256)]                                    512 bytes a position
    q8     [offset f32 (B, T), step f32 (B, T), q u8 (B, T, 256)]   264 bytes a position; logp = offset + q * step
    topk   [ids u8 (B, T, k), logp f16 (B, T, k)]                    3k bytes a position; the rest of the mass is
                                                                       spread uniformly over the other 256 - k bytes
Activation formats (for experts that serve hidden states): act32 / act16, one frame of any shape.
"""

from __future__ import annotations

import logging
import math
import struct

import numpy as np
import torch

from moe.metrics import bits_per_byte

logger = logging.getLogger(__name__)

VOCAB = 256
MAGIC = b"HMT1"
MAX_NDIM = 6
DIST_FORMATS = ("fp32", "fp16", "q8", "topk")
ACT_FORMATS = ("act32", "act16")
WIRE_FORMATS = DIST_FORMATS + ACT_FORMATS

Q8_RANGE = 20.0  # nats below a row's maximum that q8 represents; lower log-probs are clamped up to it
TOPK_REST_FLOOR = 1e-6  # least probability mass an honest topk encoder leaves for the other 256 - k bytes
FP16_LOOSE_TOL = 2e-2  # fp16 rounding moves a row's logsumexp by up to ~3e-3; more than this is not rounding

_DTYPES: dict[int, tuple[np.dtype, torch.dtype]] = {
    0: (np.dtype("<f4"), torch.float32),
    1: (np.dtype("<f2"), torch.float16),
    2: (np.dtype("u1"), torch.uint8),
    3: (np.dtype("<i8"), torch.int64),
    4: (np.dtype("<i4"), torch.int32),
}
_CODES = {torch_dtype: code for code, (_, torch_dtype) in _DTYPES.items()}


class WireError(ValueError):
    """Bytes that do not parse as a well-formed frame or request."""


class MaliciousReply(ValueError):
    """A reply that is malformed or not a proper distribution; the peer that sent it is at fault."""


def encode_frame(x: torch.Tensor) -> bytes:
    """One tensor as header + raw little-endian buffer; raises WireError for dtypes the wire does not carry."""
    if x.dtype not in _CODES:
        raise WireError(f"dtype {x.dtype} cannot be sent on the wire")
    if x.dim() > MAX_NDIM:
        raise WireError(f"tensor has {x.dim()} dims, at most {MAX_NDIM} allowed")
    a = x.detach().cpu().contiguous().numpy()
    header = MAGIC + struct.pack(f"<BB{x.dim()}I", _CODES[x.dtype], x.dim(), *x.shape)
    return header + a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_frame(buf: bytes | memoryview, offset: int = 0, max_bytes: int = 1 << 26) -> tuple[torch.Tensor, int]:
    """Parse one frame at `offset`; returns (tensor, offset after it). Raises WireError on any inconsistency."""
    buf = memoryview(buf)
    code, shape, start = _frame_header(buf, offset)
    nbytes = _data_nbytes(code, shape)
    if nbytes > max_bytes:
        raise WireError(f"frame of {nbytes} bytes exceeds the {max_bytes}-byte limit")
    if len(buf) - start < nbytes:
        raise WireError(f"frame data truncated: header says {nbytes} bytes, {len(buf) - start} present")
    return _frame_data(buf, code, shape, start), start + nbytes


def _frame_header(buf: memoryview, offset: int) -> tuple[int, tuple[int, ...], int]:
    """(dtype code, shape, offset of the data) of the frame at `offset`; reads the header only, allocates nothing."""
    if len(buf) - offset < 6 or bytes(buf[offset : offset + 4]) != MAGIC:
        raise WireError("frame header missing or bad magic")
    code, ndim = buf[offset + 4], buf[offset + 5]
    if code not in _DTYPES:
        raise WireError(f"unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise WireError(f"frame claims {ndim} dims, at most {MAX_NDIM} allowed")
    start = offset + 6 + 4 * ndim
    if len(buf) < start:
        raise WireError("frame shape truncated")
    return code, struct.unpack_from(f"<{ndim}I", buf, offset + 6), start


def _data_nbytes(code: int, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * _DTYPES[code][0].itemsize


def _frame_data(buf: memoryview, code: int, shape: tuple[int, ...], start: int) -> torch.Tensor:
    """A native-endian copy of the frame's data; the caller has checked that it lies within `buf`."""
    np_dtype = _DTYPES[code][0]
    a = np.frombuffer(buf, dtype=np_dtype, count=math.prod(shape), offset=start).reshape(shape)
    return torch.from_numpy(a.astype(np_dtype.newbyteorder("="), copy=True))


def decode_frames(buf: bytes | memoryview, n: int, max_bytes: int = 1 << 26) -> list[torch.Tensor]:
    """Exactly `n` frames filling `buf`; trailing bytes are an error (no hidden payloads)."""
    out, offset = [], 0
    for _ in range(n):
        x, offset = decode_frame(buf, offset, max_bytes)
        out.append(x)
    if offset != len(buf):
        raise WireError(f"{len(buf) - offset} unexpected trailing bytes after {n} frame(s)")
    return out


def encode_logp(logp: torch.Tensor, wire_format: str, topk: int = 16) -> bytes:
    """Encode normalized next-byte log-probs (B, T, 256) so that the decoded rows are again normalized."""
    if logp.dim() != 3 or logp.shape[-1] != VOCAB:
        raise WireError(f"expected log-probs of shape (B, T, {VOCAB}), got {tuple(logp.shape)}")
    logp = logp.detach().float().cpu()
    if wire_format == "fp32":
        return encode_frame(logp)
    if wire_format == "fp16":
        return encode_frame(logp.clamp_min(-1e4).half())  # fp16 overflows to -inf below -65504
    if wire_format == "q8":
        hi = logp.amax(-1, keepdim=True)  # (B, T, 1)
        lo = torch.maximum(logp.amin(-1, keepdim=True), hi - Q8_RANGE)
        step = ((hi - lo) / 255).clamp_min(1e-8)  # (B, T, 1)
        q = ((logp.clamp_min(lo) - lo) / step).round().clamp(0, 255)  # (B, T, 256)
        # choose the offset so that offset + q * step is exactly normalized after decoding
        offset = -torch.logsumexp(q * step, dim=-1)  # (B, T)
        return encode_frame(offset) + encode_frame(step.squeeze(-1)) + encode_frame(q.to(torch.uint8))
    if wire_format == "topk":
        if not 1 <= topk < VOCAB:
            raise WireError(f"topk must be in 1..{VOCAB - 1}, got {topk}")
        vals, ids = logp.topk(topk, dim=-1)  # (B, T, k)
        vals = vals.double()
        cap = math.log1p(-TOPK_REST_FLOOR)  # the top-k together may hold at most 1 - floor
        for _ in range(4):  # fp16 rounding can push the kept mass over the cap; shift down until it does not
            rounded = vals.half().double()
            excess = (torch.logsumexp(rounded, dim=-1, keepdim=True) - cap).clamp_min(0)  # (B, T, 1)
            if not bool((excess > 0).any()):
                break
            vals = vals - excess - 1e-3 * (excess > 0)
        return encode_frame(ids.to(torch.uint8)) + encode_frame(vals.half())
    raise WireError(f"unknown distribution wire format {wire_format!r}")


def reply_layout(
    wire_format: str, shape: tuple[int, ...], topk: int = 16
) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """The frames (dtype, shape), in order, of an honest reply to a request: `shape` is the request's (B, T) for a
    distribution format and the whole output shape for an activation format.

    Raises WireError if the request itself could not be valid (unknown format, bad shape or k): the caller's fault.
    """
    shape = tuple(int(n) for n in shape)
    if wire_format in ACT_FORMATS:
        if not 1 <= len(shape) <= MAX_NDIM or min(shape) < 0:
            raise WireError(f"activation shape {shape} cannot be sent on the wire")
        return [(torch.float32 if wire_format == "act32" else torch.float16, shape)]
    if len(shape) != 2 or min(shape) < 0:
        raise WireError(f"a distribution request has shape (B, T), got {shape}")
    B, T = shape
    if wire_format == "fp32":
        return [(torch.float32, (B, T, VOCAB))]
    if wire_format == "fp16":
        return [(torch.float16, (B, T, VOCAB))]
    if wire_format == "q8":
        return [(torch.float32, (B, T)), (torch.float32, (B, T)), (torch.uint8, (B, T, VOCAB))]
    if wire_format == "topk":
        if not 1 <= topk < VOCAB:
            raise WireError(f"topk must be in 1..{VOCAB - 1}, got {topk}")
        return [(torch.uint8, (B, T, topk)), (torch.float16, (B, T, topk))]
    raise WireError(f"unknown wire format {wire_format!r}")


def reply_nbytes(wire_format: str, shape: tuple[int, ...], topk: int = 16) -> int:
    """Exact length of an honest reply (see `reply_layout`); the client refuses a longer one before decoding it."""
    return sum(6 + 4 * len(s) + math.prod(s) * d.itemsize for d, s in reply_layout(wire_format, shape, topk))


def decode_layout(buf: bytes | memoryview, layout: list[tuple[torch.dtype, tuple[int, ...]]]) -> list[torch.Tensor]:
    """Exactly the frames of `layout` filling `buf`; raises WireError on any difference.

    Every header, and the total length, is checked against `layout` before any data is copied, so a reply costs at
    most the memory its request asked for, whatever its headers claim.
    """
    buf, headers, offset = memoryview(buf), [], 0
    for i, (dtype, shape) in enumerate(layout):
        code, got, start = _frame_header(buf, offset)
        if (_DTYPES[code][1], got) != (dtype, shape):
            raise WireError(f"frame {i} declares {_DTYPES[code][1]} {got}, {dtype} {shape} expected")
        headers.append((code, got, start))
        offset = start + _data_nbytes(code, got)
    if offset != len(buf):
        raise WireError(f"{len(buf)} bytes, {offset} expected")
    return [_frame_data(buf, *h) for h in headers]


def decode_logp(
    payload: bytes | memoryview, wire_format: str, batch_shape: tuple[int, int], topk: int = 16
) -> torch.Tensor:
    """Decode the reply to a (B, T) = `batch_shape` request (with `topk` for the topk format) to float32 log-probs
    (B, T, 256); raises MaliciousReply, before allocating anything, if the payload is not laid out for that request.

    The result is not yet validated: call `validate_reply` on it. A bad `wire_format`/`batch_shape`/`topk` raises
    WireError (the caller's mistake, not the peer's).
    """
    if wire_format not in DIST_FORMATS:
        raise WireError(f"unknown distribution wire format {wire_format!r}")
    layout = reply_layout(wire_format, batch_shape, topk)
    try:
        frames = decode_layout(payload, layout)
    except WireError as e:
        raise MaliciousReply(f"{wire_format} reply malformed for a {batch_shape} request: {e}") from None
    return _DIST_DECODERS[wire_format](*frames)


def _from_fp16(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (B, T, 1)
    if not bool(torch.isfinite(lse).all()) or _max_abs(lse) > FP16_LOOSE_TOL:
        raise MaliciousReply("fp16 rows are not normalized (beyond fp16 rounding)")
    return x - lse  # undo the rounding drift only


def _from_q8(offset: torch.Tensor, step: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return offset.unsqueeze(-1) + q.float() * step.unsqueeze(-1)  # (B, T, 256)


def _from_topk(ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Spread the mass the top k leave uniformly over the other 256 - k bytes; ids must not repeat within a row."""
    B, T, k = ids.shape
    ids = ids.long()
    ranked = ids.sort(dim=-1).values  # (B, T, k): a repeat shows up as equal neighbours
    if bool((ranked[..., 1:] == ranked[..., :-1]).any()):
        raise MaliciousReply("topk ids repeat within a row")
    vals = vals.double()
    rest = -torch.expm1(torch.logsumexp(vals, dim=-1, keepdim=True))  # (B, T, 1) mass left for the others
    if not bool((rest > 0).all()):
        raise MaliciousReply("topk mass is 1 or more (or not finite), nothing left for the other bytes")
    logp = (torch.log(rest) - math.log(VOCAB - k)).float().expand(B, T, VOCAB).clone()  # (B, T, 256)
    return logp.scatter_(-1, ids, vals.float())


_DIST_DECODERS = {"fp32": lambda x: x, "fp16": _from_fp16, "q8": _from_q8, "topk": _from_topk}


def encode_activations(x: torch.Tensor, wire_format: str) -> bytes:
    """Hidden states of any shape as one float frame."""
    if wire_format == "act32":
        return encode_frame(x.detach().float())
    if wire_format == "act16":
        return encode_frame(x.detach().half())
    raise WireError(f"unknown activation wire format {wire_format!r}")


def decode_activations(payload: bytes | memoryview, wire_format: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 activations of exactly `shape`, all finite; raises MaliciousReply (before allocating, if the layout
    is wrong) otherwise."""
    if wire_format not in ACT_FORMATS:
        raise WireError(f"unknown activation wire format {wire_format!r}")
    layout = reply_layout(wire_format, shape)
    try:
        (x,) = decode_layout(payload, layout)
    except WireError as e:
        raise MaliciousReply(f"{wire_format} reply malformed for shape {tuple(shape)}: {e}") from None
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise MaliciousReply("activations contain NaN or infinity")
    return x


def validate_reply(logp: torch.Tensor, batch_shape: tuple[int, int], tol: float = 1e-3) -> torch.Tensor:
    """Accept only float32 (B, T, 256) finite log-probs whose rows each sum to 1 within `tol` (in log space).

    Returns `logp` unchanged; raises MaliciousReply with a one-line reason otherwise.
    """
    B, T = batch_shape
    if not isinstance(logp, torch.Tensor):
        raise MaliciousReply(f"reply is a {type(logp).__name__}, not a tensor")
    if logp.dtype != torch.float32:
        raise MaliciousReply(f"reply dtype {logp.dtype}, float32 expected")
    if tuple(logp.shape) != (B, T, VOCAB):
        raise MaliciousReply(f"reply shape {tuple(logp.shape)}, {(B, T, VOCAB)} expected")
    if not bool(torch.isfinite(logp).all()):
        raise MaliciousReply("reply contains NaN or infinity")
    lse = torch.logsumexp(logp, dim=-1)  # (B, T)
    worst = _max_abs(lse)
    if worst > tol:
        raise MaliciousReply(f"reply rows are not distributions: |logsumexp| up to {worst:.3g} > {tol:g}")
    return logp


def wire_cost(logp: torch.Tensor, targets: torch.Tensor, topk: int = 16) -> dict[str, dict[str, float]]:
    """Bytes per position on the wire and bits-per-byte of `targets` under each decoded format vs fp32.

    `logp` (B, T, 256) are a real model's log-probs and `targets` (B, T) the bytes that followed; the lead can call
    this from a benchmark. Returns {format: {"bytes_per_position", "bpb", "bpb_cost"}}.
    """
    B, T, _ = logp.shape
    out: dict[str, dict[str, float]] = {}
    base = None
    for fmt in DIST_FORMATS:
        payload = encode_logp(logp, fmt, topk=topk)
        dec = validate_reply(decode_logp(payload, fmt, (B, T), topk), (B, T))
        bits, n = bits_per_byte(dec, targets.long())
        bpb = bits / n
        base = bpb if base is None else base
        out[fmt] = {"bytes_per_position": len(payload) / (B * T), "bpb": bpb, "bpb_cost": bpb - base}
    return out


REQUEST_MAGIC = b"HMQ1"


def encode_request(inputs: torch.Tensor, wire_format: str, topk: int = 16) -> bytes:
    """Request = magic | format index u8 | topk u8 | one input frame (byte ids as uint8, or float activations)."""
    if wire_format not in WIRE_FORMATS:
        raise WireError(f"unknown wire format {wire_format!r}")
    if not 0 <= topk < VOCAB:
        raise WireError(f"topk must be in 0..{VOCAB - 1}, got {topk}")
    return REQUEST_MAGIC + bytes([WIRE_FORMATS.index(wire_format), topk]) + encode_frame(inputs)


def decode_request(buf: bytes | memoryview, max_bytes: int) -> tuple[torch.Tensor, str, int]:
    """(inputs, wire_format, topk) from a request; raises WireError on anything malformed or oversized."""
    buf = memoryview(buf)
    if len(buf) < 6 or bytes(buf[:4]) != REQUEST_MAGIC:
        raise WireError("request header missing or bad magic")
    fmt_index, topk = buf[4], buf[5]
    if fmt_index >= len(WIRE_FORMATS):
        raise WireError(f"unknown wire format index {fmt_index}")
    (x,) = decode_frames(buf[6:], 1, max_bytes=max_bytes)
    return x, WIRE_FORMATS[fmt_index], topk


def request_positions(buf: bytes | memoryview) -> int:
    """Positions a (valid) request asks for: B·T byte positions, or the rows of an activation batch; from the
    headers only (what a receipt records as served)."""
    buf = memoryview(buf)
    _, shape, _ = _frame_header(buf, 6)
    fmt = WIRE_FORMATS[buf[4]]
    return math.prod(shape[:-1] if fmt in ACT_FORMATS else shape)


def request_width(buf: bytes | memoryview) -> int:
    """The sequence length a request asks about (its second dimension, 0 when it has none), from the headers only;
    raises WireError on a malformed header. A router's probes are its narrowest calls (moe.routing.traffic)."""
    buf = memoryview(buf)
    if len(buf) < 6 or bytes(buf[:4]) != REQUEST_MAGIC:
        raise WireError("request header missing or bad magic")
    _, shape, _ = _frame_header(buf, 6)
    return shape[1] if len(shape) > 1 else 0


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0
