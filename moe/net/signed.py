"""Signed values for the DHT: the generic `SignedValue` envelope and the `ExpertRecord` a miner announces.

Any peer can store anything under any DHT key, so every value we read is treated as hostile: `SignedValue.open`
and `ExpertRecord.from_dht_value` check size, framing, signature, JSON strictness and every field's type and range,
and raise `MalformedRecord` with a one-line reason. Callers log and skip such values; nothing here crashes on input.

Wire layout of a signed value (bytes): b"HMS1" | public key (32) | Ed25519 signature (64) | len(context) (1) |
context (ASCII) | canonical JSON payload. The signature covers everything after itself, so a value signed for one
purpose (an expert announcement) cannot be replayed as another (a validator's weights), and DHT-level validators
can check any hivemoe value without knowing its schema.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import base58
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer

from moe.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Hotkey, verify_signature

logger = logging.getLogger(__name__)

MAGIC = b"HMS1"
MAX_VALUE_BYTES = 64 * 1024
"""Largest signed value accepted; checked before any parsing so huge values cost nothing."""
MAX_CENTROID = 256
"""Most floats in an expert's domain signature centroid."""
EXPIRATION_SLACK = 1.0
"""Seconds a DHT entry may outlive the expiration its signed payload states (clock jitter between calls)."""
EXPERT_CONTEXT = "expert-record"
RECORD_VERSION = 1

_HEX_ADDRESS = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MODEL_KEYS = ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "params")
_MODEL_LIMITS = {
    "d_model": (1, 1 << 16),
    "n_layers": (1, 1024),
    "n_heads": (1, 1024),
    "d_ff": (1, 1 << 20),
    "vocab_size": (256, 1 << 20),
    "params": (1, 10**13),
}


class MalformedRecord(ValueError):
    """A DHT value that fails framing, signature or schema checks; the message is a one-line reason."""


def canonical_json(payload: dict) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace, ASCII); NaN/inf raise ValueError instead of encoding."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise MalformedRecord(f"non-finite number {name} in payload")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MalformedRecord("duplicate key in payload")
    return out


class SignedValue:
    """Sign a JSON payload with a hotkey, and open such a value back into (signer address, payload)."""

    @staticmethod
    def sign(hotkey: Hotkey, payload: dict, context: str = "value") -> bytes:
        """Raises ValueError if the payload cannot be encoded canonically (NaN, non-JSON types) or is too large."""
        ctx = context.encode()
        if not 0 < len(ctx) < 256:
            raise ValueError("context must be 1-255 bytes")
        signed = bytes([len(ctx)]) + ctx + canonical_json(payload)
        raw = MAGIC + hotkey.public_bytes + hotkey.sign(signed) + signed
        if len(raw) > MAX_VALUE_BYTES:
            raise ValueError(f"signed value is {len(raw)} bytes, above the {MAX_VALUE_BYTES}-byte limit")
        return raw

    @staticmethod
    def open(raw: Any, context: str = "value") -> tuple[str, dict]:
        """Return (hex address of the signer, payload); raise MalformedRecord on any defect or another context."""
        address, got, payload = SignedValue.open_any(raw)
        if got != context:
            raise MalformedRecord(f"value signed for context {got!r}, expected {context!r}")
        return address, payload

    @staticmethod
    def open_any(raw: Any) -> tuple[str, str, dict]:
        """Return (address, context, payload) whatever the context; raise MalformedRecord on any defect."""
        if not isinstance(raw, (bytes, bytearray)):
            raise MalformedRecord(f"signed value must be bytes, got {type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) > MAX_VALUE_BYTES:
            raise MalformedRecord(f"signed value is {len(raw)} bytes, above the {MAX_VALUE_BYTES}-byte limit")
        header = len(MAGIC) + PUBLIC_KEY_BYTES + SIGNATURE_BYTES
        if len(raw) <= header + 1 or not raw.startswith(MAGIC):
            raise MalformedRecord("not a hivemoe signed value (bad magic or truncated)")
        pub = raw[len(MAGIC) : len(MAGIC) + PUBLIC_KEY_BYTES]
        sig = raw[len(MAGIC) + PUBLIC_KEY_BYTES : header]
        signed = raw[header:]
        if not verify_signature(pub, signed, sig):
            raise MalformedRecord(f"bad signature by {pub.hex()[:16]}")
        ctx_len = signed[0]
        if ctx_len == 0 or len(signed) <= 1 + ctx_len:
            raise MalformedRecord("truncated context")
        try:
            context = signed[1 : 1 + ctx_len].decode("ascii")
        except UnicodeDecodeError:
            raise MalformedRecord("context is not ASCII") from None
        body = signed[1 + ctx_len :]
        try:
            payload = json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
        except MalformedRecord:
            raise
        except (ValueError, RecursionError) as e:
            raise MalformedRecord(f"payload is not valid JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(payload, dict):
            raise MalformedRecord(f"payload must be a JSON object, got {type(payload).__name__}")
        if canonical_json(payload) != body:
            raise MalformedRecord("payload is not in canonical form")
        return pub.hex(), context, payload


# field checks: each returns the value or raises MalformedRecord naming the field


def check_int(name: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise MalformedRecord(f"{name} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise MalformedRecord(f"{name}={v} outside [{lo}, {hi}]")
    return v


def check_float(name: str, v: Any, lo: float, hi: float) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise MalformedRecord(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise MalformedRecord(f"{name}={v} not finite or outside [{lo}, {hi}]")
    return v


def check_address(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _HEX_ADDRESS.fullmatch(v):
        raise MalformedRecord(f"{name} must be 64 lowercase hex characters")
    return v


def check_name(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise MalformedRecord(f"{name} must be 1-64 characters of [A-Za-z0-9_.-]")
    return v


def check_peer_id(name: str, v: Any) -> str:
    """A libp2p peer id in base58: an identity multihash (Ed25519, '12D3Koo...') or sha2-256 ('Qm...')."""
    if not isinstance(v, str) or not 32 <= len(v) <= 128:
        raise MalformedRecord(f"{name} must be a base58 peer id string")
    try:
        mh = base58.b58decode(v)
    except ValueError:
        raise MalformedRecord(f"{name} is not base58") from None
    identity = len(mh) >= 2 and mh[0] == 0x00 and mh[1] == len(mh) - 2
    sha256 = len(mh) == 34 and mh[0] == 0x12 and mh[1] == 0x20
    if not (identity or sha256):
        raise MalformedRecord(f"{name} is not a multihash peer id")
    return v


def _check_keys(name: str, d: dict, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in d]
    extra = sorted(k for k in d if k not in required)
    if missing or extra:
        raise MalformedRecord(f"{name}: missing keys {missing}, unknown keys {extra}")


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

    def payload(self) -> dict:
        d = asdict(self)
        d["signature_centroid"] = [float(x) for x in self.signature_centroid]  # e.g. numpy float32 from a tensor
        d["v"] = RECORD_VERSION
        return d

    def to_dht_value(self, hotkey: Hotkey) -> bytes:
        """Validate then sign; raises MalformedRecord if this record would be rejected by readers."""
        if hotkey.address != self.hotkey:
            raise MalformedRecord(f"record names hotkey {self.hotkey[:16]} but is signed by {hotkey.address[:16]}")
        validate_expert_payload(self.payload())
        return SignedValue.sign(hotkey, self.payload(), context=EXPERT_CONTEXT)

    @classmethod
    def from_dht_value(cls, raw: Any) -> ExpertRecord:
        """Open and validate everything; raises MalformedRecord with a one-line reason."""
        address, payload = SignedValue.open(raw, context=EXPERT_CONTEXT)
        record = validate_expert_payload(payload)
        if record.hotkey != address:
            raise MalformedRecord(f"record names hotkey {record.hotkey[:16]} but is signed by {address[:16]}")
        return record


def validate_expert_payload(d: Any) -> ExpertRecord:
    """Build an ExpertRecord from an untrusted dict, checking every field; raises MalformedRecord."""
    if not isinstance(d, dict):
        raise MalformedRecord("expert record must be a JSON object")
    _check_keys("expert record", d, (*ExpertRecord.__dataclass_fields__, "v"))
    if d["v"] != RECORD_VERSION:
        raise MalformedRecord(f"unsupported record version {d['v']!r}")
    model = d["model"]
    if not isinstance(model, dict):
        raise MalformedRecord("model must be a JSON object")
    _check_keys("model", model, _MODEL_KEYS)
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
    )


class SignedRecordValidator(RecordValidatorBase):
    """DHT-level guard installed on every hivemoe node: a value stored under a subkey that is a hotkey address must
    be a hivemoe signed value by that very hotkey, expiring no later than its signed `expiration` (when present).

    Honest nodes thus refuse to store or return forgeries, so an attacker cannot shadow a miner's announcement with
    a far-future garbage value under the miner's subkey. Readers still validate everything themselves.
    """

    def validate(self, record: DHTRecord) -> bool:
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
        except Exception:
            return True  # not a msgpack subkey: a regular (non-dictionary) value, not ours to judge
        if not isinstance(subkey, str) or not _HEX_ADDRESS.fullmatch(subkey):
            return True
        try:
            address, _, payload = SignedValue.open_any(MSGPackSerializer.loads(record.value))
        except Exception as e:
            logger.debug("refusing DHT value under %s: %s", subkey[:16], e)
            return False
        if address != subkey:
            logger.debug("refusing DHT value under %s signed by %s", subkey[:16], address[:16])
            return False
        expiration = payload.get("expiration")
        if isinstance(expiration, (int, float)) and record.expiration_time > expiration + EXPIRATION_SLACK:
            logger.debug("refusing DHT value under %s expiring after its signed expiration", subkey[:16])
            return False
        return True
