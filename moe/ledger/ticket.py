"""Tickets: a consumer's signed, running acknowledgement of what it owes one expert, carried by every paid call.

Why a running total. A consumer cannot pay for a call before it has the reply (it would pay for calls never
answered), and an expert cannot wait for the ledger before answering. So each call n carries ticket n, in which the
consumer acknowledges everything the expert has answered before it: `owed`, the rao for all answered calls so far at
the prices they were made at, and `acked_bytes`, the bytes of those calls. The ticket also names call n's `price`, so
the expert knows the consumer agreed to it. The expert checks a ticket offline (signature, counter, price, owed
against its own tally, the consumer's escrow against the ledger head) and refuses the call when it does not hold;
an unanswered call is never acknowledged, so it is never paid. The last call of a session is acknowledged by a
closing ticket that carries no call.

Settlement needs only the latest ticket per consumer: the ledger pays `owed` minus what it already paid that expert
from that consumer, and keeps the counter, so every ticket settles at most once and a replayed or older one is
refused (moe.ledger.escrow). Both sides compute a call's cost the same way, in integers: `call_cost`.

Layout: 180 bytes plus a 64-byte Ed25519 signature by the consumer, under a domain tag; `chain` (sha256 of the
ledger's chain id) keeps a ticket from being settled on another ledger.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace

from moe.identity import Hotkey, verify_signature

MAGIC = b"hmt1"
_LAYOUT = struct.Struct(">4s32s32s32sQQQQ")
"""magic, chain digest, consumer public key, expert public key, counter, price, acked bytes, owed rao."""
SIGNATURE_BYTES = 64
TICKET_BYTES = _LAYOUT.size + SIGNATURE_BYTES
_DOMAIN = b"hivemoe/ledger/ticket/v1"
BYTES_PER_MBYTE = 1_000_000
U64_MAX = 2**64 - 1


class TicketError(ValueError):
    """A ticket that is malformed or not signed by the consumer it names."""


def chain_digest(chain_id: str) -> bytes:
    """What a ticket records of its ledger: the hash of the chain id."""
    return hashlib.sha256(b"hivemoe/chain/" + chain_id.encode()).digest()


def call_cost(positions: int, price_rao_per_mbyte: int) -> int:
    """Rao one call costs: the bytes whose distribution it served times the price per million bytes, rounded down
    (so neither side can disagree by a rao)."""
    return int(positions) * int(price_rao_per_mbyte) // BYTES_PER_MBYTE


@dataclass(frozen=True)
class Ticket:
    """Call `counter` from `consumer` to `expert`, acknowledging what the consumer owes for the calls before it."""

    chain: bytes
    consumer: bytes
    """The paying hotkey's 32-byte public key (its address is `.hex()`)."""
    expert: bytes
    counter: int
    """Strictly increasing per (consumer, expert); names the call the ticket comes with."""
    price: int
    """Rao per million bytes the consumer agrees to pay for this call; 0 for a closing ticket."""
    acked_bytes: int
    """Bytes of every call the consumer got an answer for before this one."""
    owed: int
    """Rao for those calls, each at the price it was made at: what settlement may pay in total."""
    signature: bytes = b""

    @property
    def consumer_address(self) -> str:
        return self.consumer.hex()

    @property
    def expert_address(self) -> str:
        return self.expert.hex()

    def body(self) -> bytes:
        return _LAYOUT.pack(
            MAGIC, self.chain, self.consumer, self.expert, self.counter, self.price, self.acked_bytes, self.owed
        )

    def to_bytes(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ticket:
        """Parse one ticket; raises TicketError (one line) on a wrong size or magic (`verify` checks the signature)."""
        if len(raw) != TICKET_BYTES:
            raise TicketError(f"a ticket is {TICKET_BYTES} bytes, got {len(raw)}")
        magic, chain, consumer, expert, counter, price, acked, owed = _LAYOUT.unpack_from(raw)
        if magic != MAGIC:
            raise TicketError(f"not a ticket (magic {magic!r})")
        return cls(chain, consumer, expert, counter, price, acked, owed, bytes(raw[_LAYOUT.size :]))

    @classmethod
    def from_hex(cls, text: object) -> Ticket:
        """A ticket from lowercase hex (as ledger records carry it); TicketError on anything else."""
        if type(text) is not str or len(text) != 2 * TICKET_BYTES:
            raise TicketError(f"a ticket is {2 * TICKET_BYTES} hex digits")
        try:
            return cls.from_bytes(bytes.fromhex(text))
        except ValueError as e:
            raise TicketError(f"ticket is not hex: {e}") from None

    def verify(self) -> bool:
        """True when the consumer the ticket names signed it."""
        return verify_signature(self.consumer, _DOMAIN + self.body(), self.signature)


def sign_ticket(
    consumer: Hotkey, chain: bytes, expert: str, counter: int, price: int, acked_bytes: int, owed: int
) -> Ticket:
    """Ticket `counter` from `consumer` to the expert at address `expert`; ValueError on a field out of range."""
    for name, v in (("counter", counter), ("price", price), ("acked_bytes", acked_bytes), ("owed", owed)):
        if not 0 <= int(v) <= U64_MAX:
            raise ValueError(f"ticket {name} must be in 0..2^64-1, got {v}")
    unsigned = Ticket(chain, bytes.fromhex(consumer.address), bytes.fromhex(expert), counter, price, acked_bytes, owed)
    return replace(unsigned, signature=consumer.sign(_DOMAIN + unsigned.body()))
