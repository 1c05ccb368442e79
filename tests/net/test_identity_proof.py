"""Tests for moe/net/identity_proof.py: a peer proves the hotkeys it serves by signing a fresh challenge, over a real
loopback P2P stream, and a record counts only for the one hotkey its peer proved."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.identity_proof import (
    MAX_PROOFS,
    ProvenIdentities,
    new_nonce,
    sign_identities,
    verify_identities,
)
from moe.net.server import ExpertServer, ServerConfig

from .conftest import tiny_lm

ALICE, BOB = Hotkey.from_seed(b"a" * 32), Hotkey.from_seed(b"b" * 32)
PEER, OTHER_PEER = b"\x00\x24" + b"p" * 36, b"\x00\x24" + b"q" * 36


def test_a_signed_challenge_proves_exactly_its_hotkeys():
    """The answer to a nonce proves its signers for that nonce and peer only."""
    nonce = new_nonce()
    proofs = sign_identities([ALICE, BOB], nonce, PEER)
    assert verify_identities(proofs, nonce, PEER) == {ALICE.address, BOB.address}
    assert verify_identities(proofs, new_nonce(), PEER) == set()  # a replayed answer to an older challenge
    assert verify_identities(proofs, nonce, OTHER_PEER) == set()  # an answer relayed from another peer


@pytest.mark.parametrize(
    "proofs",
    [
        None,
        "alice",
        [{"hotkey": ALICE.address}],
        [{"hotkey": ALICE.address, "signature": "zz"}],
        [{"hotkey": 5, "signature": "00" * 64}],
        [{"hotkey": ALICE.address, "signature": "00" * 64}],
        [["not", "a", "dict"]],
    ],
)
def test_malformed_proofs_prove_nothing(proofs):
    assert verify_identities(proofs, new_nonce(), PEER) == set()


def test_too_many_proofs_prove_nothing():
    """A reply with more than MAX_PROOFS entries is garbage, even if each entry verifies."""
    nonce = new_nonce()
    keys = [Hotkey.from_seed(bytes([i]) * 32) for i in range(MAX_PROOFS + 1)]
    assert verify_identities(sign_identities(keys, nonce, PEER), nonce, PEER) == set()


def test_a_malformed_nonce_gets_no_signature():
    assert sign_identities([ALICE], "not hex", PEER) == [] and sign_identities([ALICE], "ab", PEER) == []


def test_a_live_server_proves_the_hotkeys_it_serves_and_no_other():
    """Over a real P2P stream: nothing before prove_identity, then exactly the hotkeys it was given."""
    server = ExpertServer(tiny_lm(), ServerConfig(max_tokens=256)).start()
    client = SyncExpertClient(ClientConfig(), initial_peers=server.maddrs)
    try:
        peer = server.peer_id
        assert client.prove_identities([peer]) == {peer.to_base58(): set()}
        server.prove_identity(ALICE)
        server.prove_identity(ALICE)  # twice is once
        assert client.prove_identities([peer]) == {peer.to_base58(): {ALICE.address}}
        server.prove_identity(BOB)
        assert client.prove_identities([peer]) == {peer.to_base58(): {ALICE.address, BOB.address}}
    finally:
        client.shutdown()
        server.shutdown()


class Peers:
    """What each peer would prove, and how often each was asked (a real prover over a table)."""

    def __init__(self, table: dict[str, set[str]]):
        self.table, self.asked = table, []

    def __call__(self, peers: list[str]) -> dict[str, set[str]]:
        self.asked.extend(peers)
        return {p: self.table[p] for p in peers if p in self.table}  # peers not in the table did not answer


def test_one_hotkey_per_peer_and_each_peer_asked_once():
    """A peer proving one hotkey maps to it; one proving several, or none, maps to None; proven peers are not asked
    again before recheck_seconds, silent ones again after retry_seconds."""
    peers = Peers({"one": {ALICE.address}, "two": {ALICE.address, BOB.address}, "none": set()})
    ids = ProvenIdentities(peers, recheck_seconds=1e9, retry_seconds=0.0)
    got = ids.hotkey_of(["one", "two", "none", "dead"])
    assert got == {"one": ALICE.address, "two": None, "none": None, "dead": None}
    ids.hotkey_of(["one", "dead"])
    assert peers.asked.count("one") == 1 and peers.asked.count("dead") == 2
    claims = [("one", ALICE.address), ("one", BOB.address), ("two", ALICE.address), ("dead", BOB.address)]
    assert ids.impostors(claims) == {BOB.address, ALICE.address}  # BOB on one's peer, ALICE on a two-hotkey peer
    assert ids.impostors([("one", ALICE.address), ("dead", BOB.address), ("unasked", BOB.address)]) == set()
