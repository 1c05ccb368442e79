"""Tests for moe/net/latency_probe.py: an expert served over real hivemind P2P on loopback gets its latency measured
through the ordinary client; peers that never answer, or whose id is not one, get None."""

from __future__ import annotations

import math

from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.latency_probe import probe_latency_ms
from moe.net.server import ExpertServer

from .conftest import tiny_lm

SILENT = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
"""A well-formed peer id nobody holds."""


def test_served_expert_has_a_latency_and_silent_or_bogus_peers_none(dht_pair):
    """The serving expert's median over three calls is a positive number of milliseconds; a peer id nobody holds and a
    string that is no peer id are None, and probing them raises nothing."""
    a, b = dht_pair
    with (
        ExpertServer(tiny_lm(0), dht=a) as server,
        SyncExpertClient(ClientConfig(forward_timeout_seconds=2.0), dht=b) as client,
    ):
        served = server.peer_id.to_base58()
        latency = probe_latency_ms(client, [served, SILENT, "not-a-peer-id", served], calls=3, timeout_seconds=2.0)
    assert set(latency) == {served, SILENT, "not-a-peer-id"}  # each peer probed once, duplicates folded
    assert latency[served] is not None and math.isfinite(latency[served]) and latency[served] > 0
    assert latency[SILENT] is None and latency["not-a-peer-id"] is None
