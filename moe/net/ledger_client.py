"""A node's view of the ledger through the DHT: the host's signed head, registering, and publishing weights.

Keys (each value a `SignedValue` stored under a subkey equal to its signer's hotkey, so the DHT-level guard already
refuses values under someone else's name, of another key's context, or living longer than the key allows; the keys
and their maximum TTLs are in `moe.net.dht_records.KEY_RULES`):

- `hivemoe/ledger/head`: the host's signed head (height, hash, epoch, tempo, and every registered hotkey's uid,
  registration block and stake), re-published after every block; nodes read their uid and the epoch from it.
- `hivemoe/ledger/inbox`: a node's own signed ledger records (registration by proof of work, stake).
- `hivemoe/validators/weights`: a validator's signed `WeightSubmission`s for the current epoch.
- `hivemoe/validators/commits`: a validator's seed commitment (and, after scoring, the revealed seed).

The host that reads the inbox and weights and publishes the head is `moe.net.ledger_host.LedgerHost`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from moe.identity import Hotkey
from moe.ledger import WeightSubmission
from moe.ledger.records import pow_registration_record, stake_record
from moe.net.dht_records import (
    COMMIT_CONTEXT,
    COMMITS_KEY,
    HEAD_CONTEXT,
    HEAD_KEY,
    INBOX_CONTEXT,
    INBOX_KEY,
    WEIGHTS_CONTEXT,
    WEIGHTS_KEY,
    publish_signed,
    read_signed,
)
from moe.net.signed import MalformedRecord, check_float

logger = logging.getLogger(__name__)


@dataclass
class LedgerAccessConfig:
    """Whether and how a node uses the ledger that a host publishes through the DHT."""

    enabled: bool = False
    """Register on the ledger through the DHT (set by the local network, which hosts the ledger)."""
    host: str = ""
    """Hex hotkey address of the ledger host whose signed head nodes trust; empty trusts any signed head."""
    register_timeout_seconds: float = 60.0
    """Seconds to wait for the ledger to confirm a registration (and stake) before giving up."""


@dataclass
class LedgerHead:
    """What the ledger host last published: enough for nodes to register, weigh and name the epoch."""

    host: str
    """Hex address of the host that signed it."""
    height: int
    head_hash: str
    epoch: int
    """Epoch a weight submission must name to enter the next block."""
    tempo: int
    netuid: int
    """The ledger subnet the mixture's miners and validators register on."""
    difficulty: int
    """Current proof-of-work difficulty of `netuid`."""
    block_interval: float
    """Wall seconds between blocks."""
    uids: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Hotkey → (uid, block it registered at) on `netuid`."""
    stakes: dict[str, int] = field(default_factory=dict)
    """Hotkey → staked rao, for registered hotkeys with stake."""
    incentive: dict[str, float] = field(default_factory=dict)
    """Hotkey → its share of the miners' emission at the last epoch (Yuma consensus over the validators' weights;
    empty before the first epoch). What a router reads to learn whom the validators trust."""

    def epoch_progress(self) -> float:
        """Fraction of the current epoch's blocks already produced, in [0, 1)."""
        return ((self.height + 1) % self.tempo) / self.tempo

    @classmethod
    def from_payload(cls, host: str, d: dict) -> LedgerHead:
        """Raises MalformedRecord (one line) on a missing or mistyped field."""
        try:
            head = cls(
                host=host,
                height=int(d["height"]),
                head_hash=str(d["head_hash"]),
                epoch=int(d["epoch"]),
                tempo=int(d["tempo"]),
                netuid=int(d["netuid"]),
                difficulty=int(d["difficulty"]),
                block_interval=float(d["block_interval"]),
                uids={str(k): (int(v[0]), int(v[1])) for k, v in d["uids"].items()},
                stakes={str(k): int(v) for k, v in d["stakes"].items()},
                incentive={str(k): check_float(f"incentive of {k}", v, 0.0, 1.0) for k, v in d["incentive"].items()},
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise MalformedRecord(f"malformed ledger head: {e!r}") from None
        if head.tempo < 1:
            raise MalformedRecord(f"malformed ledger head: tempo={head.tempo} must be at least 1")
        return head


def read_head(dht, host: str | None = None) -> LedgerHead | None:
    """The newest valid head (by height), only `host`'s when given; None when there is none yet."""
    heads = []
    for address, payload in read_signed(dht, HEAD_KEY, HEAD_CONTEXT).items():
        if host and address != host:
            continue
        try:
            heads.append(LedgerHead.from_payload(address, payload))
        except MalformedRecord as e:
            logger.warning("ledger head by %s: %s", address[:16], e)
    return max(heads, key=lambda h: h.height) if heads else None


def register_on_ledger(
    dht, hotkey: Hotkey, stake_rao: int = 0, timeout: float = 60.0, host: str | None = None, ttl: float = 30.0
) -> tuple[int, int, LedgerHead]:
    """Register `hotkey` on the ledger's subnet by proof of work (and stake `stake_rao`) through the DHT inbox.

    Posts the node's own signed records, re-posting with a fresh block hash if they have not landed after a few
    blocks; returns (uid, registration block, head) once the head shows them. Raises TimeoutError after `timeout`.
    """
    deadline = time.monotonic() + timeout
    posted_at = -1.0
    while time.monotonic() < deadline:
        head = read_head(dht, host)
        if head is not None:
            me = head.uids.get(hotkey.address)
            if me is not None and head.stakes.get(hotkey.address, 0) >= stake_rao:
                logger.info("registered on ledger netuid %d as uid %d (block %d)", head.netuid, me[0], me[1])
                return me[0], me[1], head
            if posted_at < 0 or time.monotonic() - posted_at > max(2.0, 8 * head.block_interval):
                records = []
                if me is None:
                    record = pow_registration_record(hotkey, head.netuid, head.head_hash, head.difficulty)
                    records.extend([record] if record is not None else [])
                if stake_rao > 0 and head.stakes.get(hotkey.address, 0) < stake_rao:
                    records.append(stake_record(hotkey, stake_rao - head.stakes.get(hotkey.address, 0), nonce=0))
                publish_signed(dht, INBOX_KEY, hotkey, {"records": records}, INBOX_CONTEXT, ttl)
                posted_at = time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"hotkey {hotkey.address[:16]} not registered on the ledger within {timeout:.0f}s")


def publish_weights(dht, hotkey: Hotkey, submissions: list[WeightSubmission], ttl: float = 60.0) -> bool:
    return publish_signed(
        dht, WEIGHTS_KEY, hotkey, {"submissions": [s.to_dict() for s in submissions]}, WEIGHTS_CONTEXT, ttl
    )


def publish_commit(
    dht, hotkey: Hotkey, commit: dict, seed: bytes | None, ttl: float, flags: dict[str, list[str]] | None = None
) -> bool:
    """A validator's seed commitment (JSON of `moe.poi.commit.SeedCommit`), with the seed once it is revealed, and
    then the epoch's verdict on cheats (hotkey → reasons), which anyone can check by re-drawing the windows."""
    payload = {"commit": commit, "seed": None if seed is None else seed.hex(), "flags": flags or {}}
    return publish_signed(dht, COMMITS_KEY, hotkey, payload, COMMIT_CONTEXT, ttl)


def flagged_by_validators(dht, head: LedgerHead) -> dict[str, list[str]]:
    """Hotkey → reasons, for experts flagged in the revealed verdicts of validators holding more than half the stake
    of all staked validators that revealed one: one validator alone cannot exclude an honest expert."""
    votes: dict[str, float] = {}
    reasons: dict[str, set[str]] = {}
    total = 0.0
    for address, payload in read_signed(dht, COMMITS_KEY, COMMIT_CONTEXT).items():
        stake = head.stakes.get(address, 0)
        flags = payload.get("flags")
        if stake <= 0 or payload.get("seed") is None or not isinstance(flags, dict):
            continue
        total += stake
        for hotkey, why in flags.items():
            if isinstance(hotkey, str) and isinstance(why, list) and all(isinstance(w, str) for w in why):
                votes[hotkey] = votes.get(hotkey, 0.0) + stake
                reasons.setdefault(hotkey, set()).update(why)
    return {hk: sorted(reasons[hk]) for hk, v in votes.items() if v > total / 2}
