"""Validator weights as the chain stores them: u16 values per uid, and the signed record that carries them.

`to_u16` converts float scores exactly as the Bittensor SDK does before setting weights (max-upscale to 65535,
Python `round`, zeros dropped), so a validator's vector means the same here as on subtensor. A `WeightSubmission`
is signed by the validator's hotkey over deterministic JSON; `verify()` is False for any forged or altered field.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from moe.identity import Hotkey, verify_signature
from moe.ledger.fields import RecordError, address, check_object, describe, signature, u16, u16_list, u64

logger = logging.getLogger(__name__)

U16_MAX = 65535
_PLAIN_INT = {int}
WEIGHTS_DOMAIN = "hivemoe/weights/v1"


def _domain(value: object, where: str) -> str:
    if type(value) is not str or value != WEIGHTS_DOMAIN:
        raise RecordError(f"{where} must be {WEIGHTS_DOMAIN!r}, got {describe(value)}")
    return value


WEIGHTS_FIELDS = {
    "domain": _domain,
    "netuid": u16,
    "epoch": u64,
    "validator": address,
    "uids": u16_list,
    "weights": u16_list,
    "signature": signature,
}
"""Every field of a submission as JSON, each of its exact type: no missing, extra, float, bool or string ints."""


def to_u16(uids: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[int]]:
    """(uids, u16 weights) with the largest weight at 65535 and zeros dropped; all-zero gives ([], []).

    Raises ValueError on mismatched lengths, a non-finite or negative weight, or a uid outside 0..65535.
    """
    uids = [int(u) for u in uids]
    ws = [float(w) for w in weights]
    if len(uids) != len(ws):
        raise ValueError(f"uids and weights must have the same length, got {len(uids)} and {len(ws)}")
    if any(not math.isfinite(w) for w in ws):
        raise ValueError("weights must be finite")
    if any(w < 0 for w in ws):
        raise ValueError("weights must be non-negative")
    if any(not 0 <= u <= U16_MAX for u in uids):
        raise ValueError(f"uids must be in 0..{U16_MAX}")
    if sum(ws) == 0:
        return [], []
    top = max(ws)
    out_uids, out_vals = [], []
    for u, w in zip(uids, ws, strict=True):
        v = round(w / top * U16_MAX)
        if v != 0:
            out_uids.append(u)
            out_vals.append(v)
    return out_uids, out_vals


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
"""One encoder for every call: `json.dumps` with these options would build a new one each time."""


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, no NaN): what gets hashed and signed."""
    return _CANONICAL.encode(obj).encode()


@dataclass
class WeightSubmission:
    """One validator's weights for one subnet and epoch, signed by its hotkey."""

    netuid: int
    """Subnet the weights are for."""
    epoch: int
    """Epoch number the weights are meant for; the ledger rejects other epochs as stale."""
    validator: str
    """Hex hotkey address of the validator (its Ed25519 public key)."""
    uids: list[int]
    """Miner uids, as returned by `to_u16`."""
    weights: list[int]
    """u16 weights aligned with `uids`."""
    signature: str = field(default="")
    """Hex Ed25519 signature of `signing_bytes()` by `validator`."""

    def body(self) -> dict:
        """The signed fields as JSON; raises TypeError for a float, bool or string where an int belongs."""
        if type(self.validator) is not str:
            raise TypeError(f"validator must be a hex address, got {type(self.validator).__name__}")
        return {
            "domain": WEIGHTS_DOMAIN,
            "netuid": _as_int(self.netuid),
            "epoch": _as_int(self.epoch),
            "validator": self.validator,
            "uids": _as_int_list(self.uids),
            "weights": _as_int_list(self.weights),
        }

    def signing_bytes(self) -> bytes:
        return canonical_json(self.body())

    @classmethod
    def create(
        cls, hotkey: Hotkey, netuid: int, epoch: int, uids: Sequence[int], weights: Sequence[float]
    ) -> WeightSubmission:
        """Normalize float `weights` with `to_u16` and sign them with `hotkey`."""
        u, w = to_u16(uids, weights)
        sub = cls(netuid=netuid, epoch=epoch, validator=hotkey.address, uids=u, weights=w)
        sub.signature = hotkey.sign(sub.signing_bytes()).hex()
        return sub

    def verify(self) -> bool:
        """True when the signature is the validator's over these exact fields; malformed fields give False."""
        try:
            return verify_signature(bytes.fromhex(self.validator), self.signing_bytes(), bytes.fromhex(self.signature))
        except (ValueError, TypeError):
            return False

    def to_dict(self) -> dict:
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_dict(cls, d: object) -> WeightSubmission:
        """Parse a submission as JSON (`WEIGHTS_FIELDS`, nothing more or less); raises ValueError (a RecordError)
        naming a missing, unknown or mistyped field, e.g. a float epoch or a uid list given as a string."""
        check_object(d, "malformed weight submission", WEIGHTS_FIELDS)
        kwargs = {k: v for k, v in d.items() if k != "domain"}
        return cls(**{**kwargs, "uids": list(d["uids"]), "weights": list(d["weights"])})

    def validate_shape(self) -> None:
        """Raise ValueError unless uids are unique, in range, aligned with weights, and weights are u16."""
        if len(self.uids) != len(self.weights):
            raise ValueError(f"{len(self.uids)} uids but {len(self.weights)} weights")
        if len(set(self.uids)) != len(self.uids):
            raise ValueError("duplicate uids")
        if self.uids and (min(self.uids) < 0 or max(self.uids) > U16_MAX):
            raise ValueError(f"uid outside 0..{U16_MAX}")
        if self.weights and (min(self.weights) < 0 or max(self.weights) > U16_MAX):
            raise ValueError(f"weight outside 0..{U16_MAX}")


def _as_int(x: object) -> int:
    """x as a Python int: ints and numpy integers pass; bools, floats and strings raise TypeError."""
    if isinstance(x, bool):
        raise TypeError("a bool is not an integer here")
    return operator.index(x)


def _as_int_list(xs: object) -> list[int]:
    if not isinstance(xs, list | tuple):
        raise TypeError(f"expected a list of integers, got {type(xs).__name__}")
    if set(map(type, xs)) <= _PLAIN_INT:  # the common case, checked in C
        return list(xs)
    return [_as_int(x) for x in xs]
