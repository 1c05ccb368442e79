"""The ledger over the DHT: a host feeds peers' signed records into its SQLite `Ledger` and publishes the head.

Keys (each value a `SignedValue` stored under a subkey equal to its signer's hotkey, so the DHT-level guard already
refuses values under someone else's name):

- `hivemoe/ledger/head`: the host's signed head (height, hash, epoch, tempo, and every registered hotkey's uid,
  registration block and stake), re-published after every block; nodes read their uid and the epoch from it.
- `hivemoe/ledger/inbox`: a node's own signed ledger records (registration by proof of work, stake).
- `hivemoe/validators/weights`: a validator's signed `WeightSubmission`s for the current epoch.
- `hivemoe/validators/commits`: a validator's seed commitment (and, after scoring, the revealed seed).

The host trusts nothing it reads: every record is checked by `Ledger.submit` (signatures, nonces, epochs, uids) and
every weight submission must verify and name the validator that signed its envelope. Rejections are logged with a
one-line reason and counted in `rejected`, never stored. Blocks are produced on an accelerated clock
(`block_interval` wall seconds a block).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, WeightSubmission
from moe.ledger.records import registration_record, stake_record
from moe.ledger.registration import registration_prefix, solve_pow
from moe.ledger.weights import canonical_json
from moe.net.signed import MalformedRecord, SignedValue

logger = logging.getLogger(__name__)

HEAD_KEY = "hivemoe/ledger/head"
INBOX_KEY = "hivemoe/ledger/inbox"
WEIGHTS_KEY = "hivemoe/validators/weights"
COMMITS_KEY = "hivemoe/validators/commits"
HEAD_CONTEXT = "ledger-head"
INBOX_CONTEXT = "ledger-inbox"
WEIGHTS_CONTEXT = "validator-weights"
COMMIT_CONTEXT = "validator-commit"


def dht_now() -> float:
    from hivemind.utils import get_dht_time

    return get_dht_time()


def publish_signed(dht, key: str, hotkey: Hotkey, payload: dict, context: str, ttl: float) -> bool:
    """Sign `payload` (expiring ttl seconds ahead) and store it under `key`/hotkey; False if nobody stored it."""
    expiration = dht_now() + ttl
    value = SignedValue.sign(hotkey, {**payload, "expiration": expiration}, context=context)
    return bool(dht.store(key, value, expiration_time=expiration, subkey=hotkey.address))


def read_signed(dht, key: str, context: str) -> dict[str, dict]:
    """{signer address: payload} of every valid value under `key`; malformed or misfiled ones are logged, skipped."""
    found = dht.get(key, latest=True)
    if found is None:
        return {}
    entries = found.value
    if not isinstance(entries, dict):
        logger.warning("%s: DHT value is %s, not a subkey dictionary; ignored", key, type(entries).__name__)
        return {}
    out = {}
    for subkey, item in entries.items():
        try:
            address, payload = SignedValue.open(getattr(item, "value", item), context=context)
            if subkey != address:
                raise MalformedRecord(f"filed under {str(subkey)[:16]!r} but signed by {address[:16]}")
            out[address] = payload
        except MalformedRecord as e:
            logger.warning("%s: skipping entry %s: %s", key, str(subkey)[:16], e)
    return out


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

    def epoch_progress(self) -> float:
        """Fraction of the current epoch's blocks already produced, in [0, 1)."""
        return ((self.height + 1) % self.tempo) / self.tempo

    @classmethod
    def from_payload(cls, host: str, d: dict) -> LedgerHead:
        """Raises MalformedRecord (one line) on a missing or mistyped field."""
        try:
            return cls(
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
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise MalformedRecord(f"malformed ledger head: {e!r}") from None


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
                    prefix = registration_prefix(head.netuid, head.head_hash, hotkey.public_bytes)
                    nonce = solve_pow(prefix, head.difficulty, max_nonce=10**7)
                    records.append(registration_record(hotkey, head.netuid, head.head_hash, nonce=nonce))
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


class LedgerFeed:
    """The ledger host: polls the inbox and weight keys, submits what verifies, produces blocks, publishes the head.

    The SQLite ledger is opened by the thread that first calls `step()` (the background thread after `start()`),
    as a connection must stay in its thread. `rejected` lists (kind, signer, reason) of everything refused.
    """

    def __init__(
        self,
        dht,
        path: str | Path,
        genesis: GenesisConfig,
        hotkey: Hotkey,
        netuid: int,
        block_interval: float,
        poll_interval: float = 0.25,
        head_ttl: float = 30.0,
    ):
        self.dht, self.path, self.genesis, self.hotkey = dht, Path(path), genesis, hotkey
        self.netuid, self.block_interval, self.poll_interval, self.head_ttl = (
            netuid,
            block_interval,
            poll_interval,
            head_ttl,
        )
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
        now = time.time()
        if now >= self._next_block:
            self.ledger.produce_block(max(now, self.ledger.last_timestamp))
            self.height = self.ledger.height
            self._next_block = now + self.block_interval
            self.publish_head()

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

    def ingest_inbox(self, entries: dict[str, dict]) -> None:
        """Submit each node's own records (registration, stake); records signed by someone else are refused."""
        for address, payload in entries.items():
            records = payload.get("records")
            if not isinstance(records, list):
                self._reject("inbox", address, "payload has no list of records")
                continue
            for rec in records:
                if not self._first_sight(address, rec):
                    continue
                if not isinstance(rec, dict):
                    self._reject("inbox", address, "record is not a JSON object")
                elif rec.get("hotkey") != address:
                    self._reject(str(rec.get("kind")), address, "record acts for another hotkey")
                elif self.ledger.submit(rec):
                    self.accepted.append((str(rec.get("kind")), address))
                else:
                    self._reject(str(rec.get("kind")), address, "refused by the ledger (see its log line)")

    def ingest_weights(self, entries: dict[str, dict]) -> None:
        """Submit each validator's weight submissions that verify and are its own; log and count the rest."""
        for address, payload in entries.items():
            subs = payload.get("submissions")
            if not isinstance(subs, list):
                self._reject("weights", address, "payload has no list of submissions")
                continue
            for d in subs:
                if not self._first_sight(address, d):
                    continue
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
        sub = st.subnets[self.netuid]
        uids = {slot.hotkey: [uid, slot.registered_at] for uid, slot in sub.registry.slots.items()}
        payload = {
            "height": self.ledger.height,
            "head_hash": self.ledger.head_hash,
            "epoch": self.ledger.current_epoch,
            "tempo": self.ledger.config.tempo,
            "netuid": self.netuid,
            "difficulty": sub.difficulty,
            "block_interval": self.block_interval,
            "uids": uids,
            "stakes": {hk: st.stakes[hk] for hk in uids if st.stakes.get(hk, 0) > 0},
        }
        publish_signed(self.dht, HEAD_KEY, self.hotkey, payload, HEAD_CONTEXT, self.head_ttl)

    # background loop

    def start(self) -> LedgerFeed:
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

    def wait(self, done: Callable[[LedgerFeed], bool], timeout: float) -> bool:
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
    netuid: int, block_interval: float, tempo: int, difficulty: int, balances: dict[str, int]
) -> GenesisConfig:
    """Genesis of a local demo chain: one subnet, 12 s blocks sped up to `block_interval`, cheap proof of work."""
    from moe.ledger import LedgerConfig

    rules = LedgerConfig(
        time_scale=12.0 / block_interval,
        tempo=tempo,
        subnet_shares={netuid: 1.0},
        initial_difficulty=difficulty,
        min_difficulty=1,
        max_difficulty=max(difficulty, 1) * 16,
    )
    return GenesisConfig(ledger=rules, balances=dict(balances), timestamp=time.time())
