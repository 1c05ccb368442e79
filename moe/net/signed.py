"""The signed-value envelope every hivemoe DHT value travels in, and the field checks record schemas are built from.

Any peer can store anything under any DHT key, so every value we read is treated as hostile: `SignedValue.open`
checks size, framing, signature and JSON strictness, `open_record` adds a schema and the signer-is-the-named-owner
rule, and each `check_*` helper checks one field's type and range. All of them raise `MalformedRecord` with a
one-line reason; callers log and skip such values, so nothing here crashes on input.

Wire layout of a signed value (bytes): b"HMS1" | public key (32) | Ed25519 signature (64) | len(context) (1) |
context (ASCII) | canonical JSON payload. The signature covers everything after itself, so a value signed for one
purpose (an expert announcement) cannot be replayed as another (a validator's weights), and DHT-level validators
can check any hivemoe value without knowing its schema.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import base58

from moe.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Hotkey, verify_signature
from moe.strict_json import StrictJSONError, loads_strict

T = TypeVar("T")

MAGIC = b"HMS1"
MAX_VALUE_BYTES = 64 * 1024
"""Largest signed value accepted; checked before any parsing so huge values cost nothing."""

HEX_ADDRESS = re.compile(r"[0-9a-f]{64}")
"""A hotkey address: the hex of its 32-byte Ed25519 public key."""
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class MalformedRecord(ValueError):
    """A DHT value that fails framing, signature or schema checks; the message is a one-line reason."""


def canonical_json(payload: dict) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace, ASCII); NaN/inf raise ValueError instead of encoding."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


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
            payload = loads_strict(body)
        except StrictJSONError as e:
            raise MalformedRecord(f"payload: {e}") from None
        if not isinstance(payload, dict):
            raise MalformedRecord(f"payload must be a JSON object, got {type(payload).__name__}")
        try:
            canonical = canonical_json(payload)
        except (ValueError, RecursionError) as e:  # parsed but not re-encodable: refuse, never raise it to readers
            raise MalformedRecord(f"payload cannot be re-encoded: {str(e).splitlines()[0]}") from None
        if canonical != body:
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
    try:
        v = float(v)
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        raise MalformedRecord(f"{name} is an integer too large for a float") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise MalformedRecord(f"{name}={v} not finite or outside [{lo}, {hi}]")
    return v


def check_address(name: str, v: Any) -> str:
    if not isinstance(v, str) or not HEX_ADDRESS.fullmatch(v):
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


def check_keys(name: str, d: dict, required: tuple[str, ...]) -> None:
    """Exactly the `required` keys, no more, no fewer."""
    missing = [k for k in required if k not in d]
    extra = sorted(k for k in d if k not in required)
    if missing or extra:
        raise MalformedRecord(f"{name}: missing keys {missing}, unknown keys {extra}")


def sign_record(hotkey: Hotkey, payload: dict, context: str, owner: str, validate: Callable[[dict], Any]) -> bytes:
    """Validate `payload` as readers will, check that `owner` (the hotkey it names) is the signer, then sign it.

    Raises MalformedRecord if the record would be rejected by its readers, so a node never announces garbage.
    """
    if hotkey.address != owner:
        raise MalformedRecord(f"{context} names {owner[:16]} but would be signed by {hotkey.address[:16]}")
    validate(payload)
    return SignedValue.sign(hotkey, payload, context=context)


def open_record(raw: Any, context: str, validate: Callable[[dict], T], owner: Callable[[T], str]) -> T:
    """Open a signed value of `context`, build its record with `validate`, and require that the hotkey the record
    names as its owner is the one that signed it; raises MalformedRecord with a one-line reason."""
    address, payload = SignedValue.open(raw, context=context)
    record = validate(payload)
    if owner(record) != address:
        raise MalformedRecord(f"{context} names {owner(record)[:16]} but is signed by {address[:16]}")
    return record
