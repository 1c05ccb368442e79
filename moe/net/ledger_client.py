"""A node's view of the ledger through the DHT: the host's signed head, registering, and publishing weights.

Keys (each value a `SignedValue` stored under a subkey equal to its signer's hotkey, so the DHT-level guard already
refuses values under someone else's name, of another key's context, or living longer than the key allows; the keys
and their maximum TTLs are in `moe.net.dht_records.KEY_RULES`):

- `hivemoe/ledger/head`: the host's signed head (height, hash, epoch, tempo, each subnet's uids with their
  registration block, incentive, emission share and commit-reveal rule, every staked hotkey's stake, and the sha256
  of the network's seed), re-published after every block; nodes read their uids, the epoch and the seed they may
  load from it. Anyone can sign a head, so a node reads only the head of
  the host whose key it was given (`LedgerAccessConfig.host`), and checks every field's type and range.
- `hivemoe/ledger/inbox`: a node's own signed ledger records (registration by proof of work, stake, a validator's
  weight commits and reveals).
- `hivemoe/validators/weights`: a validator's signed `WeightSubmission`s for the current epoch.
- `hivemoe/validators/commits`: a validator's seed commitment (and, after scoring, the revealed seed).

The host that reads the inbox and weights and publishes the head is `moe.net.ledger_host.LedgerHost`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from moe.identity import Hotkey
from moe.ledger import WeightSubmission
from moe.ledger.fields import U16_MAX, U64_MAX
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
from moe.net.signed import MalformedRecord, check_address, check_float, check_int, check_keys

logger = logging.getLogger(__name__)

MAX_BLOCK_INTERVAL = 86400.0
"""Longest block interval (seconds) a head may announce; nodes wait a few blocks at a time."""


@dataclass
class LedgerAccessConfig:
    """Whether and how a node uses the ledger that a host publishes through the DHT."""

    enabled: bool = False
    """Register on the ledger through the DHT (set by the local network, which hosts the ledger)."""
    host: str = ""
    """Hex hotkey address of the ledger host, the only signer whose head the node reads; required when enabled (any
    key can sign a head, so trusting the highest one would let a forger rewrite uids, stakes and the seed)."""
    register_timeout_seconds: float = 60.0
    """Seconds to wait for the ledger to confirm a registration (and stake) before giving up."""

    def __post_init__(self):
        if self.enabled:
            try:
                check_address("ledger.host", self.host)
            except MalformedRecord as e:
                raise ValueError(f"{e}: ledger.enabled needs the ledger host's hotkey address") from None


@dataclass
class SubnetHead:
    """One ledger subnet as the head shows it."""

    difficulty: int
    """Current proof-of-work difficulty of a registration on it."""
    uids: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Hotkey → (uid, block it registered at)."""
    incentive: dict[str, float] = field(default_factory=dict)
    """Hotkey → its share of the subnet's miner emission at the last epoch (Yuma consensus over the validators'
    weights; empty before the first epoch). What a router reads to learn whom the validators trust."""
    emission_share: float = 0.0
    """The subnet's current share of each block's emission."""
    commit_reveal: bool = False
    """Validators commit a hash of their weights and reveal them `reveal_period_epochs` later."""
    reveal_period_epochs: int = 1
    """Epochs between a weights commit and its reveal."""

    @classmethod
    def from_payload(cls, netuid: int, d) -> SubnetHead:
        where = f"subnet {netuid}"
        if not isinstance(d, dict):
            raise MalformedRecord(f"{where} must be a mapping")
        check_keys(where, d, SUBNET_HEAD_FIELDS)
        if not isinstance(d["commit_reveal"], bool):
            raise MalformedRecord(f"{where} commit_reveal must be a bool")
        return cls(
            difficulty=check_int(f"{where} difficulty", d["difficulty"], 1, U64_MAX),
            uids=_by_hotkey(f"{where} uids", d["uids"], _check_registration),
            incentive=_by_hotkey(f"{where} incentive", d["incentive"], lambda n, v: check_float(n, v, 0.0, 1.0)),
            emission_share=check_float(f"{where} emission_share", d["emission_share"], 0.0, 1.0),
            commit_reveal=d["commit_reveal"],
            reveal_period_epochs=check_int(f"{where} reveal_period_epochs", d["reveal_period_epochs"], 1, U16_MAX),
        )


SUBNET_HEAD_FIELDS = tuple(SubnetHead.__dataclass_fields__)
MAX_HEAD_SUBNETS = 64
"""Most subnets a head may list (a node walks all of them)."""


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
    block_interval: float
    """Wall seconds between blocks."""
    subnets: dict[int, SubnetHead] = field(default_factory=dict)
    """Netuid → that ledger subnet's uids, incentive and rules (each domain is its own subnet)."""
    stakes: dict[str, int] = field(default_factory=dict)
    """Hotkey → staked rao, for registered hotkeys with stake."""
    seed_sha256: str | None = None
    """Hex sha256 of the network's seed, the only seed a node may load; None until the host has learned it."""
    total_issuance: int = 0
    """Rao issued by the chain so far (what `hivemoe status` shows as issuance)."""
    chain: str = ""
    """Hex chain digest (moe.ledger.ticket.chain_digest) every ticket on this ledger names."""
    escrow: dict[str, int] = field(default_factory=dict)
    """Consumer -> rao of its escrow an expert may count on (not being withdrawn; moe.ledger.escrow)."""

    def epoch_progress(self) -> float:
        """Fraction of the current epoch's blocks already produced, in [0, 1)."""
        return ((self.height + 1) % self.tempo) / self.tempo

    def uid_on(self, netuid: int, hotkey: str) -> tuple[int, int] | None:
        """(uid, registration block) of `hotkey` on `netuid`, or None."""
        sub = self.subnets.get(netuid)
        return None if sub is None else sub.uids.get(hotkey)

    def registered(self) -> set[str]:
        """Every hotkey holding a uid on some subnet."""
        return {hk for sub in self.subnets.values() for hk in sub.uids}

    def incentive(self) -> dict[str, float]:
        """Hotkey → its incentive on the subnet where it earns most (a miner serves one subnet)."""
        out: dict[str, float] = {}
        for sub in self.subnets.values():
            for hk, v in sub.incentive.items():
                out[hk] = max(out.get(hk, 0.0), v)
        return out

    @classmethod
    def from_payload(cls, host: str, d: dict) -> LedgerHead:
        """Raises MalformedRecord (one line) on a missing, unknown, mistyped or out-of-range field: ints are ints
        (never bools or floats), counts are non-negative, tempo and difficulty at least 1, the block interval
        finite and positive (nodes sleep on it), and every hotkey an address."""
        try:
            check_keys("ledger head", {k: v for k, v in d.items() if k != "expiration"}, HEAD_FIELDS)
            return cls(
                host=host,
                height=check_int("height", d["height"], 0, U64_MAX),
                head_hash=check_address("head_hash", d["head_hash"]),
                epoch=check_int("epoch", d["epoch"], 0, U64_MAX),
                tempo=check_int("tempo", d["tempo"], 1, U64_MAX),
                block_interval=_check_block_interval(d["block_interval"]),
                subnets=_subnets(d["subnets"]),
                stakes=_by_hotkey("stakes", d["stakes"], lambda name, v: check_int(name, v, 0, U64_MAX)),
                seed_sha256=None if d["seed_sha256"] is None else check_address("seed_sha256", d["seed_sha256"]),
                total_issuance=check_int("total_issuance", d["total_issuance"], 0, U64_MAX),
                chain=check_address("chain", d["chain"]),
                escrow=_by_hotkey("escrow", d["escrow"], lambda name, v: check_int(name, v, 0, U64_MAX)),
            )
        except (MalformedRecord, AttributeError, TypeError) as e:  # AttributeError, TypeError: `d` is no dict
            raise MalformedRecord(f"malformed ledger head: {e}") from None


HEAD_FIELDS = tuple(f for f in LedgerHead.__dataclass_fields__ if f != "host")
"""The keys of a head's payload, exactly, besides the `expiration` every signed DHT value carries (checked by the
DHT guard, `moe.net.dht_records`); its signer is the host."""


def _subnets(d) -> dict[int, SubnetHead]:
    """{netuid: SubnetHead} from the head's "subnets" mapping, keyed by decimal netuid strings (JSON keys)."""
    if not isinstance(d, dict) or len(d) > MAX_HEAD_SUBNETS:
        raise MalformedRecord(f"subnets must map at most {MAX_HEAD_SUBNETS} netuids to subnet heads")
    out = {}
    for key, value in d.items():
        if not isinstance(key, str) or not key.isdigit() or key != str(int(key)) or int(key) > U16_MAX:
            raise MalformedRecord(f"subnets key {key!r} is not a netuid")
        out[int(key)] = SubnetHead.from_payload(int(key), value)
    return out


def _check_block_interval(v) -> float:
    v = check_float("block_interval", v, 0.0, MAX_BLOCK_INTERVAL)
    if v <= 0.0:
        raise MalformedRecord(f"block_interval={v} must be positive")
    return v


def _check_registration(name: str, v) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise MalformedRecord(f"{name} must be [uid, registration block]")
    return check_int(f"{name} uid", v[0], 0, U16_MAX), check_int(f"{name} block", v[1], 0, U64_MAX)


def _by_hotkey(name: str, d, check):
    """{address: check(value)} of a head's per-hotkey mapping; MalformedRecord on a non-mapping or bad key."""
    if not isinstance(d, dict):
        raise MalformedRecord(f"{name} must map hotkey addresses to values")
    return {check_address(f"{name} key", k): check(f"{name} of {k[:16]}", v) for k, v in d.items()}


def read_head(dht, host: str) -> LedgerHead | None:
    """The head signed by `host`, the pinned ledger host; heads signed by anyone else are never read, however high.

    None when the host has published none yet, or a malformed one (logged in one line). Raises ValueError when
    `host` is empty, since no host would mean trusting any signer.
    """
    if not host:
        raise ValueError("read_head needs the ledger host's address (ledger.host); any key can sign a head")
    payload = read_signed(dht, HEAD_KEY, HEAD_CONTEXT).get(host)
    if payload is None:
        return None
    try:
        return LedgerHead.from_payload(host, payload)
    except MalformedRecord as e:
        logger.warning("ledger head by %s: %s", host[:16], e)
        return None


def pinned_seed_sha256(dht, ledger: LedgerAccessConfig, timeout: float) -> str | None:
    """The seed sha256 the ledger host pins in its head, which is the only seed a node may load (None when the node
    uses no ledger). Raises TimeoutError if the host's head names no seed within `timeout` seconds."""
    if not ledger.enabled:
        return None
    deadline = time.monotonic() + timeout
    while (head := read_head(dht, ledger.host)) is None or head.seed_sha256 is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ledger host {ledger.host[:16]} pinned no seed within {timeout:.0f}s")
        time.sleep(0.25)
    return head.seed_sha256


def register_on_ledger(
    dht,
    hotkey: Hotkey,
    stake_rao: int = 0,
    timeout: float = 60.0,
    *,
    host: str,
    netuids: list[int],
    ttl: float = 30.0,
) -> tuple[dict[int, tuple[int, int]], LedgerHead]:
    """Register `hotkey` on each of `netuids` by proof of work (and stake `stake_rao`) through the DHT inbox.

    Posts the node's own signed records, re-posting with a fresh block hash if they have not landed after a few
    blocks; returns ({netuid: (uid, registration block)}, head) once `host`'s head shows them all. Raises
    TimeoutError after `timeout` (naming a netuid the ledger does not have), ValueError without a host.
    """
    deadline = time.monotonic() + timeout
    posted_at = -1.0
    head = None
    while time.monotonic() < deadline:
        head = read_head(dht, host)
        if head is not None:
            mine = {n: head.uid_on(n, hotkey.address) for n in netuids}
            if all(mine.values()) and head.stakes.get(hotkey.address, 0) >= stake_rao:
                logger.info("registered on ledger subnets %s", {n: uid for n, (uid, _) in mine.items()})
                return mine, head
            if posted_at < 0 or time.monotonic() - posted_at > max(2.0, 8 * head.block_interval):
                records = []
                for n in (n for n, me in mine.items() if me is None and n in head.subnets):
                    record = pow_registration_record(hotkey, n, head.head_hash, head.subnets[n].difficulty)
                    records.extend([record] if record is not None else [])
                if stake_rao > 0 and head.stakes.get(hotkey.address, 0) < stake_rao:
                    records.append(stake_record(hotkey, stake_rao - head.stakes.get(hotkey.address, 0), nonce=0))
                publish_signed(dht, INBOX_KEY, hotkey, {"records": records}, INBOX_CONTEXT, ttl)
                posted_at = time.monotonic()
        time.sleep(0.25)
    unknown = [n for n in netuids if head is not None and n not in head.subnets]
    why = f" (the ledger has no subnet {unknown})" if unknown else ""
    raise TimeoutError(f"hotkey {hotkey.address[:16]} not registered on the ledger within {timeout:.0f}s{why}")


def submit_records(dht, hotkey: Hotkey, records: list[dict], ttl: float = 60.0) -> bool:
    """Post the node's own signed ledger records (e.g. a distiller's credits) to the ledger host's inbox."""
    return publish_signed(dht, INBOX_KEY, hotkey, {"records": records}, INBOX_CONTEXT, ttl)


def publish_weights(dht, hotkey: Hotkey, submissions: list[WeightSubmission], ttl: float = 60.0) -> bool:
    return publish_signed(
        dht, WEIGHTS_KEY, hotkey, {"submissions": [s.to_dict() for s in submissions]}, WEIGHTS_CONTEXT, ttl
    )


def publish_commit(
    dht,
    hotkey: Hotkey,
    commit: dict,
    seed: bytes | None,
    ttl: float,
    flags: dict[str, list[str]] | None = None,
    bpb: dict[str, float | None] | None = None,
) -> bool:
    """A validator's seed commitment (JSON of `moe.poi.commit.SeedCommit`), with the seed once it is revealed, and
    then the epoch's verdict on cheats (hotkey → reasons) and the bits per byte it measured for each expert, which
    anyone can check by re-drawing the windows."""
    payload = {"commit": commit, "seed": None if seed is None else seed.hex(), "flags": flags or {}}
    measured = {hk: float(v) for hk, v in (bpb or {}).items() if v is not None and math.isfinite(v)}
    if measured:
        payload["bpb"] = measured
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
