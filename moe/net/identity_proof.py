"""Proof that a peer serves a hotkey: the binding between an expert record's hotkey and the libp2p peer it names.

A record is signed by its hotkey, but the peer id inside it is only a claim: anyone can publish a record naming a
victim's peer and look like it (or make the victim look like its copy). So on first contact a client sends the
peer a fresh nonce; the peer answers, over the libp2p stream (authenticated by the peer's own key, so the answer
comes from that peer id), with a signature by each hotkey it serves over (context, nonce, its peer id). A record
counts only when its peer proved its hotkey, and a peer proving more than one hotkey counts for none of them (one
server cannot collect several miners' rewards for the same work).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from moe.identity import Hotkey, verify_signature

logger = logging.getLogger(__name__)

CONTEXT = b"hivemoe-identity-v1\x00"
NONCE_BYTES = 32
MAX_PROOFS = 8
"""Most hotkey proofs a reply may carry (more is garbage: one peer proving several hotkeys counts for none)."""


def identity_message(nonce: bytes, peer_id: bytes) -> bytes:
    return CONTEXT + nonce + peer_id


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def sign_identities(hotkeys: Iterable[Hotkey], nonce_hex: str, peer_id: bytes) -> list[dict[str, str]]:
    """The server's answer to a challenge: [{"hotkey": address, "signature": hex}] for each hotkey it serves; empty
    for a malformed nonce."""
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        return []
    if len(nonce) != NONCE_BYTES:
        return []
    message = identity_message(nonce, peer_id)
    return [{"hotkey": hk.address, "signature": hk.sign(message).hex()} for hk in hotkeys]


def verify_identities(proofs: object, nonce_hex: str, peer_id: bytes) -> set[str]:
    """Hotkey addresses whose signature over (nonce, peer_id) verifies; anything malformed proves nothing."""
    if not isinstance(proofs, list) or len(proofs) > MAX_PROOFS:
        return set()
    message = identity_message(bytes.fromhex(nonce_hex), peer_id)
    proven = set()
    for p in proofs:
        if not isinstance(p, dict) or not isinstance(p.get("hotkey"), str) or not isinstance(p.get("signature"), str):
            continue
        try:
            public, signature = bytes.fromhex(p["hotkey"]), bytes.fromhex(p["signature"])
        except ValueError:
            continue
        if verify_signature(public, message, signature):
            proven.add(p["hotkey"])
    return proven


@dataclass
class ProvenIdentities:
    """What each peer proved, asked once and then again after `recheck_seconds` (`retry_seconds` after a failure)."""

    prove: Callable[[list[str]], dict[str, set[str]]]
    """Peer ids (base58) → the hotkeys each proved (an unreachable peer maps to an empty set)."""
    recheck_seconds: float = 300.0
    retry_seconds: float = 30.0
    _known: dict[str, tuple[set[str], float]] = field(default_factory=dict)

    def hotkey_of(self, peer_ids: Iterable[str]) -> dict[str, str | None]:
        """Peer id → the one hotkey it proved (None when it proved none or several), asking the peers not known."""
        now = time.monotonic()
        stale = sorted({p for p in peer_ids if self._stale(p, now)})
        if stale:
            answers = self.prove(stale)
            for peer in stale:
                hotkeys = set(answers.get(peer, set()))
                self._known[peer] = (hotkeys, now)
                if len(hotkeys) > 1:
                    logger.warning("peer %s proved %d hotkeys: none of its records count", peer[:16], len(hotkeys))
        return {p: self._single(p) for p in peer_ids}

    def impostors(self, claims: Iterable[tuple[str, str]]) -> set[str]:
        """Hotkeys of (peer id, hotkey) claims the peer answered against: it proved other hotkeys than this one alone
        (a peer not asked yet, or that proved nothing, accuses nobody: it may just be slow)."""
        out = set()
        for peer, hotkey in claims:
            proven = self._known.get(peer, (set(), 0.0))[0]
            if proven and proven != {hotkey}:
                out.add(hotkey)
        return out

    def _stale(self, peer: str, now: float) -> bool:
        if peer not in self._known:
            return True
        hotkeys, at = self._known[peer]
        return now - at > (self.recheck_seconds if len(hotkeys) == 1 else self.retry_seconds)

    def _single(self, peer: str) -> str | None:
        hotkeys = self._known.get(peer, (set(), 0.0))[0]
        return next(iter(hotkeys)) if len(hotkeys) == 1 else None
