"""The ledger host: feeds peers' signed records from the DHT into its SQLite `Ledger` and publishes the head.

The host trusts nothing it reads: every record is checked by `Ledger.submit` (signatures, nonces, epochs, uids) and
every weight submission must verify and name the validator that signed its envelope. Rejections are logged with a
one-line reason and counted in `rejected`, never stored. Blocks are produced on an accelerated clock
(`block_interval` wall seconds a block). Given the seed publisher's key, the host pins the sha256 of the first seed
that key announces in every head it signs, so nodes load that seed and no other. The keys it reads and writes are
described in `moe.net.ledger_client`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe.config_checks import require_at_least, require_positive
from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, WeightSubmission
from moe.ledger.escrow import coverable
from moe.ledger.ticket import chain_digest
from moe.ledger.weights import canonical_json
from moe.net.dht_records import publish_signed, read_signed
from moe.net.ledger_client import HEAD_CONTEXT, HEAD_KEY, INBOX_CONTEXT, INBOX_KEY, WEIGHTS_CONTEXT, WEIGHTS_KEY
from moe.net.seed_transfer import find_seed_records

logger = logging.getLogger(__name__)

MAX_HEAD_ESCROWS = 256
"""Consumers whose escrow the head lists (the largest; a head must fit one DHT value)."""


def _largest_escrows(st) -> dict[str, int]:
    """Consumer -> coverable escrow of the MAX_HEAD_ESCROWS largest, by address."""
    have = {c: coverable(st, c) for c in st.escrow}
    top = sorted((c for c in have if have[c] > 0), key=lambda c: (-have[c], c))[:MAX_HEAD_ESCROWS]
    return {c: have[c] for c in sorted(top)}


@dataclass
class LedgerHostConfig:
    """The chain a local network hosts: its block clock, epoch length and registration cost."""

    block_interval_seconds: float = 0.25
    """Wall seconds between blocks (the accelerated clock of a local run; the chain's own clock is 12 s a block)."""
    tempo: int = 20
    """Blocks per ledger epoch (Yuma consensus and payout at its last block)."""
    difficulty: int = 64
    """Proof-of-work difficulty of a registration (expected hashes)."""
    emission_split: str = "contribution"
    """How each block's emission is split across subnets: `contribution` (each subnet's Shapley share of the
    mixture's loss reduction, as the validators measure and report it on the root subnet), `root` (the validators'
    root weights through Yuma consensus, as subtensor's root network did) or `static` (equal shares)."""
    commit_reveal: bool = True
    """Validators commit a hash of their weights and reveal them later, so nobody can copy them (on, as on
    subtensor)."""
    reveal_period_epochs: int = 1
    """Epochs between a weights commit and its reveal."""
    yuma_version: int = 1
    """Yuma consensus version of every subnet: 1 (original bonds) or 3 (absolute bonds, subtensor's Yuma 3)."""
    liquid_alpha: bool = False
    """Per-bond EMA rate from its weight's distance to consensus (subtensor applies it with Yuma 3)."""

    def __post_init__(self):
        require_positive(self, ["block_interval_seconds"])
        require_at_least(self, 1, ["tempo", "difficulty", "reveal_period_epochs"])
        if self.emission_split not in EMISSION_SPLITS:
            raise ValueError(
                f"emission_split must be one of {', '.join(EMISSION_SPLITS)}, got {self.emission_split!r}"
            )
        if self.yuma_version not in (1, 3):
            raise ValueError(f"yuma_version must be 1 or 3, got {self.yuma_version}")


EMISSION_SPLITS = ("contribution", "root", "static")


class LedgerHost:
    """The ledger host: polls the inbox and weight keys, submits what verifies, produces blocks, publishes the head.

    The SQLite ledger is opened by the thread that first calls `step()` (the background thread after `start()`),
    as a connection must stay in its thread. `rejected` lists (kind, signer, reason) of everything refused.
    `seed_publisher` (hex hotkey) is the key whose announced seed the head pins; without it the head pins none.
    """

    def __init__(
        self,
        dht,
        path: str | Path,
        genesis: GenesisConfig,
        hotkey: Hotkey,
        block_interval: float,
        poll_interval: float = 0.25,
        head_ttl: float = 30.0,
        seed_publisher: str | None = None,
    ):
        self.dht, self.path, self.genesis, self.hotkey = dht, Path(path), genesis, hotkey
        self.block_interval, self.poll_interval, self.head_ttl = block_interval, poll_interval, head_ttl
        self.seed_publisher = seed_publisher
        self.seed_sha256: str | None = None
        self.ledger: Ledger | None = None
        self.seen: set[str] = set()  # content hashes of items already handled, accepted or not
        self.accepted: list[tuple[str, str]] = []
        self.rejected: list[tuple[str, str, str]] = []
        self.last_weights_height = -1
        self.height = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_block = 0.0

    # one round

    def step(self) -> None:
        if self.ledger is None:
            self.ledger = Ledger.open(self.path, self.genesis)
            self.height = self.ledger.height
            self.publish_head()
        self.ingest_inbox(read_signed(self.dht, INBOX_KEY, INBOX_CONTEXT))
        self.ingest_weights(read_signed(self.dht, WEIGHTS_KEY, WEIGHTS_CONTEXT))
        if self.seed_sha256 is None and self.seed_publisher:
            self.pin_seed()
        now = time.time()
        if now >= self._next_block:
            self.ledger.produce_block(max(now, self.ledger.last_timestamp))
            self.height = self.ledger.height
            self._next_block = now + self.block_interval
            self.publish_head()

    def pin_seed(self) -> None:
        """Pin the sha256 of the seed `seed_publisher` announces, once and for good: a later announcement (by any
        key) cannot swap the seed of a running network."""
        records = find_seed_records(self.dht, expected_publisher=self.seed_publisher)
        if records:
            self.seed_sha256 = records[0].sha256
            logger.info("pinned seed %s announced by %s", self.seed_sha256[:16], self.seed_publisher[:16])

    def _first_sight(self, address: str, item: object) -> bool:
        """True the first time this signer posts this exact item (by content hash, so a tampered copy that keeps a
        genuine signature cannot shadow the genuine record)."""
        try:
            digest = hashlib.sha256(address.encode() + canonical_json(item)).hexdigest()
        except (TypeError, ValueError):
            digest = f"{address}:{item!r}"
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True

    def _reject(self, kind: str, who: str, reason: str) -> None:
        logger.warning("rejected %s from %s: %s", kind, who[:16], reason)
        self.rejected.append((kind, who, reason))

    def _new_items(self, entries: dict[str, dict], field: str, kind: str):
        """(signer, item) for each item of each signer's `field` list not seen before; a payload without such a list
        is rejected."""
        for address, payload in entries.items():
            items = payload.get(field)
            if not isinstance(items, list):
                self._reject(kind, address, f"payload has no list of {field}")
                continue
            for item in items:
                if self._first_sight(address, item):
                    yield address, item

    def ingest_inbox(self, entries: dict[str, dict]) -> None:
        """Submit each node's own records (registration, stake); records signed by someone else are refused."""
        for address, rec in self._new_items(entries, "records", "inbox"):
            if not isinstance(rec, dict):
                self._reject("inbox", address, "record is not a JSON object")
            elif rec.get("hotkey") != address:
                self._reject(str(rec.get("kind")), address, "record acts for another hotkey")
            elif self.ledger.submit(rec):
                self.accepted.append((str(rec.get("kind")), address))
                if rec.get("kind") == "reveal":  # revealed weights count from here, as set weights do
                    self.last_weights_height = self.ledger.height + 1
            else:
                self._reject(str(rec.get("kind")), address, "refused by the ledger (see its log line)")

    def ingest_weights(self, entries: dict[str, dict]) -> None:
        """Submit each validator's weight submissions that verify and are its own; log and count the rest."""
        for address, d in self._new_items(entries, "submissions", "weights"):
            try:
                sub = WeightSubmission.from_dict(d)
            except ValueError as e:
                self._reject("weights", address, str(e))
                continue
            if sub.validator != address:
                self._reject("weights", address, f"submission names validator {sub.validator[:16]}")
            elif not sub.verify():
                self._reject("weights", address, "signature does not verify (forged or tampered)")
            elif self.ledger.submit(sub):
                self.accepted.append(("weights", address))
                self.last_weights_height = self.ledger.height + 1
                logger.info("accepted weights of %s for epoch %d: %s", address[:16], sub.epoch, sub.uids)
            else:
                self._reject("weights", address, "refused by the ledger (see its log line)")

    def publish_head(self) -> None:
        st = self.ledger.state
        shares = emission_shares(st)
        subnets, staked = {}, set()
        for netuid, sub in st.subnets.items():
            params = st.config.params(netuid)
            uids = {slot.hotkey: [uid, slot.registered_at] for uid, slot in sub.registry.slots.items()}
            staked.update(uids)
            subnets[str(netuid)] = {
                "difficulty": sub.difficulty,
                "uids": uids,
                "incentive": last_incentive(sub.latest_epoch),
                "emission_share": shares.get(netuid, 0.0),
                "commit_reveal": params.commit_reveal,
                "reveal_period_epochs": params.reveal_period_epochs,
            }
        payload = {
            "height": self.ledger.height,
            "head_hash": self.ledger.head_hash,
            "epoch": self.ledger.current_epoch,
            "tempo": self.ledger.config.tempo,
            "block_interval": self.block_interval,
            "subnets": subnets,
            "stakes": {hk: st.stakes[hk] for hk in sorted(staked) if st.stakes.get(hk, 0) > 0},
            "seed_sha256": self.seed_sha256,
            "total_issuance": self.ledger.total_issuance,
            "chain": chain_digest(st.chain_id).hex(),
            "escrow": _largest_escrows(st),
        }
        publish_signed(self.dht, HEAD_KEY, self.hotkey, payload, HEAD_CONTEXT, self.head_ttl)

    # background loop

    def start(self) -> LedgerHost:
        self._thread = threading.Thread(target=self._loop, name="ledger-feed", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception:
                    logger.exception("ledger feed step failed; retrying")
                self._stop.wait(self.poll_interval)
        finally:
            if self.ledger is not None:
                self.ledger.close()

    def wait(self, done: Callable[[LedgerHost], bool], timeout: float) -> bool:
        """Block until `done(self)` holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self):
                return True
            time.sleep(0.1)
        return done(self)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def local_genesis(
    lh: LedgerHostConfig, netuids: list[int], balances: dict[str, int], owners: dict[int, str] | None = None
) -> GenesisConfig:
    """Genesis of a local demo chain: one ledger subnet per domain (`netuids`, each with its `owners` key taking the
    owner's cut), 12 s blocks sped up to `lh.block_interval_seconds`, cheap proof of work, commit-reveal weights and
    the emission split `lh` names (`static` keeps equal shares)."""
    from moe.ledger import LedgerConfig

    rules = LedgerConfig(
        time_scale=12.0 / lh.block_interval_seconds,
        tempo=lh.tempo,
        subnet_shares={n: 1.0 for n in netuids},
        initial_difficulty=lh.difficulty,
        min_difficulty=1,
        max_difficulty=max(lh.difficulty, 1) * 16,
        emission_split=lh.emission_split,
        commit_reveal=lh.commit_reveal,
        reveal_period_epochs=lh.reveal_period_epochs,
        yuma_version=lh.yuma_version,
        liquid_alpha=lh.liquid_alpha,
        subnet_owners={n: a for n, a in (owners or {}).items()},
    )
    return GenesisConfig(ledger=rules, balances=dict(balances), timestamp=time.time())


def emission_shares(st) -> dict[int, float]:
    """Netuid → its share of each block's emission now (the latest split, else the genesis shares), summing to 1."""
    shares = dict(st.split or st.config.subnet_shares.items())
    total = sum(shares.values()) or 1.0
    return {n: float(v) / total for n, v in shares.items()}


def last_incentive(epoch: dict | None) -> dict[str, float]:
    """Hotkey → incentive from a subnet's latest epoch record (empty before the first epoch)."""
    if not epoch:
        return {}
    return {hk: float(i) for hk, i in zip(epoch["hotkeys"], epoch["incentive"], strict=True)}
