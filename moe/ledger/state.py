"""Ledger state and its transition function: how each record changes balances, stakes, uids, weights and bonds.

The state is never stored as truth; it is derived by replaying blocks through `apply_signed` and `end_block`
(moe.ledger.block_end), the same code the producer runs, so replicas fed the same records agree and `verify` can
re-derive everything.
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
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe.ledger.escrow import apply_escrow, apply_settle, apply_withdraw
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
    pow_seal,
    registration_prefix,
    seal_meets_difficulty,
)
from moe.ledger.weights import WeightSubmission

logger = logging.getLogger(__name__)

MAX_PENDING_COMMITS = 10
"""Unrevealed weight commits one validator may hold on one subnet (subtensor's limit)."""
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
    emission_checked: tuple[Record, dict[int, int], int] | None = field(default=None, repr=False, compare=False)
    """(recorded, split, minted) of the last emission record a replay found equal to the mint it expected
    (moe.ledger.block_end): the next block's record, if it is that very parsed object and the mint is the same,
    needs no second comparison. A cache of a verdict that stays true, so never undone."""

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
    uid, pruned = writable_registry(st, sub).register(hotkey, height)
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


def writable_registry(st: LedgerState, sub: SubnetState) -> SubnetRegistry:
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


def drop_expired_commits(st: LedgerState, epoch: int) -> None:
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
