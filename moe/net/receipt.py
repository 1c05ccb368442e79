"""Served-traffic receipts: an expert's signature over one reply, sent with the reply.

An expert could answer validators with its best model and paying callers (the router, consumers) with something
cheaper. Each reply therefore carries a receipt the serving hotkey signs: which request (sha256 of its exact bytes),
which reply (sha256 of the reply payload as sent), to whom (sha256 of the caller's libp2p peer id), when (DHT time in
milliseconds) and how much (positions served). A caller keeping a receipt with its request holds proof of what the
expert answered: a validator re-sending the request from another peer id and getting a different reply has caught
the expert answering callers differently, and the expert cannot deny the recorded reply (moe.poi.traffic_check).

Compact and replay-proof by construction: 208 bytes; binding the caller and the time makes every receipt name one
call, so a receipt cannot be presented for another caller's traffic, and a settlement (the marketplace) pays each
receipt once by its `receipt_id`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from moe.identity import Hotkey, verify_signature

MAGIC = b"hmr1"
_LAYOUT = struct.Struct(">4s32s32sQI32s32s")
"""magic, expert public key, caller digest, time (ms), positions, request digest, reply digest."""
SIGNATURE_BYTES = 64
RECEIPT_BYTES = _LAYOUT.size + SIGNATURE_BYTES
_DOMAIN = b"hivemoe/net/receipt/v1"


class ReceiptError(ValueError):
    """A receipt that is malformed, unsigned by its expert, or not for the call it came with."""


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def caller_digest(peer_id_bytes: bytes) -> bytes:
    """What a receipt records of its caller: the hash of the caller's libp2p peer id (its raw bytes)."""
    return digest(b"hivemoe/caller" + peer_id_bytes)


@dataclass(frozen=True)
class Receipt:
    """One reply, signed by the expert that sent it."""

    expert: bytes
    """The serving hotkey's 32-byte public key (its address is `.hex()`)."""
    caller: bytes
    """caller_digest of the peer the reply went to."""
    time_ms: int
    """DHT time of the reply, milliseconds."""
    positions: int
    """Positions (bytes or activation rows) the reply answers: what a settlement pays for."""
    request: bytes
    """sha256 of the request's exact bytes."""
    reply: bytes
    """sha256 of the reply payload exactly as sent."""
    signature: bytes = b""

    @property
    def address(self) -> str:
        return self.expert.hex()

    def body(self) -> bytes:
        return _LAYOUT.pack(MAGIC, self.expert, self.caller, self.time_ms, self.positions, self.request, self.reply)

    def to_bytes(self) -> bytes:
        return self.body() + self.signature

    @property
    def receipt_id(self) -> bytes:
        """sha256 of the whole signed receipt: what a router publishes and a settlement pays once."""
        return digest(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Receipt:
        """Parse one receipt; raises ReceiptError (one line) on a wrong size or magic (the signature is checked by
        `verify`, not here)."""
        if len(raw) != RECEIPT_BYTES:
            raise ReceiptError(f"a receipt is {RECEIPT_BYTES} bytes, got {len(raw)}")
        magic, expert, caller, time_ms, positions, request, reply = _LAYOUT.unpack_from(raw)
        if magic != MAGIC:
            raise ReceiptError(f"not a receipt (magic {magic!r})")
        return cls(expert, caller, time_ms, positions, request, reply, bytes(raw[_LAYOUT.size :]))

    def verify(self) -> bool:
        """True when the expert the receipt names signed it."""
        return verify_signature(self.expert, _DOMAIN + self.body(), self.signature)

    def check(self, request: bytes, reply: bytes, caller: bytes | None = None) -> None:
        """Raise ReceiptError unless this is the expert's signed receipt for exactly `request` → `reply` (and, when
        given, the caller digest `caller`)."""
        if not self.verify():
            raise ReceiptError(f"receipt not signed by the expert it names ({self.address[:16]})")
        if self.request != digest(request):
            raise ReceiptError("receipt names another request")
        if self.reply != digest(reply):
            raise ReceiptError("receipt names another reply")
        if caller is not None and self.caller != caller:
            raise ReceiptError("receipt names another caller")


def sign_receipt(hotkey: Hotkey, caller: bytes, time_ms: int, positions: int, request: bytes, reply: bytes) -> Receipt:
    """The receipt an expert sends with `reply` to `request` from the caller whose digest is `caller`."""
    unsigned = Receipt(
        bytes.fromhex(hotkey.address), caller, int(time_ms), int(positions), digest(request), digest(reply)
    )
    return Receipt(**{**unsigned.__dict__, "signature": hotkey.sign(_DOMAIN + unsigned.body())})


REPLY_PLAIN, REPLY_WITH_RECEIPT = 0, 1
"""First byte of every reply payload: whether a receipt follows before the reply itself."""
RECEIPT_OVERHEAD = 1 + RECEIPT_BYTES
"""Most bytes framing adds to a reply."""


def frame_reply(reply: bytes, receipt: Receipt | None) -> bytes:
    """The payload a server sends: a marker byte, the receipt if any, then the reply."""
    if receipt is None:
        return bytes([REPLY_PLAIN]) + reply
    return bytes([REPLY_WITH_RECEIPT]) + receipt.to_bytes() + reply


def unframe_reply(payload: bytes) -> tuple[bytes, Receipt | None]:
    """(reply, receipt or None) from a server's payload; raises ReceiptError on an unknown marker or a torn receipt."""
    if not payload:
        raise ReceiptError("empty reply")
    marker = payload[0]
    if marker == REPLY_PLAIN:
        return bytes(payload[1:]), None
    if marker != REPLY_WITH_RECEIPT:
        raise ReceiptError(f"unknown reply marker {marker}")
    return bytes(payload[RECEIPT_OVERHEAD:]), Receipt.from_bytes(bytes(payload[1:RECEIPT_OVERHEAD]))
