"""Joining a subnet: proof-of-work seals, burn costs that follow demand, and the uid table with pruning.

Pure logic, no storage: the ledger calls these while applying registration records. A seal binds the subnet, a
recent block hash and the hotkey, so work done for one key or one chain position cannot be reused for another.
Difficulty and burn cost move toward `target` registrations per interval the subtensor way:
new = old * (registrations + target) / (2 * target), clamped. A full subnet prunes its lowest-scoring uid that is
past its immunity period (ties: the oldest registration); if every uid is immune the registration is refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from Crypto.Hash import keccak

logger = logging.getLogger(__name__)

REGISTRATION_DOMAIN = b"hivemoe/register/v1"
MAX_SEAL = 2**256 - 1


class RegistrationError(ValueError):
    """A registration the subnet cannot accept (already registered, full of immune uids, bad seal, low burn)."""


def keccak256(data: bytes) -> bytes:
    """Original Keccak-256 (as Ethereum and subtensor use), which differs from hashlib.sha3_256's padding."""
    return keccak.new(data=data, digest_bits=256).digest()


def pow_seal(prefix: bytes, nonce: int) -> bytes:
    """keccak-256(sha256(prefix + nonce as 8 little-endian bytes)); raises ValueError for a nonce outside u64."""
    if not 0 <= nonce < 2**64:
        raise ValueError(f"nonce must fit in 8 unsigned bytes, got {nonce}")
    return keccak256(hashlib.sha256(prefix + nonce.to_bytes(8, "little")).digest())


def registration_prefix(netuid: int, block_hash: bytes | str, hotkey_public_bytes: bytes) -> bytes:
    """Bytes a seal commits to: domain tag, netuid (u16 LE), a recent block hash (32 bytes) and the hotkey."""
    bh = bytes.fromhex(block_hash) if isinstance(block_hash, str) else bytes(block_hash)
    if len(bh) != 32:
        raise ValueError(f"block hash must be 32 bytes, got {len(bh)}")
    if len(hotkey_public_bytes) != 32:
        raise ValueError(f"hotkey public key must be 32 bytes, got {len(hotkey_public_bytes)}")
    if not 0 <= netuid <= 0xFFFF:
        raise ValueError(f"netuid must be in 0..65535, got {netuid}")
    return REGISTRATION_DOMAIN + netuid.to_bytes(2, "little") + bh + bytes(hotkey_public_bytes)


def seal_meets_difficulty(seal: bytes, difficulty: int) -> bool:
    """True when the seal, read as a little-endian integer, is <= (2**256 - 1) // difficulty."""
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    return int.from_bytes(seal, "little") <= MAX_SEAL // difficulty


def solve_pow(prefix: bytes, difficulty: int, start_nonce: int = 0, max_nonce: int = 2**64 - 1) -> int | None:
    """Smallest nonce in [start_nonce, max_nonce] whose seal meets `difficulty`, or None if none does."""
    limit = MAX_SEAL // difficulty
    for nonce in range(start_nonce, max_nonce + 1):
        if int.from_bytes(pow_seal(prefix, nonce), "little") <= limit:
            return nonce
    return None


def adjust_toward_target(value: int, registrations: int, target: int, lo: int, hi: int) -> int:
    """value * (registrations + target) // (2 * target), clamped to [lo, hi]: up under demand, down when idle."""
    if target < 1:
        raise ValueError(f"target registrations per interval must be >= 1, got {target}")
    return max(lo, min(hi, value * (registrations + target) // (2 * target)))


@dataclass(frozen=True)
class UidSlot:
    """One occupied uid (immutable, so copies of a uid table can share slots)."""

    hotkey: str
    """Hex hotkey address holding the uid."""
    registered_at: int
    """Block height of the registration; immunity and tie-breaks count from it."""
    score: float = 0.0
    """Pruning score from the latest epoch (incentive + dividends); the lowest non-immune uid is replaced."""


class SubnetRegistry:
    """The uid table of one subnet: at most `max_uids` hotkeys, new ones immune for `immunity_period` blocks."""

    def __init__(self, max_uids: int, immunity_period: int):
        if max_uids < 1:
            raise ValueError(f"max_uids must be >= 1, got {max_uids}")
        self.max_uids = max_uids
        self.immunity_period = immunity_period
        self.slots: dict[int, UidSlot] = {}
        self._by_hotkey: dict[str, int] = {}

    def uid_of(self, hotkey: str) -> int | None:
        return self._by_hotkey.get(hotkey)

    def hotkey_of(self, uid: int) -> str | None:
        slot = self.slots.get(uid)
        return slot.hotkey if slot else None

    def is_immune(self, uid: int, height: int) -> bool:
        return height - self.slots[uid].registered_at < self.immunity_period

    def prune_candidate(self, height: int) -> int | None:
        """Lowest-scoring uid past immunity (ties: oldest registration, then lowest uid); None if all immune."""
        free = [u for u in self.slots if not self.is_immune(u, height)]
        if not free:
            return None
        return min(free, key=lambda u: (self.slots[u].score, self.slots[u].registered_at, u))

    def check(self, hotkey: str, height: int) -> None:
        """Raise RegistrationError if `hotkey` could not register at `height`."""
        if hotkey in self._by_hotkey:
            raise RegistrationError(f"hotkey {hotkey[:16]} already holds uid {self._by_hotkey[hotkey]}")
        if len(self.slots) >= self.max_uids and self.prune_candidate(height) is None:
            raise RegistrationError(f"subnet full: all {self.max_uids} uids are within their immunity period")

    def register(self, hotkey: str, height: int) -> tuple[int, str | None]:
        """Give `hotkey` a uid: the lowest free one, else the pruned one; returns (uid, pruned hotkey or None)."""
        self.check(hotkey, height)
        pruned = None
        if len(self.slots) < self.max_uids:
            uid = next(u for u in range(self.max_uids) if u not in self.slots)
        else:
            uid = self.prune_candidate(height)
            pruned = self.slots[uid].hotkey
            del self._by_hotkey[pruned]
            logger.info("pruned uid %d (%s) for %s", uid, pruned[:16], hotkey[:16])
        self.slots[uid] = UidSlot(hotkey=hotkey, registered_at=height)
        self._by_hotkey[hotkey] = uid
        return uid, pruned

    def copy(self) -> SubnetRegistry:
        """An independent table; slots are shared, which is safe as they are replaced, never changed in place."""
        out = SubnetRegistry(self.max_uids, self.immunity_period)
        out.slots, out._by_hotkey = dict(self.slots), dict(self._by_hotkey)
        return out

    def set_scores(self, scores: dict[int, float]) -> None:
        for uid, score in scores.items():
            slot = self.slots.get(uid)
            if slot is not None:
                self.slots[uid] = UidSlot(slot.hotkey, slot.registered_at, float(score))
