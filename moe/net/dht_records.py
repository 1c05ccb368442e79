"""Signed records in the DHT: the hivemoe keys and what each may hold, the node-side guard every peer installs, and
storing and reading such records.

Every hivemoe key is a dictionary of subkeys, one per signer (its hotkey address), each value a `SignedValue` signed
for that key's context and expiring at most its `KeyRule.max_ttl` seconds ahead. `SignedRecordValidator` refuses
anything else under these keys (a plain value would replace the whole dictionary); `publish_signed` stores a node's
own payload under its own subkey; `open_entries` reads a key back, keeping only entries that open, fit their schema
and are filed under their signer's address (the rest are logged and skipped).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time

from moe.identity import Hotkey
from moe.net.expert_record import EXPERT_CONTEXT
from moe.net.signed import HEX_ADDRESS, MalformedRecord, SignedValue, check_float

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEAD_KEY = "hivemoe/ledger/head"
INBOX_KEY = "hivemoe/ledger/inbox"
WEIGHTS_KEY = "hivemoe/validators/weights"
COMMITS_KEY = "hivemoe/validators/commits"
SEED_KEY = "hivemoe/seed"
TRAFFIC_KEY = "hivemoe/router/traffic"
DISTILL_KEY = "hivemoe/distill/traffic"
HEAD_CONTEXT = "ledger-head"
INBOX_CONTEXT = "ledger-inbox"
WEIGHTS_CONTEXT = "validator-weights"
COMMIT_CONTEXT = "validator-commit"
SEED_CONTEXT = "seed-record"
TRAFFIC_CONTEXT = "router-traffic"
TRAFFIC_SLOT_CONTEXT = "router-traffic-slot"
DISTILL_CONTEXT = "distill-traffic"
MAX_TRAFFIC_SLOTS = 64
"""Calls one router publishes at most (moe.routing.traffic): its index key plus one slot key per call."""
MAX_NETUID = 65535
"""Largest netuid an expert record may name; the guard knows the experts key of every netuid up to it."""

EXPIRATION_SLACK = 1.0
"""Seconds a DHT entry may outlive the expiration its signed payload states (clock jitter between calls)."""
CLOCK_SKEW = 30.0
"""Seconds another peer's clock may run ahead of ours before its entries at a key's maximum TTL are refused."""
CAP_STEP = 60.0
"""Expiration caps count from now rounded up to a multiple of this many seconds. A reader that refuses one entry
refuses a peer's whole answer for the key (hivemind checks dictionaries all or nothing), so an entry stored at the
cap by a peer whose clock runs d seconds ahead must not fail on readers for more than d seconds per step."""


def experts_key(netuid: int) -> str:
    return f"hivemoe/{int(netuid)}/experts"


def traffic_slot_key(slot: int) -> str:
    """Where a router publishes the request of the `slot`-th receipt of its traffic index."""
    return f"{TRAFFIC_KEY}/{int(slot)}"


@dataclass(frozen=True)
class KeyRule:
    """What one hivemoe key may hold: values signed for `context`, each expiring at most `max_ttl` seconds ahead."""

    context: str
    max_ttl: float
    """Seconds; about ten times the TTL its publishers use by default, so a forged or stale entry vanishes soon."""


EXPERTS_RULE = KeyRule(EXPERT_CONTEXT, 600.0)
"""Every `experts_key(netuid)`: heartbeats announce with a TTL of 20-90 s."""
KEY_RULES = {
    HEAD_KEY: KeyRule(HEAD_CONTEXT, 600.0),  # re-published every block with a 30 s TTL
    INBOX_KEY: KeyRule(INBOX_CONTEXT, 600.0),  # registrations, 30 s TTL
    WEIGHTS_KEY: KeyRule(WEIGHTS_CONTEXT, 600.0),  # 60 s TTL
    COMMITS_KEY: KeyRule(COMMIT_CONTEXT, 3600.0),  # commit_ttl_seconds, 300 s by default
    SEED_KEY: KeyRule(SEED_CONTEXT, 1800.0),  # SeedPublisher, 180 s TTL by default
    TRAFFIC_KEY: KeyRule(TRAFFIC_CONTEXT, 3600.0),  # a router's sampled receipts, 600 s TTL by default
    DISTILL_KEY: KeyRule(DISTILL_CONTEXT, 3600.0),  # a distiller's credited teacher traffic, 600 s TTL by default
}


def dht_id(key: str) -> bytes:
    """The id hivemind files `key` under; validators see only this, never the key itself."""
    return DHTID.generate(source=key).to_bytes()


@functools.cache
def rules_by_dht_id() -> dict[bytes, KeyRule]:
    """The rule of every hivemoe key, by DHT id. Built once per process (about half a second, for the netuids)."""
    rules = {dht_id(experts_key(netuid)): EXPERTS_RULE for netuid in range(MAX_NETUID + 1)}
    rules.update({dht_id(key): rule for key, rule in KEY_RULES.items()})
    slot_rule = KeyRule(TRAFFIC_SLOT_CONTEXT, KEY_RULES[TRAFFIC_KEY].max_ttl)
    rules.update({dht_id(traffic_slot_key(k)): slot_rule for k in range(MAX_TRAFFIC_SLOTS)})
    return rules


def check_ttl(key: str, ttl: float) -> None:
    """Raise ValueError if entries under `key` living `ttl` seconds would be refused by the guard."""
    rule = rules_by_dht_id().get(dht_id(key))
    if rule is not None and not 0 < ttl <= rule.max_ttl:
        raise ValueError(f"ttl {ttl}s for {key} is outside (0, {rule.max_ttl}] s; peers would refuse the entries")


def publish_signed(dht, key: str, hotkey: Hotkey, payload: dict, context: str, ttl: float, wait: bool = True):
    """Sign `payload` (expiring ttl seconds ahead) and store it under `key`/hotkey; False if nobody stored it (with
    `wait=False`, a future of that instead, so many stores can go out at once).

    Raises ValueError if `ttl` exceeds the key's maximum (see `KEY_RULES`), since every peer would refuse the entry.
    """
    check_ttl(key, ttl)
    expiration = get_dht_time() + ttl
    value = SignedValue.sign(hotkey, {**payload, "expiration": expiration}, context=context)
    stored = dht.store(key, value, expiration_time=expiration, subkey=hotkey.address, return_future=not wait)
    return bool(stored) if wait else stored


def open_entries(key: str, entries: Any, parse: Callable[[Any], tuple[str, T]]) -> dict[str, T]:
    """{signer: record} from one key's {subkey: item} dictionary as `dht.get` returns it.

    `parse(raw)` opens one value into (the signer it names, the record) or raises MalformedRecord; an entry filed
    under another subkey than its signer, or that fails to parse, is logged and skipped. A key holding anything but a
    subkey dictionary reads as empty.
    """
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        logger.warning("%s: DHT value is %s, not a subkey dictionary; ignored", key, type(entries).__name__)
        return {}
    out = {}
    for subkey, item in entries.items():
        try:
            signer, record = parse(getattr(item, "value", item))
            if subkey != signer:
                raise MalformedRecord(f"filed under {str(subkey)[:16]!r} but signed by {signer[:16]}")
        except MalformedRecord as e:
            logger.warning("%s: skipping entry %s: %s", key, str(subkey)[:16], e)
            continue
        out[signer] = record
    return out


def read_signed(dht, key: str, context: str) -> dict[str, dict]:
    """{signer address: payload} of every valid value of `context` under `key`."""
    found = dht.get(key, latest=True)
    return open_entries(key, None if found is None else found.value, lambda raw: SignedValue.open(raw, context))


def expiration_cap(rule: KeyRule, now: float) -> float:
    """The latest DHT time an entry under `rule`'s key may expire at, judged at `now` (see CAP_STEP, CLOCK_SKEW)."""
    return math.ceil(now / CAP_STEP) * CAP_STEP + rule.max_ttl + CLOCK_SKEW


def _unpack(blob: bytes) -> Any:
    try:
        return MSGPackSerializer.loads(blob)
    except Exception as e:  # msgpack raises a zoo of types on hostile bytes
        raise MalformedRecord(f"not msgpack: {type(e).__name__}") from None


def _unpack_or_none(blob: bytes) -> Any:
    try:
        return _unpack(blob)
    except MalformedRecord:
        return None


def check_entry(record: DHTRecord, rule: KeyRule | None, now: float) -> None:
    """Raise MalformedRecord unless `record` may be stored or served under a key of `rule` (None: a foreign key).

    Under a hivemoe key only values signed for its context by the hotkey named in the subkey pass, expiring no later
    than their signed `expiration` nor than `expiration_cap`; plain values (subkey None) never pass. Under a foreign
    key only subkeys that look like hotkey addresses are checked (signer and signed expiration), the rest pass.
    """
    subkey = _unpack_or_none(record.subkey)  # None for a plain value
    if not isinstance(subkey, str) or not HEX_ADDRESS.fullmatch(subkey):
        if rule is None:
            return  # not a hivemoe entry: not ours to judge
        raise MalformedRecord(f"subkey {str(subkey)[:16]!r} is not a hotkey address")
    address, context, payload = SignedValue.open_any(_unpack(record.value))
    if address != subkey:
        raise MalformedRecord(f"filed under {subkey[:16]} but signed by {address[:16]}")
    if rule is None:
        expiration = payload.get("expiration")
        if isinstance(expiration, (int, float)) and record.expiration_time > expiration + EXPIRATION_SLACK:
            raise MalformedRecord("expires after its signed expiration")
        return
    if context != rule.context:
        raise MalformedRecord(f"context {context!r} under a key of {rule.context!r}")
    cap = expiration_cap(rule, now)
    expiration = check_float("expiration", payload.get("expiration"), 0.0, cap)
    if not record.expiration_time <= min(expiration + EXPIRATION_SLACK, cap):  # NaN fails too
        raise MalformedRecord(f"expires at {record.expiration_time:.0f}, after {min(expiration, cap):.0f}")


class SignedRecordValidator(RecordValidatorBase):
    """DHT-level guard installed on every hivemoe node (see `check_entry`); hivemind runs it on every store, the
    node's own included, and on every answer a reader gets.

    Honest nodes thus refuse to store or return plain values that would replace a hivemoe key's dictionary, forgeries
    under another signer's subkey, entries of another key's context and entries living longer than the key allows.
    Record schemas are left to readers, which skip bad entries one by one: refusing here drops a peer's whole answer
    for the key, so only checks that never change between code versions belong here.
    """

    def __init__(self):
        self._rules = rules_by_dht_id()

    def validate(self, record: DHTRecord) -> bool:
        try:
            check_entry(record, self._rules.get(record.key), get_dht_time())
        except MalformedRecord as e:
            logger.debug("refusing DHT entry: %s", e)
            return False
        return True
