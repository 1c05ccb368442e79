"""Signed receipts of router traffic: an expert's signature over (request digest, reply digest).

An expert could answer validators honestly and the router (paying users) with something cheaper. The expert signs a
receipt with every reply; the router keeps a sample of requests, replies and receipts; a validator re-sends a sampled
request and compares its fresh reply with the recorded one (moe.poi.cheats.flag_router_mismatch). The signature stops
a router from framing an expert with a reply it never sent: a recorded reply must hash to the signed digest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from moe.identity import Hotkey, verify_signature

logger = logging.getLogger(__name__)

_DOMAIN = b"hivemoe/poi/receipt/v1"


def tensor_digest(t: torch.Tensor) -> bytes:
    """sha256 over dtype, shape and raw bytes: the same tensor always gives the same digest, any change another."""
    t = torch.as_tensor(t).detach().cpu().contiguous()
    header = f"{t.dtype}|{tuple(t.shape)}|".encode()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(header + raw).digest()


@dataclass(frozen=True)
class Receipt:
    """An expert's signed statement that it answered `request` with `reply` (both as sha256 digests)."""

    expert: str
    """Hex address (public key) of the expert's hotkey."""
    request: bytes
    """tensor_digest of the request's input bytes."""
    reply: bytes
    """tensor_digest of the reply tensor exactly as sent."""
    signature: bytes
    """The expert's signature of `message()`."""

    def message(self) -> bytes:
        return _DOMAIN + bytes.fromhex(self.expert) + self.request + self.reply

    def verify(self) -> bool:
        """True when the expert named in the receipt signed it; malformed fields are simply False."""
        if len(self.request) != 32 or len(self.reply) != 32:
            return False
        try:
            return verify_signature(bytes.fromhex(self.expert), self.message(), self.signature)
        except ValueError:
            return False

    def to_json(self) -> dict:
        return {
            "expert": self.expert,
            "request": self.request.hex(),
            "reply": self.reply.hex(),
            "sig": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> Receipt:
        """Parse a record from the network; raises ValueError (one line) on a missing or mistyped field."""
        try:
            request, reply = bytes.fromhex(d["request"]), bytes.fromhex(d["reply"])
            return cls(str(d["expert"]), request, reply, bytes.fromhex(d["sig"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed receipt: {e!r}") from None


def sign_receipt(hotkey: Hotkey, request: torch.Tensor, reply: torch.Tensor) -> Receipt:
    """The receipt an expert attaches to its reply."""
    unsigned = Receipt(hotkey.address, tensor_digest(request), tensor_digest(reply), b"")
    return Receipt(unsigned.expert, unsigned.request, unsigned.reply, hotkey.sign(unsigned.message()))
