"""Wire formats for next-byte distributions: round trips, tolerances, and rejection of malformed or forged payloads."""

from __future__ import annotations

import ctypes
import math
import struct

import pytest
import torch

from moe.net.wire import (
    ACT_FORMATS,
    DIST_FORMATS,
    WIRE_FORMATS,
    MaliciousReply,
    WireError,
    decode_activations,
    decode_frame,
    decode_frames,
    decode_logp,
    decode_request,
    encode_activations,
    encode_frame,
    encode_logp,
    encode_request,
    reply_nbytes,
    validate_reply,
    wire_cost,
)


def _logp(B: int = 3, T: int = 5, sharp: float = 4.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharp * torch.randn(B, T, 256, generator=g), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8, torch.int64, torch.int32])
def test_frame_round_trip(dtype):
    """Every wire dtype comes back bit-identical with its shape."""
    x = (torch.arange(24).reshape(2, 3, 4) % 200).to(dtype)
    y, end = decode_frame(encode_frame(x))
    assert y.dtype == dtype and torch.equal(x, y) and end == len(encode_frame(x))


def test_frame_rejects_malformed():
    """Bad magic, unknown dtype, truncated data, oversize claims and trailing bytes are WireErrors."""
    buf = encode_frame(torch.ones(4, 4))
    with pytest.raises(WireError, match="magic"):
        decode_frame(b"XXXX" + buf[4:])
    with pytest.raises(WireError, match="dtype code"):
        decode_frame(buf[:4] + bytes([99]) + buf[5:])
    with pytest.raises(WireError, match="truncated"):
        decode_frame(buf[:-3])
    huge = b"HMT1" + struct.pack("<BBII", 0, 2, 1 << 20, 1 << 20)
    with pytest.raises(WireError, match="exceeds"):
        decode_frame(huge)
    with pytest.raises(WireError, match="trailing"):
        decode_frames(buf + b"\x00", 1)
    with pytest.raises(WireError, match="cannot be sent"):
        encode_frame(torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("fmt", DIST_FORMATS)
def test_formats_decode_to_valid_distributions(fmt):
    """Each format decodes an honest encoding to a float32 (B, T, 256) distribution that passes validate_reply."""
    logp = _logp()
    dec = validate_reply(decode_logp(encode_logp(logp, fmt, topk=16), fmt, (3, 5), topk=16), (3, 5))
    assert dec.dtype == torch.float32 and dec.shape == (3, 5, 256)


def test_format_tolerances():
    """fp32 is exact, fp16 and q8 stay close everywhere that matters, topk keeps the top bytes near exact."""
    logp = _logp(sharp=3.0)
    assert torch.equal(decode_logp(encode_logp(logp, "fp32"), "fp32", (3, 5)), logp)
    assert (decode_logp(encode_logp(logp, "fp16"), "fp16", (3, 5)) - logp).abs().max() < 2e-2
    q8 = decode_logp(encode_logp(logp, "q8"), "q8", (3, 5))
    p = logp.exp()
    assert ((q8 - logp).abs() * p).sum(-1).max() < 0.05  # error weighted by where the mass is
    top = decode_logp(encode_logp(logp, "topk", topk=32), "topk", (3, 5), topk=32)
    vals, ids = logp.topk(32, dim=-1)
    assert (top.gather(-1, ids) - vals).abs().max() < 2e-2


def test_topk_confident_rows_stay_normalized():
    """A near one-hot distribution still leaves positive mass for the other bytes after fp16 rounding."""
    logits = torch.full((1, 4, 256), -30.0)
    logits[..., 7] = 30.0
    logp = torch.log_softmax(logits, -1)
    dec = validate_reply(decode_logp(encode_logp(logp, "topk", topk=4), "topk", (1, 4), topk=4), (1, 4))
    assert dec[..., 7].exp().min() > 0.99 and torch.isfinite(dec).all()


def test_validate_reply_rejects():
    """NaN, infinity, wrong dtype, wrong shape and unnormalized rows each raise MaliciousReply."""
    good = _logp()
    validate_reply(good, (3, 5))
    bad_nan = good.clone()
    bad_nan[0, 0, 0] = float("nan")
    cases = {
        "NaN": bad_nan,
        "dtype": good.double(),
        "shape": good[:, :4],
        "not distributions": good + 0.1,
    }
    for reason, x in cases.items():
        with pytest.raises(MaliciousReply, match=reason):
            validate_reply(x, (3, 5))
    with pytest.raises(MaliciousReply, match="not a tensor"):
        validate_reply([1.0], (3, 5))


def test_forged_payloads_are_malicious():
    """Forged payloads (duplicate topk ids, topk mass over 1, unnormalized fp16, mismatched q8, garbage) are caught."""
    logp = _logp()
    ids = torch.zeros(3, 5, 4, dtype=torch.uint8)
    vals = torch.full((3, 5, 4), -3.0, dtype=torch.float16)
    with pytest.raises(MaliciousReply, match="repeat"):
        decode_logp(encode_frame(ids) + encode_frame(vals), "topk", (3, 5), topk=4)
    ids = torch.arange(4, dtype=torch.uint8).expand(3, 5, 4).contiguous()
    with pytest.raises(MaliciousReply, match="mass"):
        decode_logp(encode_frame(ids) + encode_frame(torch.zeros(3, 5, 4, dtype=torch.float16)), "topk", (3, 5), 4)
    with pytest.raises(MaliciousReply, match="normalized"):
        decode_logp(encode_frame((logp + 1.0).half()), "fp16", (3, 5))
    q = torch.zeros(3, 5, 256, dtype=torch.uint8)
    with pytest.raises(MaliciousReply, match=r"frame 0 declares torch.float32 \(2, 5\)"):
        decode_logp(encode_frame(torch.zeros(2, 5)) + encode_frame(torch.zeros(3, 5)) + encode_frame(q), "q8", (3, 5))
    for fmt in DIST_FORMATS:
        with pytest.raises(MaliciousReply, match="malformed"):
            decode_logp(b"\x00garbage" * 10, fmt, (3, 5))
    with pytest.raises(MaliciousReply, match="declares torch.float16"):
        decode_logp(encode_frame(logp.half()), "fp32", (3, 5))
    with pytest.raises(MaliciousReply):  # q8 with a forged offset fails normalization
        off, step, qq = decode_frames(encode_logp(logp, "q8"), 3)
        forged = encode_frame(off + 0.5) + encode_frame(step) + encode_frame(qq)
        validate_reply(decode_logp(forged, "q8", (3, 5)), (3, 5))


def test_activations_round_trip_and_checks():
    """act32 is exact, act16 close; wrong shape, dtype or non-finite activations are MaliciousReply."""
    x = torch.randn(2, 3, 8)
    assert torch.equal(decode_activations(encode_activations(x, "act32"), "act32", (2, 3, 8)), x)
    assert (decode_activations(encode_activations(x, "act16"), "act16", (2, 3, 8)) - x).abs().max() < 1e-2
    with pytest.raises(MaliciousReply, match=r"declares torch.float32 \(2, 3, 8\), torch.float32 \(2, 3, 9\)"):
        decode_activations(encode_activations(x, "act32"), "act32", (2, 3, 9))
    with pytest.raises(MaliciousReply, match="declares torch.float16"):
        decode_activations(encode_activations(x, "act16"), "act32", (2, 3, 8))
    with pytest.raises(MaliciousReply, match="NaN"):
        decode_activations(encode_activations(x / 0 * 0, "act32"), "act32", (2, 3, 8))


def test_request_round_trip_and_rejection():
    """Requests carry format, topk and the input frame; malformed ones raise WireError."""
    x = torch.randint(0, 256, (2, 7), dtype=torch.uint8)
    y, fmt, k = decode_request(encode_request(x, "topk", 32), max_bytes=1 << 20)
    assert torch.equal(x, y) and fmt == "topk" and k == 32
    raw = encode_request(x, "fp32")
    with pytest.raises(WireError, match="magic"):
        decode_request(b"NOPE" + raw[4:], 1 << 20)
    with pytest.raises(WireError, match="format index"):
        decode_request(raw[:4] + bytes([200]) + raw[5:], 1 << 20)
    with pytest.raises(WireError, match="exceeds"):
        decode_request(raw, max_bytes=4)


def test_wire_cost_on_a_trained_byte_model():
    """On a briefly trained byte model, fp16/q8 cost almost no bits per byte and every format is smaller than fp32."""
    torch.manual_seed(0)
    text = (math.__doc__ or "") + (struct.__doc__ or "") + (torch.nn.Module.__doc__ or "")
    data = torch.tensor(list(text.encode()[:4096]), dtype=torch.long)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 256))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    x, y = data[:-1].view(1, -1), data[1:].view(1, -1)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x).view(-1, 256), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logp = torch.log_softmax(model(x), -1)
    cost = wire_cost(logp, y, topk=16)
    assert cost["fp32"]["bpb"] < 5.0  # it learned something (uniform is 8)
    assert abs(cost["fp16"]["bpb_cost"]) < 0.01 and abs(cost["q8"]["bpb_cost"]) < 0.02
    sizes = [cost[f]["bytes_per_position"] for f in DIST_FORMATS]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]


# memory bombs: a small reply whose header makes the decoder allocate far more than it received


def peak_rss_growth(fn) -> int:
    """Bytes by which the process's peak resident memory rose above its level before `fn()` ran.

    Linux only (skips elsewhere): freed heap is handed back first, then the kernel's high-water mark is reset, so any
    buffer `fn` writes to, even one freed again before it returns, counts. torch's CPU allocations are invisible to
    tracemalloc, hence the resident set.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
    except OSError:
        pytest.skip("needs Linux with glibc and a writable /proc/self/clear_refs")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def topk_bomb(positions: int) -> bytes:
    """A well-formed k=1 topk reply for a (1, positions) batch: 3 bytes a position on the wire, 1 KiB decoded."""
    ids = torch.zeros(1, positions, 1, dtype=torch.uint8)
    vals = torch.full((1, positions, 1), -1.0, dtype=torch.float16)
    return encode_frame(ids) + encode_frame(vals)


@pytest.mark.parametrize("positions", [20_000, (4 << 20) // 3 - 20], ids=["60KB", "4MiB-p2p-cap"])
def test_topk_bomb_is_refused_before_decoding(positions):
    """A topk reply declaring far more positions than the (2, 8) request asked for is refused, allocating next to
    nothing (before the fix, 60 KB decoded into ~87 MB, and a reply at the P2P cap into ~6 GB)."""
    bomb = topk_bomb(positions)

    def decode():
        with pytest.raises(MaliciousReply, match=r"declares torch.uint8 \(1, \d+, 1\), torch.uint8 \(2, 8, 16\)"):
            validate_reply(decode_logp(bomb, "topk", (2, 8), topk=16), (2, 8))

    grew = peak_rss_growth(decode)
    assert grew < 4 << 20, f"{len(bomb)} bytes in, {grew} bytes allocated"


@pytest.mark.parametrize("fmt", DIST_FORMATS)
def test_reply_for_a_bigger_batch_is_refused_before_decoding(fmt):
    """An honest-looking reply for 2000 positions, answering a (2, 8) request, is refused without copying its data."""
    big = encode_logp(_logp(B=1, T=2000), fmt, topk=16)

    def decode():
        with pytest.raises(MaliciousReply, match="declares"):
            decode_logp(big, fmt, (2, 8), topk=16)

    assert peak_rss_growth(decode) < 1 << 20


def test_lying_headers_are_refused_from_the_header_alone():
    """A header claiming a huge shape over a few bytes, a wrong k, or a right header with missing or extra data, is
    refused with a reason naming what differs."""
    huge = b"HMT1" + struct.pack("<BB3I", 2, 3, 65535, 65535, 255)  # ids u8 (65535, 65535, 255): 1 TB claimed
    with pytest.raises(MaliciousReply, match=r"declares torch.uint8 \(65535, 65535, 255\)"):
        decode_logp(huge + bytes(64), "topk", (2, 8), topk=16)
    honest = encode_logp(_logp(B=2, T=8), "topk", topk=16)
    with pytest.raises(MaliciousReply, match=r"\(2, 8, 32\)"):
        decode_logp(encode_logp(_logp(B=2, T=8), "topk", topk=32), "topk", (2, 8), topk=16)
    with pytest.raises(MaliciousReply, match=f"{len(honest) - 1} bytes, {len(honest)} expected"):
        decode_logp(honest[:-1], "topk", (2, 8), topk=16)
    with pytest.raises(MaliciousReply, match=f"{len(honest) + 7} bytes, {len(honest)} expected"):
        decode_logp(honest + bytes(7), "topk", (2, 8), topk=16)


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
def test_reply_nbytes_is_the_length_of_an_honest_reply(fmt):
    """The size limit the client enforces equals the length of the honest encoding, for every format and shape."""
    for B, T in ((1, 1), (2, 8), (3, 37)):
        if fmt in ACT_FORMATS:
            payload, shape = encode_activations(torch.randn(B, T, 5), fmt), (B, T, 5)
        else:
            payload, shape = encode_logp(_logp(B=B, T=T), fmt, topk=7), (B, T)
        assert len(payload) == reply_nbytes(fmt, shape, topk=7)


def test_a_bad_request_description_is_the_callers_error_not_the_peers():
    """Decoding against an impossible request (unknown format, wrong rank, k out of range) raises WireError, never
    MaliciousReply, so no peer is blamed for the caller's mistake."""
    payload = encode_logp(_logp(B=2, T=8), "fp32")
    for fmt, shape, k in (("act32", (2, 8), 16), ("fp32", (2, 8, 256), 16), ("topk", (2, 8), 0), ("fp8", (2, 8), 16)):
        with pytest.raises(WireError):
            decode_logp(payload, fmt, shape, topk=k)
    with pytest.raises(WireError):
        decode_activations(payload, "fp32", (2, 8, 256))
