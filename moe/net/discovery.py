"""Finding experts: signed announcements in the DHT, a heartbeat that keeps them alive, and a background cache.

Layout: key `hivemoe/<netuid>/experts`, subkey = the miner's hotkey address, value = a signed `ExpertRecord`
expiring at now + ttl. A node that dies stops refreshing and vanishes from discovery once its entry expires.
Everything read back is validated; malformed or mismatched entries are logged and skipped, never raised, so one
malicious peer cannot break discovery for everyone. The router reads `ExpertDirectory.experts()`, a snapshot
refreshed by a background thread, so its hot path never waits on the DHT.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable

import hivemind
from hivemind.utils import get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import EXPERTS_RULE, check_ttl, experts_key, open_entries
from moe.net.expert_record import ExpertRecord
from moe.net.loop import PeriodicThread
from moe.net.signed import MalformedRecord

logger = logging.getLogger(__name__)


def announce(dht: hivemind.DHT, record: ExpertRecord, hotkey: Hotkey, ttl: float) -> bool:
    """Sign `record` with expiration now+ttl and store it under its subnet's key; False if no peer accepted it.

    Raises ValueError if `ttl` exceeds the experts keys' maximum (`EXPERTS_RULE.max_ttl`), which peers would refuse.
    """
    check_ttl(experts_key(record.netuid), ttl)
    record = dataclasses.replace(record, expiration=get_dht_time() + ttl)
    value = record.to_dht_value(hotkey)
    ok = dht.store(experts_key(record.netuid), value, expiration_time=record.expiration, subkey=hotkey.address)
    if not ok:
        logger.warning("announce of uid %d on netuid %d was not stored by any peer", record.uid, record.netuid)
    return bool(ok)


def parse_entries(netuid: int, entries: object, now: float) -> list[ExpertRecord]:
    """Validate one key's {subkey: (value, expiration)} dictionary from the DHT; skip (and log) every bad entry."""

    def parse(raw: object) -> tuple[str, ExpertRecord]:
        record = ExpertRecord.from_dht_value(raw)
        if record.netuid != netuid:
            raise MalformedRecord(f"record for netuid {record.netuid} found under netuid {netuid}")
        if record.expiration < now:
            raise MalformedRecord(f"record expired {now - record.expiration:.1f}s ago (replayed?)")
        return record.hotkey, record

    return list(open_entries(experts_key(netuid), entries, parse).values())


def discover(dht: hivemind.DHT, netuids: Iterable[int], latest: bool = True) -> list[ExpertRecord]:
    """All valid, unexpired expert records on the given subnets, sorted by (netuid, uid); bad entries are skipped."""
    netuids = list(netuids)
    futures = [dht.get(experts_key(n), latest=latest, return_future=True) for n in netuids]
    now = get_dht_time()
    records = []
    for netuid, future in zip(netuids, futures, strict=True):
        try:
            found = future.result()
        except Exception as e:
            logger.warning("netuid %d: DHT lookup failed: %s", netuid, e)
            continue
        records.extend(parse_entries(netuid, None if found is None else found.value, now))
    return sorted(records, key=lambda r: (r.netuid, r.uid, r.hotkey))


class Heartbeat(PeriodicThread):
    """Re-announce `make_record()` every `interval` seconds with expiration now+ttl, until stopped.

    `ttl` should be a few intervals so one missed beat does not drop the expert, and at most `EXPERTS_RULE.max_ttl`
    (ValueError otherwise, since peers would refuse every beat); after `stop()` the record lives on until its
    expiration, then disappears from discovery. A failed beat (DHT busy, record invalid) is logged and the next beat
    tries again.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        make_record: Callable[[], ExpertRecord],
        hotkey: Hotkey,
        interval: float = 30.0,
        ttl: float = 90.0,
    ):
        super().__init__("hivemoe-heartbeat", interval)
        if not 0 < ttl <= EXPERTS_RULE.max_ttl:
            raise ValueError(f"heartbeat ttl {ttl}s is outside (0, {EXPERTS_RULE.max_ttl}] s; peers would refuse it")
        if ttl <= interval:
            logger.warning("heartbeat ttl %.1fs <= interval %.1fs: the record will flicker", ttl, interval)
        self.dht, self.make_record, self.hotkey, self.ttl = dht, make_record, hotkey, ttl
        self.beats = 0
        """Successful announcements so far."""

    def step(self) -> None:
        if announce(self.dht, self.make_record(), self.hotkey, self.ttl):
            self.beats += 1


class ExpertDirectory(PeriodicThread):
    """A cache of discovered experts refreshed in the background; reading it never touches the DHT.

    `version` increases whenever an expert joins, leaves or moves (its (netuid, uid, hotkey, peer_id, subnet) set
    changes), not on routine heartbeats, so the router rebuilds its gate only when needed. A failed refresh keeps
    the previous snapshot.
    """

    def __init__(self, dht: hivemind.DHT, netuids: Iterable[int], refresh_interval: float = 5.0):
        super().__init__("hivemoe-directory", refresh_interval)
        self.dht, self.netuids = dht, list(netuids)
        self._snapshot: tuple[ExpertRecord, ...] = ()
        self._fingerprint: tuple = ()
        self._changed = threading.Condition()
        self.version = 0
        """Bumped on every change of the snapshot."""

    def experts(self) -> list[ExpertRecord]:
        """The latest snapshot minus records expired since (e.g. while the DHT was unreachable); no DHT call."""
        now = get_dht_time()
        return [r for r in self._snapshot if r.expiration >= now]

    def step(self) -> None:
        records = discover(self.dht, self.netuids)
        # note: expiration and train_step change on every beat; only identity/serving changes count as a new version
        fingerprint = tuple((r.netuid, r.uid, r.hotkey, r.peer_id, r.subnet) for r in records)
        with self._changed:
            self._snapshot = tuple(records)
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                self.version += 1
                logger.info("expert directory v%d: %d experts", self.version, len(records))
            self._changed.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[ExpertRecord]:
        """Block until at least `n` experts are known and return them; TimeoutError says how many were seen."""
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self._snapshot) >= n, timeout=timeout)
            if not ok:
                raise TimeoutError(f"only {len(self._snapshot)} of {n} experts discovered within {timeout:.1f}s")
            return list(self._snapshot)
