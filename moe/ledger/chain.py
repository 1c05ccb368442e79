"""The block log: an append-only, hash-chained list of blocks in SQLite, and the `Ledger` that produces them.

Each block is written in one SQLite transaction (WAL journal), so a crash or `kill -9` loses at most the block in
progress and the file always verifies. Peers' records go through `submit`, which checks them against the state the
next block will have and rejects (logs, never stores) anything invalid; `produce_block` then writes the accepted
records plus the ledger's own emission and epoch records. State is derived by replaying blocks, never edited.
Stored blocks are parsed strictly (no NaN or Infinity, exact types), so a crafted file is refused block by block
with a reason, never with an exception; the genesis can be pinned by config or by hash (`genesis_mismatch`).

Speed: accepted records are applied to the live state at once (the state's undo journal takes back a rejected
record, a failed block write, or the queue when a caller reads the committed state), and each block's records are
serialized once, for its hash and its row alike: a signed record's canonical bytes are kept from `submit`, so a
block only encodes its derived records. Replay and verify parse a records text once and share the result with the
identical texts of following blocks (most blocks hold the emission record alone). `synchronous="NORMAL"` (WAL,
as the benchmark runs) keeps the guarantee above against a killed process; only an OS crash or power loss can then
take back the last committed blocks, never corrupt the file (FULL, the default, fsyncs every block against those).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moe.identity import Hotkey
from moe.ledger.block_end import end_block
from moe.ledger.fields import describe, exactly_equal, is_hex, strict_json
from moe.ledger.genesis import GenesisConfig, LedgerConfig
from moe.ledger.records import (
    SIGNED_KINDS,
    Record,
    RecordError,
    check_signed,
    commit_record,
    new_salt,
    pow_registration_record,
    registration_record,
    reveal_record,
    stake_record,
    transfer_record,
    weights_record,
)
from moe.ledger.state import LedgerState, apply_signed, genesis_state
from moe.ledger.weights import WeightSubmission, canonical_json, to_u16

logger = logging.getLogger(__name__)

GENESIS_PREV_HASH = "0" * 64
WAL_CHECKPOINT_PAGES = 10_000
"""WAL pages (4 KiB each) between automatic checkpoints. Each checkpoint fsyncs, and at SQLite's default of 1000
pages (a few hundred blocks) that cost about 15 us a block; durability and atomicity do not depend on it."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    timestamp REAL NOT NULL,
    records TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY,
    balance INTEGER NOT NULL,
    stake INTEGER NOT NULL
);
"""


class LedgerError(RuntimeError):
    """A ledger file that cannot be opened as the requested chain (wrong genesis, broken chain, bad schema)."""


def block_hash(height: int, prev_hash: str, timestamp: float, records: list[Record]) -> str:
    """sha256 hex of the canonical bytes of (height, prev_hash, timestamp, records)."""
    body = {"height": height, "prev_hash": prev_hash, "timestamp": timestamp, "records": records}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def block_hash_from_json(height: int, prev_hash: str, timestamp: float, records_json: bytes) -> str:
    """`block_hash` given the records' canonical JSON, without serializing them again.

    Equal to `block_hash` whenever `records_json` is canonical_json(records): the canonical body is that text
    spliced between the other fields in sorted-key order.
    """
    head = (_scalar_json(height), _scalar_json(prev_hash), records_json, _scalar_json(timestamp))
    return hashlib.sha256(b'{"height":%b,"prev_hash":%b,"records":%b,"timestamp":%b}' % head).hexdigest()


def _scalar_json(x: object) -> bytes:
    """canonical_json(x), short-cut for the ints, finite floats and hex strings of a block header."""
    if type(x) is int:
        return str(x).encode()
    if type(x) is float and math.isfinite(x):
        return repr(x).encode()  # what json writes for a float
    if type(x) is str and x.isascii() and x.isalnum():
        return b'"' + x.encode() + b'"'  # nothing to escape
    return canonical_json(x)


@dataclass
class Block:
    """One block as stored."""

    height: int
    prev_hash: str
    timestamp: float
    records: list[Record] = field(default_factory=list)
    hash: str = ""
    records_json: bytes | str | None = field(default=None, repr=False, compare=False)
    """The records column as stored, when read from a file (lets `hash_ok` skip re-serializing)."""

    def compute_hash(self) -> str:
        return block_hash(self.height, self.prev_hash, self.timestamp, self.records)

    def hash_ok(self) -> bool:
        """True when `hash` is the hash of the block's contents.

        Fast path: hash the stored text directly, which matches when it is canonical (as written by `Ledger`);
        otherwise fall back to re-serializing the parsed records, so the verdict never differs from `compute_hash`.
        """
        raw = self.records_json
        if raw is not None:
            try:
                data = raw.encode("ascii") if isinstance(raw, str) else bytes(raw)
                if block_hash_from_json(self.height, self.prev_hash, self.timestamp, data) == self.hash:
                    return True
            except (UnicodeEncodeError, TypeError, ValueError):
                pass
        try:
            return self.compute_hash() == self.hash
        except (TypeError, ValueError, RecursionError):  # NaN, a huge int or deep nesting: no canonical form
            return False


def connect(path: str | os.PathLike, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the SQLite file in WAL mode with explicit transactions (we issue BEGIN/COMMIT ourselves)."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    conn.executescript(SCHEMA)
    return conn


def read_blocks(conn: sqlite3.Connection, start: int = 0, *, share_repeats: bool = False) -> Iterator[Block]:
    """Stored blocks from `start` in height order; raises LedgerError on a row whose records are not strict JSON
    (NaN, Infinity, 1e400, duplicate keys, too deep).

    `share_repeats`: a block whose records text equals the previous block's (most blocks hold just the emission
    record) gets the very same parsed `records` objects instead of a second parse, so the caller must not mutate
    them (replay and verify only read records).
    """
    cur = conn.execute(
        "SELECT height, prev_hash, hash, timestamp, records FROM blocks WHERE height >= ? ORDER BY height", (start,)
    )
    last_text: object = None
    records: list[Record] = []
    for height, prev, h, ts, recs in cur:
        if not (share_repeats and recs == last_text and type(recs) is str):
            try:
                records = strict_json(recs)
            except RecordError as e:
                raise LedgerError(f"block {describe(height)}: records are not valid JSON ({e})") from None
            last_text = recs
        yield Block(height=height, prev_hash=prev, timestamp=ts, records=records, hash=h, records_json=recs)


class Ledger:
    """A local replica of the chain: submit signed records, produce blocks, read balances and stakes.

    Not thread-safe; one process should produce blocks for a file (others may open it read-only to verify).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, state: LedgerState, last_timestamp: float):
        self.path = path
        self._conn = conn
        self._state = state  # the latest block's state, plus the queued records while _staged (journaled)
        self._queue: list[Record] = []
        self._queue_json: list[bytes] = []  # canonical bytes of each queued record, so a block never re-encodes them
        self._staged = True
        self.last_timestamp = last_timestamp

    # ---- opening -------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        genesis: GenesisConfig | None = None,
        *,
        genesis_hash: str | None = None,
        synchronous: str = "FULL",
    ) -> Ledger:
        """Open `path`, creating it from `genesis` if empty; replay its blocks to rebuild the state.

        Raises LedgerError (one line) if the file is empty and no genesis is given, if its genesis record differs
        from `genesis` or its genesis block hash from `genesis_hash` (pins from outside the file, which cannot vouch
        for itself), or if the stored chain does not replay (run `verify_ledger` for a full report).
        """
        path = Path(path)
        conn = connect(path, synchronous)
        try:
            stored = next(read_blocks(conn), None)
            if stored is None:
                if genesis is None:
                    raise LedgerError(f"{path} holds no chain and no genesis was given")
                return cls._create(path, conn, genesis, genesis_hash)
            mismatch = genesis_mismatch(stored, genesis, genesis_hash)
            if mismatch:
                raise LedgerError(f"{path} was created with a different genesis: {mismatch}")
            state, ts = replay(conn, check_signatures=False)
            logger.info("opened ledger %s at height %d", path, state.height)
            return cls(path, conn, state, ts)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _create(cls, path: Path, conn: sqlite3.Connection, genesis: GenesisConfig, genesis_hash: str | None) -> Ledger:
        """Write block 0 of `genesis` into the empty file behind `conn`."""
        blk = genesis_block(genesis)
        mismatch = genesis_mismatch(blk, None, genesis_hash)
        if mismatch:
            raise LedgerError(f"the genesis config given does not match the pinned hash: {mismatch}")
        state = genesis_state(blk.records[0])
        state.remember_hash(0, blk.hash)
        _write_block(conn, blk, canonical_json(blk.records), state)
        state.commit()
        logger.info("created ledger %s (genesis %s)", path, blk.hash[:16])
        return cls(path, conn, state, blk.timestamp)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> LedgerState:
        """State after the latest written block (queued records are not in it).

        A live object, updated in place by later blocks: take `.copy()` to keep a snapshot.
        """
        return self._committed()

    def _committed(self) -> LedgerState:
        """The live state with queued records taken back out (they are re-applied on the next submit or block)."""
        if self._staged and self._queue:
            self._state.rollback()
            self._staged = False
        return self._state

    def _pending(self) -> LedgerState:
        """The live state with the queued records applied: what the next block starts from."""
        if not self._staged:
            st, height, kept, kept_json = self._state, self.height + 1, [], []
            for rec, text in zip(self._queue, self._queue_json, strict=True):
                try:  # already checked against this very state, unless a caller changed it
                    apply_signed(st, rec, height, check_signature=False)
                    kept.append(rec)
                    kept_json.append(text)
                except RecordError as e:
                    logger.warning("dropped queued %s record: no longer valid (%s)", rec.get("kind"), e)
            self._queue, self._queue_json, self._staged = kept, kept_json, True
        return self._state

    @property
    def config(self) -> LedgerConfig:
        return self._state.config

    @property
    def height(self) -> int:
        return self._state.height

    @property
    def head_hash(self) -> str:
        return self._state.head_hash

    @property
    def total_issuance(self) -> int:
        return self._committed().total_issuance

    @property
    def current_epoch(self) -> int:
        """Epoch that weight submissions must name to go into the next block."""
        return self._state.epoch_of(self.height + 1)

    def balance(self, address: str) -> int:
        return self._committed().balances.get(address, 0)

    def stake_of(self, address: str) -> int:
        return self._committed().stakes.get(address, 0)

    def uid(self, netuid: int, address: str) -> int | None:
        sub = self._committed().subnets.get(netuid)
        return sub.registry.uid_of(address) if sub else None

    def next_block_due(self) -> float:
        """Wall-clock time the next block is due: block_time / time_scale after the last one."""
        return self.last_timestamp + self.config.block_time / self.config.time_scale

    def blocks(self, start: int = 0) -> Iterator[Block]:
        return read_blocks(self._conn, start)

    # ---- writing -------------------------------------------------------------------------------------------------

    def submit(self, record: Record | WeightSubmission) -> bool:
        """Queue a signed record for the next block; False if it is malformed (any field not of its exact type) or
        invalid there, logged in one warning line. A rejected record changes nothing, queued records included."""
        try:
            copy, text = _stored_form(record)
            apply_signed(self._pending(), copy, self.height + 1)  # leaves the state untouched if it raises
        except RecordError as e:
            logger.warning("rejected %s record: %s", _kind_label(record), e)
            return False
        self._queue.append(copy)
        self._queue_json.append(text)
        return True

    def produce_block(self, timestamp: float | None = None) -> Block:
        """Write the next block: queued records, then this block's emission and any epoch results, in one transaction.

        `timestamp` defaults to now and may not go backwards. On a write failure nothing changes and the queue is kept.
        """
        ts = time.time() if timestamp is None else float(timestamp)
        if not math.isfinite(ts):
            raise ValueError(f"block timestamp must be finite, got {ts}")
        if ts < self.last_timestamp:
            raise ValueError(f"block timestamp {ts} is before the previous block's {self.last_timestamp}")
        height = self.height + 1
        st = self._pending()
        mark = st.mark()
        try:
            derived = end_block(st, height)
            records = self._queue + derived
            records_json = b"[" + b",".join([*self._queue_json, *map(canonical_json, derived)]) + b"]"  # canonical
            blk = Block(height, self.head_hash, ts, records)
            blk.hash = block_hash_from_json(height, blk.prev_hash, ts, records_json)
            st.remember_hash(height, blk.hash)
            _write_block(self._conn, blk, records_json, st)
        except BaseException:
            st.rollback(mark)  # back to the queued records applied; the queue is kept
            raise
        st.commit()
        self._queue, self._queue_json, self.last_timestamp = [], [], ts
        return blk

    # ---- conveniences for nodes: build, sign and submit ---------------------------------------------------------

    def register(self, hotkey: Hotkey, netuid: int, *, burn: int | None = None, max_nonce: int = 10**7) -> bool:
        """Register `hotkey` on `netuid` by proof of work at the current difficulty, or by burning `burn` rao."""
        head = self.head_hash
        if burn is not None:
            return self.submit(registration_record(hotkey, netuid, head, burn=burn))
        sub = self._state.subnets.get(netuid)
        if sub is None:
            logger.warning("rejected registration: unknown netuid %d", netuid)
            return False
        record = pow_registration_record(hotkey, netuid, head, sub.difficulty, max_nonce=max_nonce)
        return record is not None and self.submit(record)

    def _next_nonce(self, address: str) -> int:
        return self._pending().nonces.get(address, 0)

    def add_stake(self, hotkey: Hotkey, amount: int) -> bool:
        """Move `amount` rao of the hotkey's balance into its stake (negative unstakes)."""
        return self.submit(stake_record(hotkey, amount, self._next_nonce(hotkey.address)))

    def transfer(self, hotkey: Hotkey, dst: str, amount: int) -> bool:
        return self.submit(transfer_record(hotkey, dst, amount, self._next_nonce(hotkey.address)))

    def set_weights(self, hotkey: Hotkey, netuid: int, uids: list[int], weights: list[float]) -> bool:
        """Normalize `weights` to u16, sign them for the current epoch and submit."""
        try:
            sub = WeightSubmission.create(hotkey, netuid, self.current_epoch, uids, weights)
        except ValueError as e:
            logger.warning("rejected weights: %s", e)
            return False
        return self.submit(sub)

    def commit_weights(
        self, hotkey: Hotkey, netuid: int, uids: list[int], weights: list[float], salt: bytes | None = None
    ) -> bytes | None:
        """Commit (hash only) to `weights` normalized by `to_u16`, for the current epoch on a commit-reveal subnet.

        Returns the salt used (random when None), which `reveal_weights` needs; None if the commit is rejected.
        """
        salt = new_salt() if salt is None else bytes(salt)
        try:
            u, w = to_u16(uids, weights)
            record = commit_record(hotkey, netuid, self.current_epoch, u, w, salt)
        except ValueError as e:
            logger.warning("rejected commit: %s", e)
            return None
        return salt if self.submit(record) else None

    def reveal_weights(
        self, hotkey: Hotkey, netuid: int, epoch: int, uids: list[int], weights: list[float], salt: bytes
    ) -> bool:
        """Reveal the weights committed in `epoch` with `salt` (in epoch + reveal_period_epochs); False if rejected."""
        try:
            u, w = to_u16(uids, weights)
            record = reveal_record(hotkey, netuid, epoch, u, w, salt)
        except ValueError as e:
            logger.warning("rejected reveal: %s", e)
            return False
        return self.submit(record)


def _stored_form(record: object) -> tuple[Record, bytes]:
    """A private copy of a well-formed signed record and its canonical bytes, as it will be stored; raises
    RecordError for anything else.

    Shapes and types are checked first, so nothing non-finite, huge or deeply nested is ever serialized.
    """
    if isinstance(record, WeightSubmission):
        try:
            record = weights_record(record)
        except (TypeError, ValueError) as e:
            raise RecordError(f"malformed weight submission ({e})") from None
    check_signed(record)
    text = canonical_json(record)
    return json.loads(text.decode()), text  # ASCII: decoding here spares json its encoding detection


def _kind_label(record: object) -> str:
    """The record's kind for a log line, or "malformed" when it names none we know."""
    if isinstance(record, WeightSubmission):
        return "weights"
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if type(kind) is str and kind in SIGNED_KINDS else "malformed"


def genesis_block(genesis: GenesisConfig) -> Block:
    """Block 0 of the chain that `genesis` describes; its `hash` is what `genesis_hash` pins."""
    blk = Block(0, GENESIS_PREV_HASH, float(genesis.timestamp), [genesis.record()])
    blk.hash = blk.compute_hash()
    return blk


def genesis_mismatch(blk: Block, genesis: GenesisConfig | None = None, genesis_hash: str | None = None) -> str:
    """Why stored block 0 is not the expected genesis, in one line; "" if it is, or if nothing is pinned.

    `genesis` pins the record (chain id, rules, allocations) but not the timestamp, so a node may rebuild its config
    at each start; `genesis_hash` pins the whole block. Either catches a file whose genesis was rewritten and every
    later block re-hashed, which nothing inside the file can reveal.
    """
    if genesis is not None and not exactly_equal(blk.records, [genesis.record()]):
        return "its genesis record differs from the expected genesis config"
    if genesis_hash is not None and blk.hash != genesis_hash:
        return f"its genesis hash {describe(blk.hash)} is not the expected {describe(genesis_hash)}"
    return ""


def _write_block(conn: sqlite3.Connection, blk: Block, records_json: bytes, st: LedgerState) -> None:
    """Insert the block and the accounts it changed in one transaction; on failure roll back and re-raise."""
    rows = [(a, st.balances.get(a, 0), st.stakes.get(a, 0)) for a in sorted(st.dirty)]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO blocks (height, prev_hash, hash, timestamp, records) VALUES (?, ?, ?, ?, ?)",
            (blk.height, blk.prev_hash, blk.hash, blk.timestamp, records_json.decode()),
        )
        if rows:
            conn.executemany(
                "INSERT INTO accounts (address, balance, stake) VALUES (?, ?, ?) "
                "ON CONFLICT(address) DO UPDATE SET balance = excluded.balance, stake = excluded.stake",
                rows,
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    st.dirty.clear()


def replay(conn: sqlite3.Connection, *, check_signatures: bool = True) -> tuple[LedgerState, float]:
    """Rebuild the state from every stored block; raises LedgerError naming the first block that does not replay."""
    state: LedgerState | None = None
    prev, last_ts = GENESIS_PREV_HASH, float("-inf")
    for blk in read_blocks(conn, share_repeats=True):
        problem = check_block(blk, state, prev, last_ts, check_signatures=check_signatures)
        if isinstance(problem, str):
            raise LedgerError(f"block {describe(blk.height)}: {problem}")
        state, prev, last_ts = problem, blk.hash, blk.timestamp
    if state is None:
        raise LedgerError("ledger holds no blocks")
    return state, last_ts


def check_block(
    blk: Block,
    state: LedgerState | None,
    prev_hash: str,
    last_ts: float,
    *,
    check_signatures: bool = True,
    bad_signatures: Container[int] | None = None,
) -> LedgerState | str:
    """Apply one stored block to `state` (mutated); the new state, or a one-line reason the block is bad.

    A bad block leaves `state` as it was after the previous block. `bad_signatures`, when given, replaces the
    signature checks: the indices of this block's records whose signatures were already found bad elsewhere.
    """
    problem = _header_problem(blk, state, prev_hash, last_ts)
    if problem:
        return problem
    mark = 0 if state is None else state.mark()
    try:
        if state is None:
            first = blk.records[0] if len(blk.records) == 1 else None
            if not isinstance(first, dict) or first.get("kind") != "genesis":
                return "block 0 must hold exactly one genesis record"
            state = genesis_state(blk.records[0])
        else:
            n_signed = 0
            for rec in blk.records:
                if isinstance(rec, dict) and rec.get("kind") in ("emission", "epoch", "genesis"):
                    break
                sig: bool | Callable[[Record], bool] = check_signatures
                if bad_signatures is not None:
                    sig = _refuse if n_signed in bad_signatures else False
                apply_signed(state, rec, blk.height, check_signature=sig)
                n_signed += 1
            end_block(state, blk.height, recorded=blk.records[n_signed:])
    except RecordError as e:
        if state is not None:
            state.rollback(mark)
        return str(e)
    except BaseException:
        if state is not None:
            state.rollback(mark)
        raise
    state.remember_hash(blk.height, blk.hash)
    state.commit()
    return state


def _header_problem(blk: Block, state: LedgerState | None, prev_hash: str, last_ts: float) -> str:
    """Why the block's height, links, hash, timestamp or records column are wrong, in one line, or ""."""
    expected_height = 0 if state is None else state.height + 1
    if type(blk.height) is not int or blk.height != expected_height:
        return f"height {describe(blk.height)} where {expected_height} was expected (missing block)"
    if blk.prev_hash != prev_hash:
        return "prev_hash does not match the previous block's hash"
    if type(blk.timestamp) is not float or not math.isfinite(blk.timestamp):
        return f"timestamp {describe(blk.timestamp)} is not a finite number"
    if not is_hex(blk.hash, 64) or not blk.hash_ok():
        return "hash does not match the block's contents"
    if blk.timestamp < last_ts:
        return "timestamp goes backwards"
    if type(blk.records) is not list:
        return "records are not a list"
    return ""


def _refuse(record: Record) -> bool:
    return False
