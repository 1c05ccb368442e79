"""`ExpertRecord`: what a miner announces in the DHT about the expert it serves, and its field-by-field schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from moe.identity import Hotkey
from moe.ledger.emission import RAO_PER_TAO
from moe.net.signed import (
    MalformedRecord,
    check_address,
    check_float,
    check_int,
    check_keys,
    check_name,
    check_peer_id,
    open_record,
    sign_record,
)

EXPERT_CONTEXT = "expert-record"
RECORD_VERSION = 1
MAX_PRICE_TAO_PER_MBYTE = 1e6
"""Highest price a record may announce (a bound on what a ticket can be asked to pay)."""
MAX_CENTROID = 256
"""Most floats in an expert's domain signature centroid."""
_MODEL_KEYS = ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "params")
_MODEL_LIMITS = {
    "d_model": (1, 1 << 16),
    "n_layers": (1, 1024),
    "n_heads": (1, 1024),
    "d_ff": (1, 1 << 20),
    "vocab_size": (256, 1 << 20),
    "params": (1, 10**13),
}


@dataclass
class ExpertRecord:
    """What a miner announces about the expert it serves; signed by its hotkey, validated field by field on read."""

    uid: int
    """Ledger uid of the miner (0..65535)."""
    hotkey: str
    """Hex address of the hotkey that signs this record."""
    subnet: str
    """Subnet (domain) name, e.g. 'code'."""
    netuid: int
    """Numeric subnet id; the DHT key is derived from it."""
    peer_id: str
    """Base58 libp2p peer id serving the expert."""
    model: dict
    """Architecture summary: d_model, n_layers, n_heads, d_ff, vocab_size, params (positive ints)."""
    train_step: int = 0
    """Optimizer steps the served weights have seen."""
    claimed_eval_bpb: float | None = None
    """Self-reported held-out bits per byte; validators measure their own."""
    signature_centroid: list[float] = field(default_factory=list)
    """Small domain signature (mean embedding of the expert's data) the router may use as a prior."""
    registered_at: float = 0.0
    """Block number or time when the miner registered."""
    expiration: float = 0.0
    """DHT time after which the record is stale and must be ignored."""
    price_tao_per_mbyte: float = 0.0
    """What a call costs, in TAO per million bytes whose distribution it serves (0: free); a new record with a new
    price applies to calls made after it (moe.net.ticket_desk)."""

    def payload(self) -> dict:
        d = asdict(self)
        d["signature_centroid"] = [float(x) for x in self.signature_centroid]  # e.g. numpy float32 from a tensor
        d["v"] = RECORD_VERSION
        return d

    def to_dht_value(self, hotkey: Hotkey) -> bytes:
        """Validate then sign; raises MalformedRecord if this record would be rejected by readers."""
        return sign_record(hotkey, self.payload(), EXPERT_CONTEXT, self.hotkey, validate_expert_payload)

    @property
    def price_rao_per_mbyte(self) -> int:
        """The price as tickets carry it: whole rao per million bytes."""
        return round(self.price_tao_per_mbyte * RAO_PER_TAO)

    @classmethod
    def from_dht_value(cls, raw: Any) -> ExpertRecord:
        """Open and validate everything; raises MalformedRecord with a one-line reason."""
        return open_record(raw, EXPERT_CONTEXT, validate_expert_payload, lambda r: r.hotkey)


def validate_expert_payload(d: Any) -> ExpertRecord:
    """Build an ExpertRecord from an untrusted dict, checking every field; raises MalformedRecord."""
    if not isinstance(d, dict):
        raise MalformedRecord("expert record must be a JSON object")
    check_keys("expert record", d, (*ExpertRecord.__dataclass_fields__, "v"))
    if d["v"] != RECORD_VERSION:
        raise MalformedRecord(f"unsupported record version {d['v']!r}")
    model = d["model"]
    if not isinstance(model, dict):
        raise MalformedRecord("model must be a JSON object")
    check_keys("model", model, _MODEL_KEYS)
    model = {k: check_int(f"model.{k}", model[k], *_MODEL_LIMITS[k]) for k in _MODEL_KEYS}
    centroid = d["signature_centroid"]
    if not isinstance(centroid, list) or len(centroid) > MAX_CENTROID:
        raise MalformedRecord(f"signature_centroid must be a list of at most {MAX_CENTROID} numbers")
    centroid = [check_float("signature_centroid[]", x, -1e6, 1e6) for x in centroid]
    bpb = d["claimed_eval_bpb"]
    return ExpertRecord(
        uid=check_int("uid", d["uid"], 0, 65535),
        hotkey=check_address("hotkey", d["hotkey"]),
        subnet=check_name("subnet", d["subnet"]),
        netuid=check_int("netuid", d["netuid"], 0, 65535),
        peer_id=check_peer_id("peer_id", d["peer_id"]),
        model=model,
        train_step=check_int("train_step", d["train_step"], 0, (1 << 63) - 1),
        claimed_eval_bpb=None if bpb is None else check_float("claimed_eval_bpb", bpb, 0.0, 100.0),
        signature_centroid=centroid,
        registered_at=check_float("registered_at", d["registered_at"], 0.0, 1e13),
        expiration=check_float("expiration", d["expiration"], 0.0, 1e13),
        price_tao_per_mbyte=check_float("price_tao_per_mbyte", d["price_tao_per_mbyte"], 0.0, MAX_PRICE_TAO_PER_MBYTE),
    )
