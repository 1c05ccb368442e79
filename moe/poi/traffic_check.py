"""Catch two-faced experts: the ones answering validators with their best model and the router with something cheaper.

A validator's own queries show only what the expert answers validators. Routers publish a sample of their calls with
the experts' signed receipts (moe.routing.traffic); a validator re-sends some of those exact requests from its own
peer id and compares each reply with the reply digest the expert signed for the router. An expert serves a model that
gives the same bytes to the same request whoever asks (replies are deterministic functions of the request and the
weights, and the wire encoding is exact), so a different digest means it told the two callers different things. The
signature means a router cannot frame an expert: a receipt names the reply the expert itself sent.

What it does not catch: an expert that remembers every request it answered cheaply and answers a repeat the same way
(it then serves validators the cheap replies on those windows; it stays invisible only while validators cannot tell
which caller is a router, and costs it a store of every request). And an expert that changes weights between the
router's call and the re-query mismatches honestly: samples older than `max_age_seconds` are not re-sent.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from moe.config_checks import require_at_least, require_between, require_positive
from moe.net.receipt import digest
from moe.routing.traffic import PublishedCall, TrafficRecord

logger = logging.getLogger(__name__)

TWOFACED = "twofaced"
CLOCK_SKEW_SECONDS = 30.0
"""A receipt dated further ahead of the validator's clock than this is not re-sent (it cannot be a past call)."""


@dataclass
class TrafficCheckConfig:
    """How many router calls a validator re-sends each epoch, and when mismatches flag an expert."""

    per_expert: int = 4
    """Sampled router calls re-sent to each expert per epoch; 0 turns the check off."""
    max_age_seconds: float = 1800.0
    """Calls older than this are not re-sent (an honest expert may have updated its weights since)."""
    min_samples: int = 3
    """Re-sent calls an expert must have answered before it can be flagged."""
    max_mismatch_rate: float = 0.2
    """Flag an expert whose replies differ from its receipts on more than this share of re-sent calls."""

    def __post_init__(self):
        require_at_least(self, 0, ["per_expert"])
        require_at_least(self, 1, ["min_samples"])
        require_positive(self, ["max_age_seconds"])
        require_between(self, "max_mismatch_rate", 0.0, 1.0)


@dataclass(frozen=True)
class Replay:
    """One re-sent router call and what the expert answered the validator (None: no answer, the call is skipped)."""

    expert: str
    record: TrafficRecord
    fresh_reply: bytes | None

    def matches(self) -> bool | None:
        if self.fresh_reply is None:
            return None
        return digest(self.fresh_reply) == self.record.receipt.reply


def choose_calls(
    published: Sequence[PublishedCall],
    experts: Sequence[str],
    cfg: TrafficCheckConfig,
    now: float,
    rng: random.Random,
) -> dict[str, list[PublishedCall]]:
    """Expert address → up to `per_expert` distinct recent published calls to it, drawn at random (from every
    router's sample together: a validator need not trust any one router)."""
    wanted = set(experts)
    pool: dict[str, dict[bytes, PublishedCall]] = {}
    for call in published:
        age = now - call.receipt.time_ms / 1000.0
        if call.receipt.address in wanted and -CLOCK_SKEW_SECONDS <= age <= cfg.max_age_seconds:
            pool.setdefault(call.receipt.address, {})[call.receipt.receipt_id] = call
    out = {}
    for expert in experts:
        calls = sorted(pool.get(expert, {}).values(), key=lambda c: c.receipt.receipt_id)
        out[expert] = rng.sample(calls, min(cfg.per_expert, len(calls)))
    return out


def flag_two_faced(replays: Sequence[Replay], cfg: TrafficCheckConfig) -> dict[str, float]:
    """Expert address → mismatch rate, for experts whose replies differ from what they signed for a router on more
    than `max_mismatch_rate` of at least `min_samples` answered re-sent calls."""
    counts: dict[str, list[int]] = {}
    for r in replays:
        ok = r.matches()
        if ok is None:
            continue
        c = counts.setdefault(r.expert, [0, 0])
        c[0] += int(not ok)
        c[1] += 1
    flagged = {}
    for expert, (bad, n) in counts.items():
        if n >= cfg.min_samples and bad / n > cfg.max_mismatch_rate:
            flagged[expert] = bad / n
            logger.warning("expert %s answered a router differently on %d of %d re-sent calls", expert[:16], bad, n)
    return flagged
