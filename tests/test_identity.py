"""Tests for moe/identity.py: hotkeys sign, and only a hotkey's own signatures verify, whatever the key."""

from __future__ import annotations

import os

from moe.identity import Hotkey, verify_signature
from moe.ledger.chain import Ledger
from moe.ledger.genesis import GenesisConfig, LedgerConfig

NEUTRAL_POINT = bytes([1]) + bytes(31)
"""An Ed25519 public key of order 1: R = this point and S = 0 satisfy the verification equation for any message."""
UNIVERSAL_SIGNATURE = NEUTRAL_POINT + bytes(32)
TAO = 10**9


def test_a_hotkey_signature_verifies_only_for_its_key_and_message():
    key, other = Hotkey.from_seed(b"\x01" * 32), Hotkey.from_seed(b"\x02" * 32)
    message = os.urandom(100)
    signature = key.sign(message)
    assert verify_signature(key.public_bytes, message, signature)
    assert not verify_signature(key.public_bytes, message + b"x", signature)
    assert not verify_signature(other.public_bytes, message, signature)
    assert not verify_signature(key.public_bytes, message, signature[:63])
    assert not verify_signature(key.public_bytes[:31], message, signature)


def test_the_universal_signature_of_a_small_order_key_is_refused():
    """Under the neutral point as public key, (R = neutral, S = 0) passes the bare verification equation for every
    message: OpenSSL's Ed25519 accepts it, so anyone could sign anything for that address."""
    for message in (b"", b"transfer everything", os.urandom(300)):
        assert not verify_signature(NEUTRAL_POINT, message, UNIVERSAL_SIGNATURE)


def test_nobody_spends_what_was_sent_to_a_small_order_address(tmp_path):
    """TAO sent to the neutral point's address cannot be moved by a transfer carrying the universal signature."""
    victim = NEUTRAL_POINT.hex()
    thief = Hotkey.from_seed(b"\x03" * 32)
    cfg = LedgerConfig(tempo=4, max_uids=8, subnet_shares={1: 1.0})
    ledger = Ledger.open(tmp_path / "l.db", GenesisConfig(ledger=cfg, balances={victim: 100 * TAO}, timestamp=1.0))
    record = {"kind": "transfer", "src": victim, "dst": thief.address, "amount": 100 * TAO, "nonce": 0}
    record["signature"] = UNIVERSAL_SIGNATURE.hex()
    assert not ledger.submit(record)
    ledger.produce_block(2.0)
    assert ledger.state.balances.get(victim) == 100 * TAO and ledger.state.balances.get(thief.address, 0) == 0
    ledger.close()
