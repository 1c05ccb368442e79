"""Fuzz pass over everything a peer can send: mutated signed records, ledger heads, wire replies and requests,
receipts and published traffic samples.

Each mutation must be rejected with the module's own one-line error (or, where it happens to stay valid, accepted
as a well-formed value); no other exception may escape, so nothing a stranger sends can crash a node. Seeded and
bounded (a few hundred cases each), so the pass is the same on every run. The ledger's own records are fuzzed in
tests/ledger/test_crafted_records.py.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from moe.identity import Hotkey
from moe.net.expert_record import EXPERT_CONTEXT, ExpertRecord, validate_expert_payload
from moe.net.ledger_client import LedgerHead
from moe.net.receipt import ReceiptError, caller_digest, frame_reply, sign_receipt, unframe_reply
from moe.net.signed import MalformedRecord, SignedValue, open_record
from moe.net.wire import (
    DIST_FORMATS,
    MaliciousReply,
    WireError,
    decode_logp,
    decode_request,
    encode_logp,
    encode_request,
    validate_reply,
)
from moe.routing.traffic import PublishedCall, TrafficRecord, parse_index, parse_slot
from tests.net.test_ledger_client import head_payload as ledger_head_payload

ATTACKER = Hotkey.from_seed(b"z" * 32)
CASES = 300

JUNK = [
    None,
    True,
    -1,
    0,
    2**70,
    -(2**70),
    1e308,
    -0.0,
    0.5,
    "",
    "x" * 5000,
    "zz" * 32,
    [],
    [1, 2, 3],
    [[[[[]]]]],
    {},
    {"a": {"b": {"c": 1}}},
    ["12D3KooW"],
]


def mutate_payload(payload: dict, rng: random.Random) -> dict:
    """One structural mutation: a field set to junk, removed, added, or a nested value replaced."""
    out = copy.deepcopy(payload)
    key = rng.choice(sorted(out))
    op = rng.randrange(4)
    if op == 0:
        out[key] = copy.deepcopy(rng.choice(JUNK))
    elif op == 1:
        del out[key]
    elif op == 2:
        out[f"extra{rng.randrange(9)}"] = copy.deepcopy(rng.choice(JUNK))
    elif isinstance(out[key], dict) and out[key]:
        inner = rng.choice(sorted(out[key]))
        out[key][inner] = copy.deepcopy(rng.choice(JUNK))
    elif isinstance(out[key], list) and out[key]:
        out[key][rng.randrange(len(out[key]))] = copy.deepcopy(rng.choice(JUNK))
    else:
        out[key] = copy.deepcopy(rng.choice(JUNK))
    return out


def expert_payload() -> dict:
    record = ExpertRecord(
        uid=3,
        hotkey=ATTACKER.address,
        subnet="code",
        netuid=2,
        peer_id="12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
        model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=260, params=9000),
        train_step=5,
        claimed_eval_bpb=2.5,
        signature_centroid=[0.25] * 4,
        registered_at=7.0,
        expiration=1e9,
    )
    return record.payload()


def head_payload() -> dict:
    """A well-formed head whose only registered, staked and rewarded hotkey is the attacker's."""
    mine = {ATTACKER.address: [0, 7]}
    return ledger_head_payload(uids=mine, incentive={ATTACKER.address: 0.75}, stakes={ATTACKER.address: 1000}) | {
        "total_issuance": 0
    }


def test_mutated_expert_records_are_rejected_cleanly():
    """Expert records with a mutated field, signed by the attacker's own valid key, open as a valid record or raise
    MalformedRecord; the unmutated one opens."""
    rng = random.Random(0)
    base = expert_payload()
    assert (
        open_record(
            SignedValue.sign(ATTACKER, base, EXPERT_CONTEXT),
            EXPERT_CONTEXT,
            validate_expert_payload,
            lambda r: r.hotkey,
        ).uid
        == 3
    )
    rejected = 0
    for _ in range(CASES):
        payload = mutate_payload(base, rng)
        try:
            raw = SignedValue.sign(ATTACKER, payload, EXPERT_CONTEXT)
        except ValueError:
            continue  # not even signable (too large): nobody can store it
        try:
            record = open_record(raw, EXPERT_CONTEXT, validate_expert_payload, lambda r: r.hotkey)
        except MalformedRecord:
            rejected += 1
            continue
        assert isinstance(record, ExpertRecord) and record.hotkey == ATTACKER.address
    assert rejected > CASES // 2


def test_mutated_ledger_heads_are_rejected_cleanly():
    """Mutated head payloads parse into a LedgerHead or raise MalformedRecord, nothing else."""
    rng = random.Random(1)
    base = head_payload()
    try:
        LedgerHead.from_payload(ATTACKER.address, base)
    except MalformedRecord:
        base.pop("seed_sha256")  # a head without the seed pin, if this version has none
        LedgerHead.from_payload(ATTACKER.address, base)
    rejected = 0
    for _ in range(CASES):
        try:
            head = LedgerHead.from_payload(ATTACKER.address, mutate_payload(base, rng))
        except MalformedRecord:
            rejected += 1
            continue
        assert head.tempo >= 1 and head.block_interval > 0
    assert rejected > CASES // 2


def mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    """A byte-level mutation: flips, truncation, extension, a header rewritten, or a splice."""
    b = bytearray(raw)
    op = rng.randrange(5)
    if op == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b) + 1) :]
    elif op == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 3 and len(b) > 16:
        i = rng.randrange(min(len(b) - 4, 32))
        b[i : i + 4] = rng.randrange(2**32).to_bytes(4, "little")
    else:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(b[: rng.randrange(len(b) + 1)])
    return bytes(b)


@pytest.mark.parametrize("fmt", DIST_FORMATS)
def test_mutated_replies_are_rejected_cleanly(fmt):
    """Mutated replies decode and validate to a proper (B, T, 256) distribution or raise MaliciousReply."""
    rng = random.Random(2)
    logp = torch.log_softmax(torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(0)), -1)
    raw = encode_logp(logp, fmt)
    validate_reply(decode_logp(raw, fmt, (2, 5)), (2, 5), tol=5e-2)
    rejected = 0
    for _ in range(CASES):
        try:
            got = validate_reply(decode_logp(mutate_bytes(raw, rng), fmt, (2, 5)), (2, 5), tol=5e-2)
        except MaliciousReply:
            rejected += 1
            continue
        assert got.shape == (2, 5, 256) and bool(torch.isfinite(got).all())
    assert rejected > CASES // 3


def test_mutated_requests_are_rejected_cleanly():
    """Mutated requests decode to (inputs, format, topk) or raise WireError; never a bigger tensor than allowed."""
    rng = random.Random(3)
    raw = encode_request(torch.randint(0, 256, (2, 8), dtype=torch.uint8), "q8")
    rejected = 0
    for _ in range(CASES):
        try:
            x, fmt, topk = decode_request(mutate_bytes(raw, rng), max_bytes=4096)
        except WireError:
            rejected += 1
            continue
        assert x.numel() * x.element_size() <= 4096 and 0 <= topk < 256
    assert rejected > CASES // 3


def test_mutated_receipts_and_reply_frames_are_rejected_cleanly():
    """A mutated reply frame unframes or raises ReceiptError; a receipt that survives unframing verifies only while
    its signed bytes are untouched, and never passes `check` for a call it does not name."""
    rng = random.Random(4)
    reply = encode_logp(torch.log_softmax(torch.randn(2, 5, 256), -1), "q8")
    receipt = sign_receipt(ATTACKER, caller_digest(b"peer"), 1_700_000_000_000, 10, b"request", reply)
    framed = frame_reply(reply, receipt)
    rejected = 0
    for _ in range(CASES):
        mutated = mutate_bytes(framed, rng)
        try:
            body, got = unframe_reply(mutated)
            if got is not None:
                got.check(b"request", body)
        except ReceiptError:
            rejected += 1
            continue
        assert got is None or got.to_bytes() == receipt.to_bytes()  # a changed receipt never checks out
    assert rejected > CASES // 3


def test_mutated_traffic_slots_are_rejected_cleanly():
    """A published traffic slot (receipt id, request hex) parses only when it holds exactly the request its receipt
    names; every other mutation is a ReceiptError, never another exception."""
    rng = random.Random(5)
    receipt = sign_receipt(ATTACKER, caller_digest(b"router"), 1_700_000_000_000, 16, b"request bytes", b"reply")
    call = PublishedCall(ATTACKER.address, 0, receipt)
    good = {"receipt_id": receipt.receipt_id.hex(), "request": b"request bytes".hex()}
    assert parse_slot(call, good) == TrafficRecord(b"request bytes", receipt)
    assert parse_index(ATTACKER.address, {"receipts": [receipt.to_bytes().hex()]}) == [call]
    rejected = 0
    for _ in range(CASES):
        payload = mutate_payload(good, rng) if rng.random() < 0.5 else dict(good)
        if payload == good:
            k = rng.choice(sorted(good))
            payload[k] = mutate_bytes(bytes.fromhex(good[k]), rng).hex()
        try:
            got = parse_slot(call, payload)
        except ReceiptError:
            rejected += 1
            continue
        assert got == TrafficRecord(b"request bytes", receipt)  # what parses is the call itself (extra keys aside)
    assert rejected > CASES * 0.7
