"""Validator weights as the chain stores them: u16 values per uid, and the signed record that carries them.

`to_u16` converts float scores exactly as the Bittensor SDK does before setting weights (max-upscale to 65535,
Python `round`, zeros dropped), so a validator's vector means the same here as on subtensor. A `WeightSubmission`
is signed by the validator's hotkey over deterministic JSON; `verify()` is False for any forged or altered field.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from moe.identity import Hotkey, verify_signature

logger = logging.getLogger(__name__)

U16_MAX = 65535
WEIGHTS_DOMAIN = "hivemoe/weights/v1"


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


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, no NaN): what gets hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


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
        return {
            "domain": WEIGHTS_DOMAIN,
            "netuid": int(self.netuid),
            "epoch": int(self.epoch),
            "validator": self.validator,
            "uids": [int(u) for u in self.uids],
            "weights": [int(w) for w in self.weights],
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
    def from_dict(cls, d: dict) -> WeightSubmission:
        """Parse a record dict; raises ValueError naming the problem on a missing or mistyped field."""
        try:
            if d.get("domain", WEIGHTS_DOMAIN) != WEIGHTS_DOMAIN:
                raise ValueError(f"wrong domain {d.get('domain')!r}")
            sub = cls(
                netuid=int(d["netuid"]),
                epoch=int(d["epoch"]),
                validator=str(d["validator"]),
                uids=[int(u) for u in d["uids"]],
                weights=[int(w) for w in d["weights"]],
                signature=str(d["signature"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed weight submission: {e}") from None
        return sub

    def validate_shape(self) -> None:
        """Raise ValueError unless uids are unique, in range, aligned with weights, and weights are u16."""
        if len(self.uids) != len(self.weights):
            raise ValueError(f"{len(self.uids)} uids but {len(self.weights)} weights")
        if len(set(self.uids)) != len(self.uids):
            raise ValueError("duplicate uids")
        if any(not 0 <= u <= U16_MAX for u in self.uids):
            raise ValueError(f"uid outside 0..{U16_MAX}")
        if any(not 0 <= w <= U16_MAX for w in self.weights):
            raise ValueError(f"weight outside 0..{U16_MAX}")
