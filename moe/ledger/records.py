"""Ledger record kinds as plain JSON dicts, their canonical bytes, and signing.

Signed records (register, stake, transfer, weights, distill, commit, reveal, escrow, withdraw, settle) come from
peers and carry an Ed25519 signature by the hotkey that acts; derived records (genesis, emission, epoch, split) are
written by the ledger itself and re-derived by every replica and by `verify`. A record is a dict with a "kind" key;
canonical bytes are sorted-key compact JSON, so the same record hashes and signs identically everywhere. A malformed
or forged record is rejected, never repaired: `check_signed` refuses any signed record whose fields are not exactly
`SIGNED_FIELDS` with their exact JSON types before its signature or the state is looked at.

A commit carries only `commit_hash` of a validator's weights; the matching reveal, `reveal_period_epochs` later,
carries the weights and the salt (see state.py for the rules).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from moe.identity import Hotkey, verify_signature
from moe.ledger.emission import MAX_SUPPLY_RAO
from moe.ledger.escrow import MAX_CLAIMS
from moe.ledger.fields import (
    U64_MAX,
    FieldCheck,
    RecordError,
    address,
    check_object,
    describe,
    exact_int,
    hex_str,
    is_address,
    is_hex,
    signature,
    u16,
    u16_list,
    u64,
)
from moe.ledger.registration import registration_prefix, solve_pow
from moe.ledger.ticket import TICKET_BYTES
from moe.ledger.weights import WEIGHTS_FIELDS, WeightSubmission, canonical_json

logger = logging.getLogger(__name__)

RECORD_DOMAIN = "hivemoe/ledger/v1"
SIGNED_KINDS = (
    "register",
    "stake",
    "transfer",
    "weights",
    "distill",
    "commit",
    "reveal",
    "escrow",
    "withdraw",
    "settle",
)
DERIVED_KINDS = ("genesis", "emission", "epoch", "split")
COMMIT_DOMAIN = "hivemoe/commit/v1"
SALT_BYTES = (16, 64)
"""Smallest and largest salt of a weight commit, in bytes (at least 128 bits, so weights cannot be guessed)."""

Record = dict[str, Any]

MAX_DISTILL_CREDITS = 1024
"""Experts one distill record may credit."""
CREDIT_SCALE = 1000
"""A distill record's credits are gate-weighted positions in thousandths (integers, so every replica agrees)."""


def rao(value: object, where: str) -> int:
    """An amount of rao, either sign (each kind checks its own sign), at most the supply cap in size."""
    return exact_int(value, where, -MAX_SUPPLY_RAO, MAX_SUPPLY_RAO)


def _kind(value: object, where: str) -> str:
    return value  # already matched against SIGNED_FIELDS by check_signed


def _credits(value: object, where: str) -> list:
    """[[expert address, positions served, credit in thousandths of a position], ...], sorted by address, distinct,
    1..MAX_DISTILL_CREDITS long, each credit at most its positions (a gate weight is at most 1)."""
    if type(value) is not list or not 1 <= len(value) <= MAX_DISTILL_CREDITS:
        raise RecordError(f"{where} must be a list of 1..{MAX_DISTILL_CREDITS} credits, got {describe(value)}")
    previous = ""
    for i, item in enumerate(value):
        if type(item) is not list or len(item) != 3:
            raise RecordError(f"{where} item {i} must be [address, positions, credit], got {describe(item)}")
        expert = address(item[0], f"{where} item {i} address")
        if expert <= previous:
            raise RecordError(f"{where} must name each expert once, sorted by address")
        positions = exact_int(item[1], f"{where} item {i} positions", 1, U64_MAX // CREDIT_SCALE)
        exact_int(item[2], f"{where} item {i} credit", 0, positions * CREDIT_SCALE)
        previous = expert
    return value


def _claims(value: object, where: str) -> list:
    """[[ticket hex, bytes, amount], ...], 1..MAX_CLAIMS long, each ticket the right length of lowercase hex (the
    ticket itself, its signature and its limits are checked against the state: moe.ledger.escrow)."""
    if type(value) is not list or not 1 <= len(value) <= MAX_CLAIMS:
        raise RecordError(f"{where} must be a list of 1..{MAX_CLAIMS} claims, got {describe(value)}")
    for i, item in enumerate(value):
        if type(item) is not list or len(item) != 3:
            raise RecordError(f"{where} item {i} must be [ticket, bytes, amount], got {describe(item)}")
        hex_str(item[0], f"{where} item {i} ticket", 2 * TICKET_BYTES)
        u64(item[1], f"{where} item {i} bytes")
        u64(item[2], f"{where} item {i} amount")
    return value


def _salt(value: object, where: str) -> str:
    """A commit's salt: lowercase hex of SALT_BYTES[0]..SALT_BYTES[1] bytes."""
    lo, hi = SALT_BYTES
    if type(value) is not str or not 2 * lo <= len(value) <= 2 * hi or len(value) % 2 or not is_hex(value, len(value)):
        raise RecordError(f"{where} must be {lo}..{hi} bytes as lowercase hex, got {describe(value)}")
    return value


def _hash(value: object, where: str) -> str:
    return hex_str(value, where, 64)


SIGNED_FIELDS: dict[str, dict[str, FieldCheck]] = {
    "register": {"kind": _kind, "netuid": u16, "hotkey": address, "block_hash": address, "signature": signature},
    "stake": {"kind": _kind, "hotkey": address, "amount": rao, "nonce": u64, "signature": signature},
    "transfer": {"kind": _kind, "src": address, "dst": address, "amount": rao, "nonce": u64, "signature": signature},
    "weights": {"kind": _kind, **WEIGHTS_FIELDS},
    "distill": {"kind": _kind, "hotkey": address, "epoch": u64, "credits": _credits, "signature": signature},
    "commit": {"kind": _kind, "hotkey": address, "netuid": u16, "epoch": u64, "hash": _hash, "signature": signature},
    "escrow": {"kind": _kind, "hotkey": address, "amount": rao, "nonce": u64, "signature": signature},
    "withdraw": {"kind": _kind, "hotkey": address, "nonce": u64, "signature": signature},
    "settle": {"kind": _kind, "hotkey": address, "claims": _claims, "signature": signature},
    "reveal": {
        "kind": _kind,
        "hotkey": address,
        "netuid": u16,
        "epoch": u64,
        "uids": u16_list,
        "weights": u16_list,
        "salt": _salt,
        "signature": signature,
    },
}
"""Required fields of each signed kind and their checks."""
OPTIONAL_FIELDS: dict[str, dict[str, FieldCheck]] = {"register": {"nonce": u64, "burn": rao}}
"""Fields a kind may carry (a registration pays by exactly one of these; the state checks which)."""


def check_signed(record: object) -> str:
    """The kind of a well-formed signed record; raises RecordError naming the first wrong, missing or unknown field.

    Checks shapes and types only (flat, never recursing into values), not the signature or the state.
    """
    if type(record) is not dict:
        raise RecordError(f"record must be a JSON object, got {describe(record)}")
    kind = record.get("kind")
    if type(kind) is not str or kind not in SIGNED_FIELDS:
        raise RecordError(f"unknown or non-signed record kind {describe(kind)}")
    check_object(record, f"{kind} record", SIGNED_FIELDS[kind], OPTIONAL_FIELDS.get(kind))
    return kind


def signing_bytes(record: Record) -> bytes:
    """What the acting hotkey signs: the record minus its signature, under a domain tag."""
    if record.get("kind") == "weights":
        return _weights(record).signing_bytes()
    body = {k: v for k, v in record.items() if k != "signature"}
    return canonical_json({"domain": RECORD_DOMAIN, **body})


SIGNER_FIELD = {
    "register": "hotkey",
    "stake": "hotkey",
    "transfer": "src",
    "weights": "validator",
    "distill": "hotkey",
    "commit": "hotkey",
    "reveal": "hotkey",
    "escrow": "hotkey",
    "withdraw": "hotkey",
    "settle": "hotkey",
}
"""The field of each signed kind that names the hotkey whose signature it needs."""


def signer(record: Record) -> str:
    """Hex hotkey address expected to have signed `record`."""
    kind = record.get("kind")
    key = SIGNER_FIELD.get(kind) if type(kind) is str else None
    if key is None:
        raise RecordError(f"record kind {describe(kind)} is not signed")
    value = record.get(key)
    if not is_address(value):
        raise RecordError(f"{kind} record has no valid {key} address")
    return value


def signature_ok(record: object) -> bool:
    """True when the record's signature is its signer's; anything malformed is False."""
    try:
        check_signed(record)
        return verify_signature(
            bytes.fromhex(signer(record)), signing_bytes(record), bytes.fromhex(record["signature"])
        )
    except (ValueError, TypeError):  # RecordError is a ValueError
        return False


def _sign(hotkey: Hotkey, record: Record) -> Record:
    record["signature"] = hotkey.sign(signing_bytes(record)).hex()
    return record


def _weights(record: Record) -> WeightSubmission:
    try:
        return WeightSubmission.from_dict({k: v for k, v in record.items() if k != "kind"})
    except ValueError as e:
        raise RecordError(str(e)) from None


def weights_record(sub: WeightSubmission) -> Record:
    """The ledger record carrying a signed weight submission."""
    return {"kind": "weights", **sub.to_dict()}


def registration_record(
    hotkey: Hotkey, netuid: int, block_hash: str, *, nonce: int | None = None, burn: int | None = None
) -> Record:
    """A signed registration of `hotkey` on `netuid`, paid by a PoW `nonce` or by burning `burn` rao."""
    if (nonce is None) == (burn is None):
        raise ValueError("a registration needs exactly one of nonce (proof of work) or burn (rao)")
    rec: Record = {"kind": "register", "netuid": int(netuid), "hotkey": hotkey.address, "block_hash": block_hash}
    rec.update({"nonce": int(nonce)} if nonce is not None else {"burn": int(burn)})
    return _sign(hotkey, rec)


def pow_registration_record(
    hotkey: Hotkey, netuid: int, block_hash: str, difficulty: int, max_nonce: int = 10**7
) -> Record | None:
    """A registration of `hotkey` on `netuid` paid by proof of work against `block_hash`; None if no nonce up to
    `max_nonce` meets `difficulty` (logged)."""
    nonce = solve_pow(registration_prefix(netuid, block_hash, hotkey.public_bytes), difficulty, max_nonce=max_nonce)
    if nonce is None:
        logger.warning("no proof-of-work nonce below %d at difficulty %d", max_nonce, difficulty)
        return None
    return registration_record(hotkey, netuid, block_hash, nonce=nonce)


def stake_record(hotkey: Hotkey, amount: int, nonce: int) -> Record:
    """A signed move of `amount` rao from the hotkey's balance to its stake (negative `amount` unstakes)."""
    return _sign(hotkey, {"kind": "stake", "hotkey": hotkey.address, "amount": int(amount), "nonce": int(nonce)})


def transfer_record(hotkey: Hotkey, dst: str, amount: int, nonce: int) -> Record:
    """A signed transfer of `amount` rao from the hotkey's balance to address `dst`."""
    rec = {"kind": "transfer", "src": hotkey.address, "dst": dst, "amount": int(amount), "nonce": int(nonce)}
    return _sign(hotkey, rec)


def escrow_record(hotkey: Hotkey, amount: int, nonce: int) -> Record:
    """A signed escrow deposit of `amount` rao (negative: announce a withdrawal of that much; moe.ledger.escrow)."""
    return _sign(hotkey, {"kind": "escrow", "hotkey": hotkey.address, "amount": int(amount), "nonce": int(nonce)})


def withdraw_record(hotkey: Hotkey, nonce: int) -> Record:
    """A signed completion of the hotkey's announced escrow withdrawal."""
    return _sign(hotkey, {"kind": "withdraw", "hotkey": hotkey.address, "nonce": int(nonce)})


def settle_record(hotkey: Hotkey, claims: Sequence[tuple[bytes, int, int]]) -> Record:
    """An expert's signed claims, one per consumer: (ticket bytes, bytes, amount in rao), ordered by ticket."""
    rows = sorted([t.hex(), int(b), int(a)] for t, b, a in claims)
    return _sign(hotkey, {"kind": "settle", "hotkey": hotkey.address, "claims": rows})


def distill_record(hotkey: Hotkey, epoch: int, positions: dict[str, int], credit: dict[str, float]) -> Record:
    """A distiller's signed running totals at its `epoch`-th report: per expert, the positions it served and their
    gate-weighted credit (moe.distill.attribution)."""
    credits = [
        [k, int(positions[k]), min(round(credit[k] * CREDIT_SCALE), int(positions[k]) * CREDIT_SCALE)]
        for k in sorted(positions)
        if positions[k] > 0
    ]
    return _sign(hotkey, {"kind": "distill", "hotkey": hotkey.address, "epoch": int(epoch), "credits": credits})


def commit_hash(
    hotkey: str, netuid: int, epoch: int, uids: Sequence[int], weights: Sequence[int], salt: bytes | str
) -> str:
    """sha256 hex of the weights a validator commits to, bound to its hotkey, subnet and commit epoch.

    `salt` is bytes or their lowercase hex (as a reveal record carries it). Unlike subtensor's BlakeTwo256 over
    (hotkey, netuid, uids, values, salt, version_key), the commit epoch is hashed too, so a reveal names exactly one
    commit and an old commit's weights cannot be revealed against a newer commit.
    """
    body = {
        "domain": COMMIT_DOMAIN,
        "hotkey": hotkey,
        "netuid": int(netuid),
        "epoch": int(epoch),
        "uids": [int(u) for u in uids],
        "weights": [int(w) for w in weights],
        "salt": salt.hex() if isinstance(salt, bytes | bytearray) else salt,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


def new_salt() -> bytes:
    """A fresh random 32-byte salt for a weight commit."""
    return os.urandom(32)


def commit_record(
    hotkey: Hotkey, netuid: int, epoch: int, uids: Sequence[int], weights_u16: Sequence[int], salt: bytes
) -> Record:
    """A signed commit to u16 `weights_u16` on `uids` for `netuid` in `epoch`, hidden behind `salt` until revealed."""
    digest = commit_hash(hotkey.address, netuid, epoch, uids, weights_u16, salt)
    rec = {"kind": "commit", "hotkey": hotkey.address, "netuid": int(netuid), "epoch": int(epoch), "hash": digest}
    return _sign(hotkey, rec)


def reveal_record(
    hotkey: Hotkey, netuid: int, epoch: int, uids: Sequence[int], weights_u16: Sequence[int], salt: bytes
) -> Record:
    """A signed reveal of the weights committed in `epoch` (the commit's epoch, not the current one)."""
    rec = {
        "kind": "reveal",
        "hotkey": hotkey.address,
        "netuid": int(netuid),
        "epoch": int(epoch),
        "uids": [int(u) for u in uids],
        "weights": [int(w) for w in weights_u16],
        "salt": bytes(salt).hex(),
    }
    return _sign(hotkey, rec)


def parse_weights(record: Record) -> WeightSubmission:
    """The WeightSubmission inside a weights record that `check_signed` accepted (its fields are not checked again:
    `WEIGHTS_FIELDS` is part of that check)."""
    return WeightSubmission(
        netuid=record["netuid"],
        epoch=record["epoch"],
        validator=record["validator"],
        uids=list(record["uids"]),
        weights=list(record["weights"]),
        signature=record["signature"],
    )


def require_int(record: Record, key: str, lo: int | None = None) -> int:
    """record[key] as an int (bools refused), at least `lo`; raises RecordError naming the field otherwise."""
    kind = record.get("kind")
    return exact_int(record.get(key), f"{kind if type(kind) is str else describe(kind)} record field {key!r}", lo)
