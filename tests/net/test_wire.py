"""Wire formats for next-byte distributions: round trips, tolerances, and rejection of malformed or forged payloads."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from moe.net.wire import (
    DIST_FORMATS,
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
    dec = validate_reply(decode_logp(encode_logp(logp, fmt, topk=16), fmt), (3, 5))
    assert dec.dtype == torch.float32 and dec.shape == (3, 5, 256)


def test_format_tolerances():
    """fp32 is exact, fp16 and q8 stay close everywhere that matters, topk keeps the top bytes near exact."""
    logp = _logp(sharp=3.0)
    assert torch.equal(decode_logp(encode_logp(logp, "fp32"), "fp32"), logp)
    assert (decode_logp(encode_logp(logp, "fp16"), "fp16") - logp).abs().max() < 2e-2
    q8 = decode_logp(encode_logp(logp, "q8"), "q8")
    p = logp.exp()
    assert ((q8 - logp).abs() * p).sum(-1).max() < 0.05  # error weighted by where the mass is
    top = decode_logp(encode_logp(logp, "topk", topk=32), "topk")
    vals, ids = logp.topk(32, dim=-1)
    assert (top.gather(-1, ids) - vals).abs().max() < 2e-2


def test_topk_confident_rows_stay_normalized():
    """A near one-hot distribution still leaves positive mass for the other bytes after fp16 rounding."""
    logits = torch.full((1, 4, 256), -30.0)
    logits[..., 7] = 30.0
    logp = torch.log_softmax(logits, -1)
    dec = validate_reply(decode_logp(encode_logp(logp, "topk", topk=4), "topk"), (1, 4))
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
        decode_logp(encode_frame(ids) + encode_frame(vals), "topk")
    ids = torch.arange(4, dtype=torch.uint8).expand(3, 5, 4).contiguous()
    with pytest.raises(MaliciousReply, match="mass"):
        decode_logp(encode_frame(ids) + encode_frame(torch.zeros(3, 5, 4, dtype=torch.float16)), "topk")
    with pytest.raises(MaliciousReply, match="normalized"):
        decode_logp(encode_frame((logp + 1.0).half()), "fp16")
    q = torch.zeros(3, 5, 256, dtype=torch.uint8)
    with pytest.raises(MaliciousReply, match="shapes"):
        decode_logp(encode_frame(torch.zeros(2, 5)) + encode_frame(torch.zeros(3, 5)) + encode_frame(q), "q8")
    for fmt in DIST_FORMATS:
        with pytest.raises(MaliciousReply, match="malformed"):
            decode_logp(b"\x00garbage" * 10, fmt)
    with pytest.raises(MaliciousReply, match="float32 with 3 expected"):
        decode_logp(encode_frame(logp.half()), "fp32")
    with pytest.raises(MaliciousReply):  # q8 with a forged offset fails normalization
        off, step, qq = decode_frames(encode_logp(logp, "q8"), 3)
        validate_reply(decode_logp(encode_frame(off + 0.5) + encode_frame(step) + encode_frame(qq), "q8"), (3, 5))


def test_activations_round_trip_and_checks():
    """act32 is exact, act16 close; wrong shape, dtype or non-finite activations are MaliciousReply."""
    x = torch.randn(2, 3, 8)
    assert torch.equal(decode_activations(encode_activations(x, "act32"), "act32", (2, 3, 8)), x)
    assert (decode_activations(encode_activations(x, "act16"), "act16", (2, 3, 8)) - x).abs().max() < 1e-2
    with pytest.raises(MaliciousReply, match="shape"):
        decode_activations(encode_activations(x, "act32"), "act32", (2, 3, 9))
    with pytest.raises(MaliciousReply, match="dtype"):
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
