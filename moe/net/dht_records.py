"""Signed records in the DHT: the node-side guard every hivemoe peer installs, and storing and reading such records.

Every hivemoe key is a dictionary of subkeys, one per signer (its hotkey address), each value a `SignedValue`.
`publish_signed` stores a node's own payload under its own subkey; `open_entries` reads a key back, keeping only
entries that open, fit their schema and are filed under their signer's address (the rest are logged and skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time

from moe.identity import Hotkey
from moe.net.signed import HEX_ADDRESS, MalformedRecord, SignedValue

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXPIRATION_SLACK = 1.0
"""Seconds a DHT entry may outlive the expiration its signed payload states (clock jitter between calls)."""


def publish_signed(dht, key: str, hotkey: Hotkey, payload: dict, context: str, ttl: float) -> bool:
    """Sign `payload` (expiring ttl seconds ahead) and store it under `key`/hotkey; False if nobody stored it."""
    expiration = get_dht_time() + ttl
    value = SignedValue.sign(hotkey, {**payload, "expiration": expiration}, context=context)
    return bool(dht.store(key, value, expiration_time=expiration, subkey=hotkey.address))


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


class SignedRecordValidator(RecordValidatorBase):
    """DHT-level guard installed on every hivemoe node: a value stored under a subkey that is a hotkey address must
    be a hivemoe signed value by that very hotkey, expiring no later than its signed `expiration` (when present).

    Honest nodes thus refuse to store or return forgeries, so an attacker cannot shadow a miner's announcement with
    a far-future garbage value under the miner's subkey. Readers still validate everything themselves.
    """

    def validate(self, record: DHTRecord) -> bool:
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
        except Exception:
            return True  # not a msgpack subkey: a regular (non-dictionary) value, not ours to judge
        if not isinstance(subkey, str) or not HEX_ADDRESS.fullmatch(subkey):
            return True
        try:
            address, _, payload = SignedValue.open_any(MSGPackSerializer.loads(record.value))
        except Exception as e:
            logger.debug("refusing DHT value under %s: %s", subkey[:16], e)
            return False
        if address != subkey:
            logger.debug("refusing DHT value under %s signed by %s", subkey[:16], address[:16])
            return False
        expiration = payload.get("expiration")
        if isinstance(expiration, (int, float)) and record.expiration_time > expiration + EXPIRATION_SLACK:
            logger.debug("refusing DHT value under %s expiring after its signed expiration", subkey[:16])
            return False
        return True
