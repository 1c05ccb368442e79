"""A snapshot of a running network as its DHT shows it: experts, validators and the ledger head, as plain data.

What `hivemoe status` prints, gathered by any peer (a client-mode one is enough). Every entry is hostile until it
opens: expert records go through `moe.net.discovery.parse_entries`, the other keys through the signed envelope
(`moe.net.dht_records.open_entries`), weight submissions must verify and name their signer, seed commitments must
verify, and a head counts only when signed by the pinned ledger host. Whatever fails is left out of the view and
counted in `NetworkView.rejected` by key; nothing read can raise out of `read_network_view`.

Keys read: `hivemoe/<netuid>/experts` (one per netuid asked for), `hivemoe/validators/weights`,
`hivemoe/validators/commits`, `hivemoe/ledger/head`. What no record carries is None: an expert's latency (the
status command measures it with moe.net.latency_probe) and price, and (until a validator reveals its verdict with
its `bpb` map) the measured bits per byte.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hivemind.utils import get_dht_time

from moe.ledger import RAO_PER_TAO, WeightSubmission
from moe.net.dht_records import (
    COMMIT_CONTEXT,
    COMMITS_KEY,
    HEAD_CONTEXT,
    HEAD_KEY,
    WEIGHTS_CONTEXT,
    WEIGHTS_KEY,
    experts_key,
    open_entries,
)
from moe.net.discovery import parse_entries
from moe.net.expert_record import ExpertRecord
from moe.net.ledger_client import LedgerHead, SubnetHead
from moe.net.signed import MalformedRecord, SignedValue, check_address, check_float, check_name
from moe.poi.commit import SeedCommit

logger = logging.getLogger(__name__)

MAX_FLAGS_PER_VERDICT = 4096
"""Most flagged hotkeys one validator's verdict may list before it is refused as garbage."""


@dataclass
class ExpertRow:
    """One expert whose signed record opened, with what validators and the ledger say about it."""

    hotkey: str
    uid: int
    """The uid the record claims."""
    ledger_uid: int | None
    """The uid the pinned ledger head gives this hotkey; None when unregistered or no head is pinned."""
    subnet: str
    netuid: int
    peer_id: str
    train_step: int
    claimed_bpb: float | None
    """The expert's own held-out bits per byte."""
    measured_bpb: float | None
    """Median over validators that revealed a measurement of this expert (None until validators publish one)."""
    latency_p50_ms: float | None
    """Median reply latency in milliseconds as measured by the reader (moe.net.latency_probe); None until probed or
    when the expert never answered: no record carries it."""
    price: float | None
    """The price its signed record announces, TAO per million bytes served (0: free)."""
    stake_tao: float | None
    """Stake on the pinned ledger; None without a pinned head."""
    incentive: float | None
    """Share of the miners' emission at the ledger's last epoch; None without a pinned head."""
    expires_in_seconds: float
    """Seconds until the record expires (exact: the signed expiration minus now)."""
    heartbeat_age_seconds: float
    """Seconds since the last heartbeat, estimated as `announce_ttl` minus `expires_in_seconds` (the record does not
    carry its TTL); 0 when the record lives longer than that TTL."""
    flags: dict[str, int] = field(default_factory=dict)
    """Cheat reason → number of validators whose revealed verdict flags this expert."""


@dataclass
class ValidatorRow:
    """A hotkey that published verified weights or a verified seed commitment."""

    hotkey: str
    ledger_uid: int | None
    stake_tao: float | None
    commit_epoch: int | None
    """Epoch of its latest verified seed commitment."""
    revealed: bool
    """Whether that commitment's seed is revealed (its verdict, flags included, is then final)."""
    flagged: int
    """Experts its revealed verdict flags."""
    weights_epoch: int | None
    """Epoch of its latest verified weight submission."""
    weights_netuid: int | None
    weights: dict[int, int] = field(default_factory=dict)
    """uid → u16 weight of that submission."""


@dataclass
class LedgerView:
    """The pinned host's head, or only who signed heads when no host is pinned (any key can sign one)."""

    host: str | None
    """The pinned host's address; None when the reader pinned none."""
    found: bool
    """Whether a valid head by the pinned host was read."""
    height: int | None = None
    epoch: int | None = None
    head_hash: str | None = None
    subnets: int | None = None
    """Ledger subnets the head lists."""
    registered: int | None = None
    """Hotkeys holding a uid on some subnet."""
    total_stake_tao: float | None = None
    issuance_tao: float | None = None
    """TAO issued so far, from the pinned head; None without one."""
    seed_sha256: str | None = None
    head_signers: list[str] = field(default_factory=list)
    """Every address that signed a well-formed head (the pinned host's among them, if found)."""


@dataclass
class SubnetRow:
    netuid: int
    name: str
    experts: int


@dataclass
class NetworkView:
    """What one read of the DHT showed; `to_json()` is the `hivemoe status --json` object."""

    taken_at: float
    """DHT time of the read (seconds since the epoch)."""
    subnets: list[SubnetRow]
    experts: list[ExpertRow]
    validators: list[ValidatorRow]
    ledger: LedgerView
    rejected: dict[str, int] = field(default_factory=dict)
    """Key → entries read there that failed verification or their schema (left out of the view)."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_json(self) -> dict:
        return {**asdict(self), "rejected_total": self.rejected_total}


class _Counter:
    """Counts what fails to open, per key, while the readers log and skip it."""

    def __init__(self):
        self.rejected: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        if n > 0:
            self.rejected[key] = self.rejected.get(key, 0) + n

    def opened(self, key: str, entries: Any, parse: Callable[[Any], tuple[str, Any]]) -> dict[str, Any]:
        """`open_entries`, counting the entries it skipped (a non-dictionary value counts as one)."""
        out = open_entries(key, entries, parse)
        if entries is not None:
            self.add(key, len(entries) - len(out) if isinstance(entries, dict) else 1)
        return out


def _get_all(dht, keys: list[str]) -> dict[str, Any]:
    """{key: subkey dictionary or None} for all keys at once; a failed lookup reads as empty (logged)."""
    futures = {key: dht.get(key, latest=True, return_future=True) for key in keys}
    out = {}
    for key, future in futures.items():
        try:
            found = future.result()
        except Exception as e:  # a peer vanishing mid-lookup must not end the view
            logger.warning("%s: DHT lookup failed: %s", key, e)
            found = None
        out[key] = None if found is None else found.value
    return out


def _signed(context: str) -> Callable[[Any], tuple[str, dict]]:
    return lambda raw: SignedValue.open(raw, context)


def _latest_submission(address: str, payload: dict, counter: _Counter) -> WeightSubmission | None:
    """The highest-epoch submission of `payload` that parses, verifies and is the signer's own; the rest counted."""
    items = payload.get("submissions")
    if not isinstance(items, list):
        counter.add(WEIGHTS_KEY)
        return None
    best = None
    for item in items:
        try:
            sub = WeightSubmission.from_dict(item)
            sub.validate_shape()
            if sub.validator != address or not sub.verify():
                raise ValueError("not signed by its publisher")
        except (ValueError, TypeError) as e:
            logger.warning("%s: skipping a submission of %s: %s", WEIGHTS_KEY, address[:16], e)
            counter.add(WEIGHTS_KEY)
            continue
        if best is None or sub.epoch > best.epoch:
            best = sub
    return best


@dataclass
class _Verdict:
    commit: SeedCommit
    revealed: bool
    flags: dict[str, list[str]]
    bpb: dict[str, float]


def _verdict(address: str, payload: dict) -> _Verdict:
    """A validator's commit payload checked field by field; raises MalformedRecord."""
    try:
        commit = SeedCommit.from_json(payload.get("commit"))
    except (ValueError, TypeError, AttributeError, OverflowError) as e:
        raise MalformedRecord(str(e)) from None
    if commit.validator != address or not commit.verify():
        raise MalformedRecord("seed commitment not signed by its publisher")
    seed, flags, bpb = payload.get("seed"), payload.get("flags", {}), payload.get("bpb", {})
    if seed is not None and not isinstance(seed, str):
        raise MalformedRecord("seed must be hex or null")
    if not isinstance(flags, dict) or len(flags) > MAX_FLAGS_PER_VERDICT or not isinstance(bpb, dict):
        raise MalformedRecord("flags and bpb must map hotkeys")
    checked_flags = {}
    for hk, reasons in flags.items():
        if not isinstance(reasons, list):
            raise MalformedRecord("flags must map hotkeys to lists of reasons")
        checked_flags[check_address("flagged hotkey", hk)] = sorted({check_name("flag", r) for r in reasons})
    checked_bpb = {
        check_address("bpb hotkey", hk): check_float("bpb", v, 0.0, 100.0) for hk, v in bpb.items() if v is not None
    }
    return _Verdict(commit, seed is not None, checked_flags if seed is not None else {}, checked_bpb)


def _ledger_view(heads: dict[str, dict], host: str | None, counter: _Counter) -> tuple[LedgerView, LedgerHead | None]:
    parsed: dict[str, LedgerHead] = {}
    for address, payload in heads.items():
        try:
            parsed[address] = LedgerHead.from_payload(address, payload)
        except MalformedRecord as e:
            logger.warning("%s: skipping the head of %s: %s", HEAD_KEY, address[:16], e)
            counter.add(HEAD_KEY)
    head = parsed.get(host) if host else None
    view = LedgerView(host=host, found=head is not None, head_signers=sorted(parsed))
    if head is not None:
        view.height, view.epoch, view.head_hash = head.height, head.epoch, head.head_hash
        view.subnets, view.registered, view.seed_sha256 = len(head.subnets), len(head.registered()), head.seed_sha256
        view.total_stake_tao = sum(head.stakes.values()) / RAO_PER_TAO
        view.issuance_tao = head.total_issuance / RAO_PER_TAO
    return view, head


def read_network_view(
    dht,
    netuids: Mapping[int, str] | list[int],
    ledger_host: str | None = None,
    announce_ttl: float = 20.0,
) -> NetworkView:
    """Read every key once (all lookups in flight together) and build the view; never raises on what it reads.

    `netuids` are the subnets to list (a mapping gives their names; experts name their own subnet otherwise);
    `ledger_host` pins whose head to believe (None: heads are only listed by signer); `announce_ttl` (seconds) is
    what heartbeat ages are estimated from.
    """
    names = dict(netuids) if isinstance(netuids, Mapping) else {int(n): "" for n in netuids}
    keys = [experts_key(n) for n in names] + [WEIGHTS_KEY, COMMITS_KEY, HEAD_KEY]
    raw = _get_all(dht, keys)
    now = get_dht_time()
    counter = _Counter()

    records: list[ExpertRecord] = []
    for netuid in names:
        key, entries = experts_key(netuid), raw[experts_key(netuid)]
        found = parse_entries(netuid, entries, now)
        counter.add(key, (len(entries) if isinstance(entries, dict) else int(entries is not None)) - len(found))
        records += found

    heads = counter.opened(HEAD_KEY, raw[HEAD_KEY], _signed(HEAD_CONTEXT))
    ledger, head = _ledger_view(heads, ledger_host, counter)

    weights = counter.opened(WEIGHTS_KEY, raw[WEIGHTS_KEY], _signed(WEIGHTS_CONTEXT))
    submissions = {a: _latest_submission(a, p, counter) for a, p in weights.items()}

    def open_commit(value: Any) -> tuple[str, _Verdict]:
        address, payload = SignedValue.open(value, COMMIT_CONTEXT)
        return address, _verdict(address, payload)

    verdicts: dict[str, _Verdict] = counter.opened(COMMITS_KEY, raw[COMMITS_KEY], open_commit)
    return NetworkView(
        taken_at=now,
        subnets=_subnet_rows(names, records),
        experts=[_expert_row(r, head, verdicts, now, announce_ttl) for r in records],
        validators=_validator_rows(submissions, verdicts, head),
        ledger=ledger,
        rejected=counter.rejected,
    )


def _subnet_rows(names: dict[int, str], records: list[ExpertRecord]) -> list[SubnetRow]:
    rows = []
    for netuid, name in sorted(names.items()):
        mine = [r for r in records if r.netuid == netuid]
        rows.append(SubnetRow(netuid, name or (mine[0].subnet if mine else ""), len(mine)))
    return rows


def _tao(rao: int | None) -> float | None:
    return None if rao is None else rao / RAO_PER_TAO


def _expert_row(
    r: ExpertRecord, head: LedgerHead | None, verdicts: dict[str, _Verdict], now: float, announce_ttl: float
) -> ExpertRow:
    measured = [v.bpb[r.hotkey] for v in verdicts.values() if r.hotkey in v.bpb]
    flags: dict[str, int] = {}
    for v in verdicts.values():
        for reason in v.flags.get(r.hotkey, []):
            flags[reason] = flags.get(reason, 0) + 1
    reg = None if head is None else head.uid_on(r.netuid, r.hotkey)
    expires_in = max(0.0, r.expiration - now)
    return ExpertRow(
        hotkey=r.hotkey,
        uid=r.uid,
        ledger_uid=None if reg is None else reg[0],
        subnet=r.subnet,
        netuid=r.netuid,
        peer_id=r.peer_id,
        train_step=r.train_step,
        claimed_bpb=r.claimed_eval_bpb,
        measured_bpb=statistics.median(measured) if measured else None,
        latency_p50_ms=None,
        price=r.price_tao_per_mbyte,
        stake_tao=None if head is None else _tao(head.stakes.get(r.hotkey, 0)),
        incentive=None if head is None else head.subnets.get(r.netuid, SubnetHead(1)).incentive.get(r.hotkey, 0.0),
        expires_in_seconds=expires_in,
        heartbeat_age_seconds=max(0.0, announce_ttl - expires_in),
        flags=dict(sorted(flags.items())),
    )


def _validator_rows(
    submissions: dict[str, WeightSubmission | None], verdicts: dict[str, _Verdict], head: LedgerHead | None
) -> list[ValidatorRow]:
    rows = []
    for address in sorted(set(verdicts) | {a for a, s in submissions.items() if s is not None}):
        sub, verdict = submissions.get(address), verdicts.get(address)
        netuid = None if sub is None else sub.netuid
        reg = None if head is None or netuid is None else head.uid_on(netuid, address)
        rows.append(
            ValidatorRow(
                hotkey=address,
                ledger_uid=None if reg is None else reg[0],
                stake_tao=None if head is None else _tao(head.stakes.get(address, 0)),
                commit_epoch=None if verdict is None else verdict.commit.epoch,
                revealed=verdict is not None and verdict.revealed,
                flagged=0 if verdict is None else len(verdict.flags),
                weights_epoch=None if sub is None else sub.epoch,
                weights_netuid=None if sub is None else sub.netuid,
                weights={} if sub is None else dict(zip(sub.uids, sub.weights, strict=True)),
            )
        )
    return rows
