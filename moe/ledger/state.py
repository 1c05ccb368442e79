"""Ledger state and its transition function: how each record changes balances, stakes, uids, weights and bonds.

The state is never stored as truth; it is derived by replaying blocks through `apply_signed` and `end_block`, the
same code the producer runs, so replicas fed the same records agree and `verify` can re-derive everything.
Invalid records raise RecordError (one line naming the reason) and leave the state untouched.

Every change goes through an undo journal (`put`, `drop`, `assign`), so the producer applies records to the live
state and rolls back a rejected record or a failed block write in O(changes), instead of copying the whole state
per block. Objects too rich to journal field by field (a subnet's uid table, its bonds) are replaced, not mutated.

Per-subnet rules come from `LedgerConfig.params(netuid)`. A subnet with an owner accrues `owner_cut` of every mint
in `owner_pending` and pays it in its epoch record (subtensor's PendingOwnerCut; paid to the owner's free balance
here, where subtensor stakes it to the owner's hotkey). On a commit-reveal subnet validators send `commit` records
(a hash) and, exactly `reveal_period_epochs` later, `reveal` records that set the weights as a weights record would;
commits not revealed by then are dropped at the end of their reveal epoch. With a non-static `emission_split`,
weights records on netuid 0 are root weights over netuids, and each epoch end records a `split` (moe.ledger.root).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe.ledger.emission import block_emission, split_between_subnets, split_by_weights, split_emission
from moe.ledger.escrow import apply_escrow, apply_settle, apply_withdraw
from moe.ledger.fields import describe, exactly_equal
from moe.ledger.genesis import ROOT_NETUID, GenesisConfig, LedgerConfig, SubnetParams
from moe.ledger.records import (
    Record,
    RecordError,
    check_signed,
    commit_hash,
    is_address,
    parse_weights,
    require_int,
    signature_ok,
)
from moe.ledger.registration import (
    RegistrationError,
    SubnetRegistry,
    adjust_toward_target,
    pow_seal,
    registration_prefix,
    seal_meets_difficulty,
)
from moe.ledger.root import check_split, split_shares
from moe.ledger.weights import WeightSubmission
from moe.ledger.yuma import yuma_epoch

logger = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-9
MAX_PENDING_COMMITS = 10
"""Unrevealed weight commits one validator may hold on one subnet (subtensor's limit)."""
YUMA1 = {
    "yuma_version": 1,
    "liquid_alpha": False,
    "alpha_low": 0.7,
    "alpha_high": 0.9,
    "alpha_sigmoid_steepness": 1000.0,
}
"""Yuma settings under which `yuma_epoch` is called exactly as before these settings existed."""
_MISSING = object()


@dataclass
class SubnetState:
    """Per-subnet part of the state."""

    registry: SubnetRegistry
    difficulty: int
    burn: int
    registrations: int = 0
    """Registrations in the current adjustment interval."""
    pending: int = 0
    """Rao minted for this subnet and not yet paid out (paid at the end of each epoch)."""
    weights: dict[str, tuple[int, dict[int, int]]] = field(default_factory=dict)
    """Validator -> (height set, {uid: u16 weight}); the latest submission counts."""
    last_set: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Validator -> (epoch, height) of its latest submission, for the rate limit."""
    bonds: dict[str, np.ndarray] = field(default_factory=dict)
    """Validator -> (max_uids,) column-normalized bonds from the last epoch."""
    last_epoch_height: int = -1
    latest_epoch: Record | None = None
    owner_pending: int = 0
    """Rao of the owner's cut minted since the last epoch (paid at the end of each epoch)."""
    commits: dict[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)
    """Validator -> its unrevealed weight commits as (commit epoch, hash), oldest first."""
    trust: dict[int, float] = field(default_factory=dict)
    """Uid -> share of its stake-weighted weight that survived consensus clipping in the latest epoch."""
    validator_trust: dict[str, float] = field(default_factory=dict)
    """Validator -> sum of its normalized weights left after consensus clipping in the latest epoch."""


@dataclass
class LedgerState:
    """Everything derived from the blocks so far."""

    config: LedgerConfig
    chain_id: str = ""
    balances: dict[str, int] = field(default_factory=dict)
    """Free rao per address."""
    stakes: dict[str, int] = field(default_factory=dict)
    """Staked rao per address (global, as a hotkey's stake counts on every subnet it is registered on)."""
    nonces: dict[str, int] = field(default_factory=dict)
    """Next expected nonce of stake/transfer records per address (replay protection)."""
    total_issuance: int = 0
    """Rao in existence: balances + stakes + escrows + pending emission; minting adds, burn registration removes."""
    burned: int = 0
    """Rao recycled by burn registrations."""
    subnets: dict[int, SubnetState] = field(default_factory=dict)
    distill: dict[str, tuple[int, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    """Distiller hotkey -> (epoch, {expert: (positions served, gate-weighted credit in thousandths)}): each
    distiller's latest signed totals of who taught its student (records.distill_record)."""
    escrow: dict[str, int] = field(default_factory=dict)
    """Consumer -> rao held in escrow for paying experts (moe.ledger.escrow)."""
    unlocking: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Consumer -> (rao, unlock height) of its announced escrow withdrawal."""
    settled: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    """(consumer, expert) -> (ticket counter, bytes, rao) of the latest settled claim: each ticket settles once."""
    paid: dict[str, int] = field(default_factory=dict)
    """Expert -> rao received from settlements in total."""
    root_weights: dict[str, tuple[int, dict[int, int]]] = field(default_factory=dict)
    """Validator -> (height set, {netuid: u16 weight}) on the root netuid (non-static emission_split only)."""
    root_last_set: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Validator -> (epoch, height) of its latest root weights, for the rate limit."""
    latest_split: Record | None = None
    """The latest split record; until one exists the genesis subnet_shares apply."""
    split: tuple[tuple[int, float], ...] | None = None
    """(netuid, share) pairs of `latest_split`, which each block's mint follows."""
    recent_hashes: dict[str, int] = field(default_factory=dict)
    """Block hash -> height for the registration window."""
    _recent_order: deque = field(default_factory=deque)
    height: int = -1
    head_hash: str = "0" * 64
    dirty: set[str] = field(default_factory=set)
    """Addresses changed since the caller last cleared this (to update the accounts table)."""

    _undo: list[tuple[Callable[..., Any], tuple]] = field(default_factory=list, repr=False, compare=False)
    """Undo journal since the last `commit`: (function, args) calls that restore what changed, newest last."""
    _params: dict[int, SubnetParams] = field(default_factory=dict, repr=False, compare=False)
    """Cache of `params`: the config is fixed at genesis."""
    _emission_seen: tuple[Record, dict[int, int], int, Record] | None = field(default=None, repr=False, compare=False)
    """(recorded, split, minted, expected) of the last emission record a replay found equal to the mint it expected.
    Replays share one parsed record between blocks with the same text (`read_blocks`), so the next block's record,
    if it is that very object and the mint is the same, needs no second comparison. Never mutated, never undone."""

    def copy(self) -> LedgerState:
        """A deep, independent snapshot (with an empty journal)."""
        undo, self._undo = self._undo, []
        try:
            return copy.deepcopy(self)
        finally:
            self._undo = undo

    # ---- journaled changes ---------------------------------------------------------------------------------------

    def put(self, d: dict, key: Any, value: Any) -> None:
        """d[key] = value, undoably."""
        old = d.get(key, _MISSING)
        self._undo.append((d.pop, (key,)) if old is _MISSING else (d.__setitem__, (key, old)))
        d[key] = value

    def drop(self, d: dict, key: Any) -> None:
        """del d[key] if present, undoably."""
        if key in d:
            self._undo.append((d.__setitem__, (key, d.pop(key))))

    def assign(self, obj: object, name: str, value: Any) -> None:
        """setattr(obj, name, value), undoably."""
        self._undo.append((setattr, (obj, name, getattr(obj, name))))
        setattr(obj, name, value)

    def mark(self) -> int:
        """A point to `rollback` to."""
        return len(self._undo)

    def rollback(self, mark: int = 0) -> None:
        """Undo every change made since `mark`, newest first."""
        undo = self._undo
        while len(undo) > mark:
            fn, args = undo.pop()
            fn(*args)

    def commit(self) -> None:
        """Forget the journal: changes so far can no longer be undone."""
        self._undo.clear()

    # ---- reading and small updates -------------------------------------------------------------------------------

    def epoch_of(self, height: int) -> int:
        return height // self.config.tempo

    def params(self, netuid: int) -> SubnetParams:
        """The subnet's resolved hyperparameters (`LedgerConfig.params`), cached."""
        p = self._params.get(netuid)
        if p is None:
            p = self._params[netuid] = self.config.params(netuid)
        return p

    def credit(self, address: str, amount: int) -> None:
        self.put(self.balances, address, self.balances.get(address, 0) + amount)
        self._touch(address)

    def _touch(self, address: str) -> None:
        if address not in self.dirty:
            self.dirty.add(address)
            self._undo.append((self.dirty.discard, (address,)))

    def consume_nonce(self, address: str, record: Record) -> None:
        """Take the record's nonce as `address`'s next one (journaled), or raise RecordError if it is not the one
        expected: a signed record that moves funds can be applied once, in its signer's order."""
        nonce, expected = require_int(record, "nonce", 0), self.nonces.get(address, 0)
        if nonce != expected:
            raise RecordError(f"nonce {nonce} of {address[:16]} is not the expected {expected}")
        self.put(self.nonces, address, expected + 1)

    def remember_hash(self, height: int, block_hash: str) -> None:
        """Make `block_hash` the head at `height` and a recent hash, forgetting those past the registration window.

        Once a block, so one journal entry (`_forget_hash`) takes all of it back.
        """
        order, recent = self._recent_order, self.recent_hashes
        evicted: list[tuple[str, Any]] = []
        was = recent.get(block_hash, _MISSING)
        self._undo.append((self._forget_hash, (self.height, self.head_hash, block_hash, was, evicted)))
        self.height, self.head_hash = height, block_hash
        recent[block_hash] = height
        order.append(block_hash)
        while len(order) > self.config.registration_window:
            gone = order.popleft()
            evicted.append((gone, recent.pop(gone, _MISSING)))

    def _forget_hash(self, height: int, head_hash: str, block_hash: str, was: Any, evicted: list) -> None:
        """Undo one `remember_hash`: its steps inverted, newest first."""
        order, recent = self._recent_order, self.recent_hashes
        for gone, value in reversed(evicted):
            if value is not _MISSING:
                recent[gone] = value
            order.appendleft(gone)
        order.pop()
        if was is _MISSING:
            del recent[block_hash]
        else:
            recent[block_hash] = was
        self.height, self.head_hash = height, head_hash


def genesis_state(record: Record) -> LedgerState:
    """State after block 0; raises RecordError if the genesis record is malformed (any field of the wrong type)."""
    try:
        genesis = GenesisConfig.from_record(record)
    except ValueError as e:  # RecordError included
        raise RecordError(f"malformed genesis record: {e}") from None
    cfg = genesis.ledger
    st = LedgerState(config=cfg, chain_id=genesis.chain_id)
    for name in ("balances", "stakes"):
        for addr, v in getattr(genesis, name).items():
            getattr(st, name)[addr] = v
            st.total_issuance += v
            st.dirty.add(addr)
    for n in sorted(cfg.subnet_shares):
        p = st.params(n)
        st.subnets[n] = SubnetState(
            registry=SubnetRegistry(p.max_uids, p.immunity_period),
            difficulty=cfg.initial_difficulty,
            burn=cfg.initial_burn,
        )
    st.commit()
    return st


def _subnet(st: LedgerState, record: Record) -> tuple[int, SubnetState]:
    netuid = require_int(record, "netuid", 0)
    if netuid not in st.subnets:
        raise RecordError(f"unknown netuid {netuid}")
    return netuid, st.subnets[netuid]


def apply_signed(
    st: LedgerState, record: Record, height: int, *, check_signature: bool | Callable[[Record], bool] = True
) -> None:
    """Validate `record` against `st` at block `height` and apply it; raises RecordError (state unchanged) if invalid.

    `check_signature=False` only for replaying a local file already verified; peers' records are always checked.
    A callable stands in for the signature check (`verify` passes the verdicts its worker processes computed).
    """
    kind = check_signed(record)
    handler = _HANDLERS[kind]
    if callable(check_signature):
        sig_ok = check_signature(record)
    else:
        sig_ok = not check_signature or signature_ok(record)
    if not sig_ok:
        raise RecordError(f"bad signature on {kind} record")
    mark = st.mark()
    try:
        handler(st, record, height)
    except BaseException:
        st.rollback(mark)
        raise


def _apply_register(st: LedgerState, rec: Record, height: int) -> None:
    netuid, sub = _subnet(st, rec)
    hotkey = rec.get("hotkey")
    if not is_address(hotkey):
        raise RecordError("register record has no valid hotkey")
    if rec.get("block_hash") not in st.recent_hashes:
        raise RecordError(f"registration block hash is not among the last {st.config.registration_window} blocks")
    try:
        sub.registry.check(hotkey, height)
    except RegistrationError as e:
        raise RecordError(str(e)) from None
    burn = 0
    if "nonce" in rec and "burn" not in rec:
        nonce = require_int(rec, "nonce", 0)
        try:
            seal = pow_seal(registration_prefix(netuid, rec["block_hash"], bytes.fromhex(hotkey)), nonce)
        except ValueError as e:
            raise RecordError(f"bad registration seal input: {e}") from None
        if not seal_meets_difficulty(seal, sub.difficulty):
            raise RecordError(f"seal does not meet difficulty {sub.difficulty}")
    elif "burn" in rec and "nonce" not in rec:
        burn = require_int(rec, "burn", 0)
        if burn < sub.burn:
            raise RecordError(f"burn {burn} rao is below the subnet's cost {sub.burn}")
        if st.balances.get(hotkey, 0) < burn:
            raise RecordError(f"balance of {hotkey[:16]} cannot cover a burn of {burn} rao")
    else:
        raise RecordError("register record needs exactly one of nonce or burn")
    uid, pruned = _writable_registry(st, sub).register(hotkey, height)
    if pruned is not None:
        st.drop(sub.weights, pruned)
        st.drop(sub.last_set, pruned)
        st.drop(sub.commits, pruned)
    if sub.bonds:  # the uid's new holder inherits no bonds; fresh arrays, as the old ones stay in the journal
        st.assign(sub, "bonds", {hk: _zero_column(b, uid) for hk, b in sub.bonds.items() if hk != pruned})
    if burn:
        st.credit(hotkey, -burn)
        st.assign(st, "total_issuance", st.total_issuance - burn)
        st.assign(st, "burned", st.burned + burn)
    st.assign(sub, "registrations", sub.registrations + 1)


def _writable_registry(st: LedgerState, sub: SubnetState) -> SubnetRegistry:
    """Copy-on-write: swap in a copy of the subnet's uid table (the original stays in the journal) and return it."""
    reg = sub.registry.copy()
    st.assign(sub, "registry", reg)
    return reg


def _zero_column(bonds: np.ndarray, uid: int) -> np.ndarray:
    out = bonds.copy()
    out[uid] = 0.0
    return out


def _apply_stake(st: LedgerState, rec: Record, height: int) -> None:
    hotkey = rec.get("hotkey")
    if not is_address(hotkey):
        raise RecordError("stake record has no valid hotkey")
    amount = require_int(rec, "amount")
    st.consume_nonce(hotkey, rec)
    if amount == 0:
        raise RecordError("stake amount must be non-zero")
    if amount > 0 and st.balances.get(hotkey, 0) < amount:
        raise RecordError(f"balance of {hotkey[:16]} cannot cover a stake of {amount} rao")
    if amount < 0 and st.stakes.get(hotkey, 0) < -amount:
        raise RecordError(f"stake of {hotkey[:16]} cannot cover an unstake of {-amount} rao")
    st.credit(hotkey, -amount)
    st.put(st.stakes, hotkey, st.stakes.get(hotkey, 0) + amount)


def _apply_transfer(st: LedgerState, rec: Record, height: int) -> None:
    src, dst = rec.get("src"), rec.get("dst")
    if not is_address(src) or not is_address(dst):
        raise RecordError("transfer record needs valid src and dst addresses")
    amount = require_int(rec, "amount", 1)
    st.consume_nonce(src, rec)
    if st.balances.get(src, 0) < amount:
        raise RecordError(f"balance of {src[:16]} cannot cover a transfer of {amount} rao")
    st.credit(src, -amount)
    st.credit(dst, amount)


def _apply_weights(st: LedgerState, rec: Record, height: int) -> None:
    sub_rec = parse_weights(rec)
    if sub_rec.netuid == ROOT_NETUID and st.config.emission_split != "static":
        _apply_root_weights(st, sub_rec, height)
        return
    netuid, sub = _subnet(st, rec)
    if st.params(netuid).commit_reveal:
        raise RecordError(f"netuid {netuid} uses commit-reveal: commit a hash of the weights and reveal it later")
    _set_weights(st, netuid, sub, sub_rec, height, check_epoch=True)


def _set_weights(
    st: LedgerState, netuid: int, sub: SubnetState, sub_rec: WeightSubmission, height: int, *, check_epoch: bool
) -> None:
    """Make `sub_rec` the validator's weights on `netuid` from `height` on (a weights record, or a reveal, whose
    epoch is its commit's and is checked by the caller instead)."""
    try:
        sub_rec.validate_shape()
    except ValueError as e:
        raise RecordError(f"bad weights: {e}") from None
    v = sub_rec.validator
    if sub.registry.uid_of(v) is None:
        raise RecordError(f"validator {v[:16]} is not registered on netuid {netuid}")
    if st.stakes.get(v, 0) <= 0:
        raise RecordError(f"validator {v[:16]} has no stake")
    epoch = st.epoch_of(height)
    if check_epoch and sub_rec.epoch != epoch:
        raise RecordError(f"stale epoch {sub_rec.epoch}: current epoch is {epoch}")
    unknown = [u for u in sub_rec.uids if u not in sub.registry.slots]
    if unknown:
        raise RecordError(f"unknown uid {unknown[0]} on netuid {netuid}")
    _rate_limit(st, sub.last_set.get(v), v, netuid, epoch, height)
    st.put(sub.weights, v, (height, dict(zip(sub_rec.uids, sub_rec.weights, strict=True))))
    st.put(sub.last_set, v, (epoch, height))


def _rate_limit(st: LedgerState, last: tuple[int, int] | None, v: str, netuid: int, epoch: int, height: int) -> None:
    """Raise RecordError if `v` set weights on `netuid` this epoch or fewer than weights_rate_limit blocks ago."""
    if last is not None and last[0] == epoch:
        raise RecordError(f"rate limit: {v[:16]} already set weights on netuid {netuid} in epoch {epoch}")
    if last is not None and height - last[1] < st.config.weights_rate_limit:
        raise RecordError(f"rate limit: {v[:16]} set weights {height - last[1]} blocks ago")


def _apply_root_weights(st: LedgerState, sub_rec: WeightSubmission, height: int) -> None:
    """Root weights: uids are subnet netuids. Any staked hotkey may set them, no registration (subtensor required
    a root registration, which only its top-staked hotkeys kept); commit-reveal never applies on root, as in
    subtensor, whose root weights (set_root_weights) were always plain."""
    try:
        sub_rec.validate_shape()
    except ValueError as e:
        raise RecordError(f"bad root weights: {e}") from None
    v = sub_rec.validator
    if st.stakes.get(v, 0) <= 0:
        raise RecordError(f"validator {v[:16]} has no stake")
    epoch = st.epoch_of(height)
    if sub_rec.epoch != epoch:
        raise RecordError(f"stale epoch {sub_rec.epoch}: current epoch is {epoch}")
    unknown = [n for n in sub_rec.uids if n not in st.subnets]
    if unknown:
        raise RecordError(f"root weights name netuid {unknown[0]}, which is not a subnet")
    _rate_limit(st, st.root_last_set.get(v), v, ROOT_NETUID, epoch, height)
    st.put(st.root_weights, v, (height, dict(zip(sub_rec.uids, sub_rec.weights, strict=True))))
    st.put(st.root_last_set, v, (epoch, height))


def _commit_reveal_subnet(st: LedgerState, rec: Record) -> tuple[int, SubnetState, SubnetParams]:
    netuid, sub = _subnet(st, rec)
    p = st.params(netuid)
    if not p.commit_reveal:
        raise RecordError(f"commit-reveal is off on netuid {netuid}: set weights with a weights record")
    return netuid, sub, p


def _apply_commit(st: LedgerState, rec: Record, height: int) -> None:
    """Store a validator's weight commit for the current epoch; the weights stay hidden until its reveal.

    Stricter than subtensor, whose commits need only a registration and are rate-limited by blocks: here the
    committer needs stake (only staked validators' weights count) and commits at most once an epoch, and each
    commit is revealed or expires on its own (subtensor's reveal also drops every older commit before it).
    """
    netuid, sub, _ = _commit_reveal_subnet(st, rec)
    v, epoch = rec["hotkey"], st.epoch_of(height)
    if sub.registry.uid_of(v) is None:
        raise RecordError(f"validator {v[:16]} is not registered on netuid {netuid}")
    if st.stakes.get(v, 0) <= 0:
        raise RecordError(f"validator {v[:16]} has no stake")
    if rec["epoch"] != epoch:
        raise RecordError(f"stale epoch {rec['epoch']}: current epoch is {epoch}")
    pending = sub.commits.get(v, ())
    if any(e == epoch for e, _ in pending):
        raise RecordError(f"rate limit: {v[:16]} already committed weights on netuid {netuid} in epoch {epoch}")
    if len(pending) >= MAX_PENDING_COMMITS:
        raise RecordError(f"too many unrevealed commits: {v[:16]} holds {len(pending)} on netuid {netuid}")
    st.put(sub.commits, v, (*pending, (epoch, rec["hash"])))


def _apply_reveal(st: LedgerState, rec: Record, height: int) -> None:
    """Set the weights a pending commit hid, exactly `reveal_period_epochs` after the commit's epoch; the commit is
    consumed, so the reveal cannot be replayed."""
    netuid, sub, p = _commit_reveal_subnet(st, rec)
    v, epoch, now = rec["hotkey"], rec["epoch"], st.epoch_of(height)
    due = epoch + p.reveal_period_epochs
    if now < due:
        raise RecordError(f"reveal too early: the commit of epoch {epoch} may be revealed in epoch {due}, not {now}")
    if now > due:
        raise RecordError(f"reveal too late: the commit of epoch {epoch} expired at the end of epoch {due}")
    pending = sub.commits.get(v, ())
    if not any(e == epoch for e, _ in pending):
        raise RecordError(f"no pending commit of {v[:16]} on netuid {netuid} for epoch {epoch} (or already revealed)")
    digest = commit_hash(v, netuid, epoch, rec["uids"], rec["weights"], rec["salt"])
    if (epoch, digest) not in pending:
        raise RecordError(f"reveal does not match the commit of epoch {epoch} (wrong salt or altered weights)")
    sub_rec = WeightSubmission(netuid, epoch, v, list(rec["uids"]), list(rec["weights"]))
    _set_weights(st, netuid, sub, sub_rec, height, check_epoch=False)
    rest = tuple(c for c in pending if c[0] != epoch)
    if rest:
        st.put(sub.commits, v, rest)
    else:
        st.drop(sub.commits, v)


def _drop_expired_commits(st: LedgerState, epoch: int) -> None:
    """At the end of `epoch`, forget commits whose reveal epoch it was (commit epoch + reveal period <= epoch)."""
    for netuid, sub in st.subnets.items():
        if not sub.commits:
            continue
        period = st.params(netuid).reveal_period_epochs
        for v, pending in list(sub.commits.items()):
            live = tuple(c for c in pending if c[0] + period > epoch)
            if not live:
                st.drop(sub.commits, v)
            elif len(live) < len(pending):
                st.put(sub.commits, v, live)


def _apply_distill(st: LedgerState, rec: Record, height: int) -> None:
    """A distiller's new totals replace its previous ones; an epoch not after the last is a replay and refused."""
    hotkey, epoch = rec["hotkey"], rec["epoch"]
    last = st.distill.get(hotkey, (-1, {}))[0]
    if epoch <= last:
        raise RecordError(f"distill record epoch {epoch} of {hotkey[:16]} is not after its last, {last}")
    st.put(st.distill, hotkey, (epoch, {k: (p, c) for k, p, c in rec["credits"]}))


def distill_shares(st: LedgerState) -> dict[str, float]:
    """Each expert's share of all distillers' recorded gate-weighted credit."""
    total: dict[str, int] = {}
    for _, credits in st.distill.values():
        for expert, (_, credit) in credits.items():
            total[expert] = total.get(expert, 0) + credit
    mass = sum(total.values())
    return {k: v / mass for k, v in sorted(total.items())} if mass else {}


_HANDLERS = {
    "register": _apply_register,
    "stake": _apply_stake,
    "transfer": _apply_transfer,
    "distill": _apply_distill,
    "weights": _apply_weights,
    "commit": _apply_commit,
    "reveal": _apply_reveal,
    "escrow": apply_escrow,
    "withdraw": apply_withdraw,
    "settle": apply_settle,
}


def _close(a: list, b: list) -> bool:
    if not isinstance(a, list) or len(a) != len(b):
        return False
    return all(isinstance(x, float) and math.isclose(x, y, abs_tol=FLOAT_TOLERANCE) for x, y in zip(a, b, strict=True))


def _epoch(st: LedgerState, netuid: int, height: int) -> tuple[Record, dict[str, np.ndarray], tuple[dict, dict]]:
    """Run Yuma on the subnet's latest signed weights and stakes with the subnet's settings; the epoch record, the
    new bonds per validator, and the (per uid, per validator) trust."""
    cfg, sub, p = st.config, st.subnets[netuid], st.params(netuid)
    reg = sub.registry
    uids = sorted(reg.slots)
    staked = [(reg.slots[u].hotkey, u) for u in uids if st.stakes.get(reg.slots[u].hotkey, 0) > 0]
    staked.sort(key=lambda hu: (-st.stakes[hu[0]], hu[1]))
    vals = sorted(staked[: cfg.max_validators], key=lambda hu: hu[1])  # validator rows in uid order
    V, M = len(vals), p.max_uids
    W = np.zeros((V, M))  # (V, M)
    B = np.zeros((V, M))  # (V, M)
    S = np.array([float(st.stakes[h]) for h, _ in vals])  # (V,)
    registered_at = {u: reg.slots[u].registered_at for u in uids}
    recent = np.zeros(M, dtype=bool)  # (M,) uids registered since the last epoch lose their old bonds
    recent[[u for u in uids if registered_at[u] > sub.last_epoch_height]] = True
    for i, (hk, vuid) in enumerate(vals):
        if hk in sub.weights:
            set_at, row = sub.weights[hk]
            # weights set before a uid's (re)registration or on oneself do not count
            kept = [(u, w) for u, w in row.items() if registered_at.get(u, set_at) < set_at and u != vuid]
            if kept:
                cols, ws = zip(*kept, strict=True)
                W[i, list(cols)] = ws
        if hk in sub.bonds:
            B[i] = np.where(recent, 0.0, sub.bonds[hk])
    res = yuma_epoch(W, S, B, **_yuma_kwargs(p))
    rec: Record = {
        "kind": "epoch",
        "netuid": netuid,
        "epoch": st.epoch_of(height),
        "uids": uids,
        "hotkeys": [reg.slots[u].hotkey for u in uids],
        "consensus": res.consensus[uids].tolist(),
        "incentive": res.incentive[uids].tolist(),
        "validators": [h for h, _ in vals],
        "validator_stakes": [st.stakes[h] for h, _ in vals],
        "dividends": res.dividends.tolist(),
        "emission": sub.pending,
    }
    rec.update(_payouts(sub.pending, cfg.miner_share, rec["incentive"], rec["dividends"], rec["validator_stakes"]))
    if p.owner is not None:
        rec.update(owner=p.owner, owner_payout=sub.owner_pending)
    trust = _trust(W, S, res.consensus)
    trusts = ({u: float(trust[u]) for u in uids}, {h: float(res.validator_trust[i]) for i, (h, _) in enumerate(vals)})
    return rec, {h: res.bonds[i].copy() for i, (h, _) in enumerate(vals)}, trusts


def _yuma_kwargs(p: SubnetParams) -> dict[str, Any]:
    """The subnet's Yuma settings as `yuma_epoch` keywords; the version-3 and liquid-alpha ones only when set, so a
    subnet on the defaults calls Yuma exactly as ledgers written before per-subnet settings did."""
    kw: dict[str, Any] = {"kappa": p.kappa, "bond_alpha": p.bond_alpha, "bond_penalty": p.bond_penalty}
    extra = {name: getattr(p, name) for name in YUMA1}
    if extra != YUMA1:
        kw.update(extra)
    return kw


def _trust(W: np.ndarray, S: np.ndarray, consensus: np.ndarray) -> np.ndarray:
    """(M,) per miner, the share of its stake-weighted normalized weight left after clipping at consensus
    (subtensor's Trust); 0 for a miner nobody weighs. Shown by `hivemoe ledger show`, never recorded."""
    s = S / S.sum() if S.sum() > 0 else np.zeros_like(S)  # (V,)
    t = W.sum(axis=1, keepdims=True)  # (V, 1)
    Wn = np.divide(W, t, out=np.zeros_like(W), where=t > 0)  # (V, M)
    rank = s @ Wn  # (M,)
    clipped = s @ np.minimum(Wn, consensus[None, :])  # (M,)
    return np.divide(clipped, rank, out=np.zeros_like(rank), where=rank > 0)


def _payouts(pending: int, miner_share: float, incentive: list, dividends: list, stakes: list) -> dict[str, Any]:
    """Integer rao per miner and validator; any rao nobody can earn (no validators at all) carry to next epoch."""
    zeros_m, zeros_v = [0] * len(incentive), [0] * len(dividends)
    if sum(incentive) > 0 and sum(dividends) > 0:
        m, v = split_emission(pending, miner_share)
        return {"miner_payouts": split_by_weights(m, incentive), "validator_payouts": split_by_weights(v, dividends)}
    if sum(incentive) > 0:
        return {"miner_payouts": split_by_weights(pending, incentive), "validator_payouts": zeros_v}
    if sum(stakes) > 0:  # no weights yet: validators earn by stake, as subtensor does
        return {"miner_payouts": zeros_m, "validator_payouts": split_by_weights(pending, stakes)}
    return {"miner_payouts": zeros_m, "validator_payouts": zeros_v}


def _apply_epoch(
    st: LedgerState, rec: Record, bonds: dict[str, np.ndarray], height: int, trusts: tuple[dict, dict] = ({}, {})
) -> None:
    sub = st.subnets[rec["netuid"]]
    if "owner" in rec and rec["owner_payout"]:
        st.credit(rec["owner"], rec["owner_payout"])
        st.assign(sub, "owner_pending", sub.owner_pending - rec["owner_payout"])
    paid = 0
    for hk, amt in [
        *zip(rec["hotkeys"], rec["miner_payouts"], strict=True),
        *zip(rec["validators"], rec["validator_payouts"], strict=True),
    ]:
        if amt:
            st.credit(hk, amt)
            paid += amt
    st.assign(sub, "pending", sub.pending - paid)
    st.assign(sub, "bonds", bonds)
    scores = {u: i for u, i in zip(rec["uids"], rec["incentive"], strict=True)}
    div = dict(zip(rec["validators"], rec["dividends"], strict=True))
    for u, hk in zip(rec["uids"], rec["hotkeys"], strict=True):
        scores[u] += div.get(hk, 0.0)
    _writable_registry(st, sub).set_scores(scores)
    st.assign(sub, "last_epoch_height", height)
    st.assign(sub, "latest_epoch", rec)
    st.assign(sub, "trust", trusts[0])
    st.assign(sub, "validator_trust", trusts[1])


def end_block(st: LedgerState, height: int, recorded: list[Record] | None = None) -> list[Record]:
    """Mint this block's emission, run epochs and adjustments due at `height`; returns the derived records.

    With `recorded` (replay), each derived record must match the recomputed one (floats within 1e-9, integers
    exactly, payouts recomputed from the recorded floats) and the recorded one is applied; else RecordError.
    """
    cfg = st.config
    out: list[Record] = []
    expected: list[tuple[Record, Any]] = []
    minted = block_emission(st.total_issuance)
    per = _subnet_split(minted, st.split or tuple(cfg.subnet_shares.items()))
    seen = st._emission_seen
    if recorded and seen is not None and recorded[0] is seen[0] and seen[1] is per and seen[2] == minted:
        expected.append((seen[3], "checked"))  # the very record already found equal to this mint (see the field)
    else:
        expected.append(({"kind": "emission", "minted": minted, "subnets": {str(n): a for n, a in per.items()}}, None))
    epoch_end = (height + 1) % cfg.tempo == 0
    if epoch_end:  # epochs run after the mint, so they pay out this block's emission too
        expected.extend((None, n) for n in sorted(st.subnets))
        split = _split(st, height) if cfg.emission_split != "static" else None
        if split is not None:  # epochs change neither stakes nor root weights: computed up front all the same
            expected.append((split, "split"))
    if recorded is not None and len(recorded) != len(expected):
        raise RecordError(f"expected {len(expected)} derived records, found {len(recorded)}")
    for i, (rec, netuid) in enumerate(expected):
        if netuid == "split":
            rec = rec if recorded is None else check_split(recorded[i], rec)
            st.assign(st, "latest_split", rec)
            st.assign(st, "split", tuple(zip(rec["netuids"], rec["shares"], strict=True)))
            out.append(rec)
            continue
        if rec is not None:  # emission
            if recorded is not None and netuid != "checked":
                if not exactly_equal(recorded[i], rec):
                    raise RecordError(f"emission record differs from replay, which gives {rec}")
                st._emission_seen = (recorded[i], per, minted, rec)
            st.assign(st, "total_issuance", st.total_issuance + minted)
            owners = cfg.subnet_owners
            for n, a in per.items():
                sub = st.subnets[n]
                cut = _owner_part(a, cfg.owner_cut) if n in owners else 0
                st.assign(sub, "pending", sub.pending + a - cut)
                if cut:
                    st.assign(sub, "owner_pending", sub.owner_pending + cut)
            out.append(rec)
            continue
        rec, bonds, trusts = _epoch(st, netuid, height)
        if recorded is not None:
            rec = _check_epoch(recorded[i], rec, cfg.miner_share)
        _apply_epoch(st, rec, bonds, height, trusts)
        out.append(rec)
    if epoch_end:
        _drop_expired_commits(st, st.epoch_of(height))
    if (height + 1) % cfg.adjustment_interval == 0:
        for n, sub in st.subnets.items():
            args = (sub.registrations, st.params(n).target_registrations)
            difficulty = adjust_toward_target(sub.difficulty, *args, cfg.min_difficulty, cfg.max_difficulty)
            st.assign(sub, "difficulty", difficulty)
            st.assign(sub, "burn", adjust_toward_target(sub.burn, *args, cfg.min_burn, cfg.max_burn))
            st.assign(sub, "registrations", 0)
    return out


@functools.lru_cache(maxsize=256)
def _owner_part(amount: int, owner_cut: float) -> int:
    """Rao of `amount` that goes to a subnet's owner: floor(amount * owner_cut), the cut read as its decimal."""
    return split_emission(amount, owner_cut)[0]


def _split(st: LedgerState, height: int) -> Record | None:
    """The split record due at the epoch end `height`: from the root weights of the top `max_validators` staked
    hotkeys with non-zero root weights; None (the previous split stays) when there are none."""
    cfg = st.config
    staked = [(h, st.stakes.get(h, 0)) for h, (_, row) in st.root_weights.items() if any(row.values())]
    staked = sorted((hs for hs in staked if hs[1] > 0), key=lambda hs: (-hs[1], hs[0]))[: cfg.max_validators]
    if not staked:
        return None
    vals = sorted(staked)
    netuids = sorted(st.subnets)
    rows = [st.root_weights[h][1] for h, _ in vals]
    shares = split_shares(cfg.emission_split, [s for _, s in vals], rows, netuids, cfg.kappa)
    if not any(shares):
        return None
    return {
        "kind": "split",
        "epoch": st.epoch_of(height),
        "mode": cfg.emission_split,
        "netuids": netuids,
        "shares": shares,
        "validators": [h for h, _ in vals],
        "validator_stakes": [s for _, s in vals],
    }


@functools.lru_cache(maxsize=64)
def _subnet_split(minted: int, shares: tuple[tuple[int, float], ...]) -> dict[int, int]:
    """Cached `split_between_subnets`: the shares change at most once an epoch and `minted` only at halvings.

    Callers must not mutate the returned dict (it is shared between blocks).
    """
    return split_between_subnets(minted, dict(shares))


def _check_epoch(got: Record, want: Record, miner_share: float) -> Record:
    """The recorded epoch `got` if it matches the recomputed `want`; raises RecordError naming the first mismatch."""
    if type(got) is not dict or got.keys() != want.keys():
        raise RecordError(f"epoch record has the wrong fields ({describe(got)})")
    exact = ("kind", "netuid", "epoch", "uids", "hotkeys", "validators", "validator_stakes", "emission")
    for key in exact + (("owner", "owner_payout") if "owner" in want else ()):
        if not exactly_equal(got[key], want[key]):
            raise RecordError(f"epoch record field {key!r} differs from replay")
    for key in ("consensus", "incentive", "dividends"):
        if not _close(got[key], want[key]):
            raise RecordError(f"epoch record field {key!r} differs from replay")
    if got["incentive"] == want["incentive"] and got["dividends"] == want["dividends"]:
        pay = {k: want[k] for k in ("miner_payouts", "validator_payouts")}  # same figures, same payouts
    else:
        pay = _payouts(got["emission"], miner_share, got["incentive"], got["dividends"], got["validator_stakes"])
    for key, value in pay.items():
        if not exactly_equal(got[key], value):
            raise RecordError(f"epoch record field {key!r} differs from the payouts its own figures imply")
    return got
