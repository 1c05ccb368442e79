"""Commit–reveal of a validator's evaluation seed, and the deterministic draw of evaluation windows from it.

Experts must not know which windows a validator will score (or they could memorize them), and the validator must not
pick windows after seeing replies (or it could favour an expert). So before querying, the validator publishes a
signed commitment sha256(seed ‖ validator public key ‖ epoch); after scoring it reveals the seed, and anyone can check
the commitment and re-draw the windows with `draw_windows`. A reveal that does not match its commitment is rejected.
The draw uses a SHA-256 counter stream, not a library RNG, so it is identical on every machine and version.
A validator that draws from a secret pool (a salted part of the held-out splits, or private text; see
moe.poi.eval_source) also signs a commitment to that pool (`pool`), so it cannot change the pool after the fact.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from moe.identity import Hotkey, verify_signature

logger = logging.getLogger(__name__)

SEED_BYTES = 32
_DOMAIN = b"hivemoe/poi/seed-commit/v1"


class RevealError(ValueError):
    """A reveal that does not open its commitment, or a commitment whose signature does not verify."""


def new_seed() -> bytes:
    """32 bytes from the OS's secure random source."""
    return os.urandom(SEED_BYTES)


def seed_commitment(seed: bytes, validator_public: bytes, epoch: int) -> bytes:
    """sha256(seed ‖ validator public key ‖ epoch as 8 bytes big-endian); fixed lengths keep it unambiguous."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if len(validator_public) != 32:
        raise ValueError(f"validator public key must be 32 bytes, got {len(validator_public)}")
    if not 0 <= epoch < 1 << 64:
        raise ValueError(f"epoch must fit in 64 unsigned bits, got {epoch}")
    return hashlib.sha256(seed + validator_public + epoch.to_bytes(8, "big")).digest()


@dataclass(frozen=True)
class SeedCommit:
    """A validator's signed commitment to its evaluation seed for one epoch."""

    validator: str
    """Hex address (public key) of the validator's hotkey."""
    epoch: int
    """Epoch the seed is for."""
    commitment: bytes
    """sha256(seed ‖ validator public key ‖ epoch)."""
    signature: bytes
    """The validator's signature of `message()`."""
    pool: bytes = b""
    """sha256 of the secret the windows' pool is built from (a salt, private text); empty when the pool is public."""

    def message(self) -> bytes:
        signed = _DOMAIN + bytes.fromhex(self.validator) + self.epoch.to_bytes(8, "big") + self.commitment
        return signed + (b"pool" + self.pool if self.pool else b"")  # a public-pool commit signs what it always did

    def verify(self) -> bool:
        """True when the signature is the named validator's; malformed fields are simply False."""
        try:
            return verify_signature(bytes.fromhex(self.validator), self.message(), self.signature)
        except (ValueError, OverflowError):
            return False

    def to_json(self) -> dict:
        out = {
            "validator": self.validator,
            "epoch": self.epoch,
            "commitment": self.commitment.hex(),
            "signature": self.signature.hex(),
        }
        return {**out, "pool": self.pool.hex()} if self.pool else out

    @classmethod
    def from_json(cls, d: Mapping) -> SeedCommit:
        """Parse a record from the network; raises ValueError (one line) on a missing or mistyped field."""
        try:
            return cls(
                str(d["validator"]),
                int(d["epoch"]),
                bytes.fromhex(d["commitment"]),
                bytes.fromhex(d["signature"]),
                bytes.fromhex(d.get("pool", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed seed commitment: {e!r}") from None


def make_commit(hotkey: Hotkey, seed: bytes, epoch: int, pool: bytes = b"") -> SeedCommit:
    """Commit to `seed` for `epoch` under `hotkey` (and to a secret pool's hash `pool`, if any); publish the result
    before querying any expert."""
    c = seed_commitment(seed, hotkey.public_bytes, epoch)
    unsigned = SeedCommit(hotkey.address, epoch, c, b"", pool)
    return SeedCommit(hotkey.address, epoch, c, hotkey.sign(unsigned.message()), pool)


def check_reveal(commit: SeedCommit, seed: bytes) -> None:
    """Raise RevealError unless `commit` is validly signed and `seed` opens it."""
    who = f"validator {commit.validator[:16]} epoch {commit.epoch}"
    if not commit.verify():
        raise RevealError(f"seed commitment of {who} is not signed by that validator")
    try:
        expected = seed_commitment(seed, bytes.fromhex(commit.validator), commit.epoch)
    except ValueError as e:
        raise RevealError(f"revealed seed is malformed: {e}") from None
    if expected != commit.commitment:
        raise RevealError(f"revealed seed does not open the commitment of {who}")


class _Stream:
    """Uniform integers from SHA-256(seed ‖ counter) blocks; rejection sampling keeps them unbiased."""

    def __init__(self, seed: bytes):
        self.seed, self.counter, self.buf = seed, 0, b""

    def _bytes(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += hashlib.sha256(_DOMAIN + self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def below(self, n: int) -> int:
        """Uniform in [0, n)."""
        if n <= 0:
            raise ValueError("range must be positive")
        limit = (1 << 64) - (1 << 64) % n
        while True:
            x = int.from_bytes(self._bytes(8), "big")
            if x < limit:
                return x % n


def draw_windows(seed: bytes, split_sizes: Mapping[str, int], n_windows: int, seq_len: int) -> list[tuple[str, int]]:
    """`n_windows` (subnet, byte offset) pairs from `seed`, stratified: every subnet gets n_windows // k of them and
    n_windows % k subnets, chosen by the seed, one more; each offset is uniform over its split.

    Why stratified: drawn one by one, the subnets' counts vary a lot at a validator's few dozen windows (one epoch
    of a tiny run put 13, 13, 5 and 1 of 32 windows on four subnets), and a specialist whose domain an epoch barely
    samples looks like it adds nothing (its only math expert was judged redundant). `split_sizes` maps subnet name →
    bytes in its evaluation split; a window covers [offset, offset + seq_len), so pass seq_len + 1 if targets need
    one more byte. Subnets too small for one window are skipped (and logged); if none is large enough, ValueError.
    The result depends only on the arguments (subnets are taken in sorted order, then shuffled by the seed).
    """
    if n_windows < 0 or seq_len <= 0:
        raise ValueError(f"need n_windows ≥ 0 and seq_len > 0, got {n_windows}, {seq_len}")
    names = sorted(k for k, size in split_sizes.items() if int(size) >= seq_len)
    skipped = sorted(set(split_sizes) - set(names))
    if skipped:
        logger.warning("subnets %s have fewer than %d evaluation bytes; no windows drawn from them", skipped, seq_len)
    if not names:
        raise ValueError(f"no subnet has at least {seq_len} evaluation bytes")
    rng = _Stream(seed)
    for i in range(len(names) - 1, 0, -1):  # Fisher-Yates: which subnets get the extra windows, and the interleaving
        j = rng.below(i + 1)
        names[i], names[j] = names[j], names[i]
    out = []
    for i in range(n_windows):
        name = names[i % len(names)]
        out.append((name, rng.below(int(split_sizes[name]) - seq_len + 1)))
    return out


def check_windows(
    commit: SeedCommit,
    seed: bytes,
    split_sizes: Mapping[str, int],
    n_windows: int,
    seq_len: int,
    windows: list[tuple[str, int]],
) -> None:
    """Raise RevealError unless `seed` opens `commit` and `windows` are exactly the ones drawn from it."""
    check_reveal(commit, seed)
    expected = draw_windows(seed, split_sizes, n_windows, seq_len)
    if [(str(s), int(o)) for s, o in windows] != expected:
        raise RevealError(f"windows of validator {commit.validator[:16]} are not the draw of its revealed seed")
