"""How long each expert takes to answer, measured by calling it: no record carries latency, and one an expert
published about itself could not be believed anyway.

Each expert gets `calls` forwards of a short random byte window through the ordinary client path (the same
validation every caller applies); the median of the successful ones is its latency as seen from here. An expert that
never answers gets None, and its failures back it off like any caller's.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)

PROBE_WINDOW_BYTES = 16
"""Bytes of each probe request: small, so the figure is the round trip more than the model."""


def probe_latency_ms(
    client, peer_ids: Iterable[str], calls: int = 3, timeout_seconds: float = 5.0, seed: int = 0
) -> dict[str, float | None]:
    """peer id (base58) → median milliseconds over `calls` forwards, None when none succeeded or the id is bad.

    `client` is a moe.net.client.SyncExpertClient. Never raises on what a peer does.
    """
    from hivemind.p2p import PeerID

    g = torch.Generator().manual_seed(seed)
    out: dict[str, float | None] = {}
    for peer in dict.fromkeys(peer_ids):
        try:
            pid = PeerID.from_base58(peer)
        except Exception:  # a record's peer id is the peer's word; a bad one is no answer
            out[peer] = None
            continue
        times = []
        for _ in range(max(0, calls)):
            x = torch.randint(0, 256, (1, PROBE_WINDOW_BYTES), generator=g)
            t0 = time.perf_counter()
            try:
                client.call(pid, x, timeout=timeout_seconds)
            except Exception as e:
                logger.debug("latency probe of %s failed: %r", peer, e)
                continue
            times.append((time.perf_counter() - t0) * 1000.0)
        out[peer] = statistics.median(times) if times else None
    return out
