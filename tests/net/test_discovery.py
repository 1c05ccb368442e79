"""Tests for moe/net/discovery.py: announce/discover across real DHT peers, expiry, heartbeat, background directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import hivemind
import pytest
from hivemind.utils import ValueWithExpiration, get_dht_time

from moe.identity import Hotkey
from moe.net.dht_records import EXPERTS_RULE
from moe.net.discovery import ExpertDirectory, Heartbeat, announce, discover, experts_key, parse_entries
from moe.net.expert_record import ExpertRecord
from moe.net.join import visible_maddrs

PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"


@pytest.fixture(scope="module")
def pair(module_pair):
    """Two joined DHT peers on loopback (a miner side and a router side), shut down after the module."""
    return module_pair


_netuid = iter(range(100, 60000))


@pytest.fixture
def netuid() -> int:
    """A fresh subnet id per test, so tests sharing the DHT do not see each other's records."""
    return next(_netuid)


def make_record(hotkey: Hotkey, netuid: int, uid: int = 0, train_step: int = 0) -> ExpertRecord:
    return ExpertRecord(
        uid=uid,
        hotkey=hotkey.address,
        subnet="code",
        netuid=netuid,
        peer_id=PEER_ID,
        model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=256, params=5000),
        train_step=train_step,
        signature_centroid=[0.5] * 16,
    )


def key(i: int) -> Hotkey:
    return Hotkey.from_seed(bytes([i]) * 32)


def wait_until(predicate, timeout: float, interval: float = 0.2):
    """Poll `predicate` until truthy (returned) or `timeout` seconds pass (returns the last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_announce_then_discover_from_other_peer(pair, netuid):
    """A record announced on one peer is discovered, intact, from another."""
    a, b = pair
    record = make_record(key(1), netuid, uid=7, train_step=3)
    assert announce(a, record, key(1), ttl=30)
    found = discover(b, [netuid])
    assert len(found) == 1
    assert found[0].uid == 7 and found[0].train_step == 3 and found[0].hotkey == key(1).address
    assert found[0].expiration > get_dht_time()


def test_two_miners_and_two_subnets(pair, netuid):
    """Records from several miners and subnets are all found, each under its own subnet only."""
    a, b = pair
    other = netuid + 30000
    announce(a, make_record(key(1), netuid, uid=1), key(1), ttl=30)
    announce(b, make_record(key(2), netuid, uid=2), key(2), ttl=30)
    announce(a, make_record(key(3), other, uid=3), key(3), ttl=30)
    assert [r.uid for r in discover(b, [netuid])] == [1, 2]
    assert [(r.netuid, r.uid) for r in discover(a, [netuid, other])] == [(netuid, 1), (netuid, 2), (other, 3)]


def test_expired_record_disappears(pair, netuid):
    """An announcement is no longer discovered once its ttl has passed."""
    a, b = pair
    announce(a, make_record(key(4), netuid), key(4), ttl=1.5)
    assert len(discover(b, [netuid])) == 1
    assert wait_until(lambda: discover(b, [netuid]) == [], timeout=6)


def test_garbage_is_refused_and_valid_records_still_returned(pair, netuid):
    """Guarded peers refuse malformed values under a subnet's key (readers skip any that slip in, see
    test_parse_entries_*); valid records are still returned."""
    a, b = pair
    announce(a, make_record(key(5), netuid, uid=5), key(5), ttl=30)
    expiration = get_dht_time() + 30
    assert not a.store(experts_key(netuid), b"not a record", expiration, subkey="mallory")
    assert not a.store(experts_key(netuid), {"nested": 1}, expiration, subkey="eve")
    assert not a.store(experts_key(netuid), b"plain junk", expiration)
    assert [r.uid for r in discover(b, [netuid])] == [5]


def test_heartbeat_refuses_a_ttl_peers_would_refuse(pair, netuid):
    """A heartbeat whose ttl exceeds the experts keys' maximum fails at construction, not silently on every beat."""
    with pytest.raises(ValueError, match="heartbeat ttl"):
        Heartbeat(pair[0], lambda: make_record(key(5), netuid), key(5), interval=1.0, ttl=EXPERTS_RULE.max_ttl + 1)
    with pytest.raises(ValueError, match="ttl"):
        announce(pair[0], make_record(key(5), netuid), key(5), ttl=EXPERTS_RULE.max_ttl + 1)


def test_forgery_under_victims_subkey_is_refused_by_honest_nodes(pair, netuid):
    """An attacker without our validator cannot shadow a miner's record with a far-future forgery."""
    a, b = pair
    victim = key(6)
    announce(a, make_record(victim, netuid, uid=6), victim, ttl=30)
    mallory = hivemind.DHT(initial_peers=visible_maddrs(a), host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        forged = make_record(key(7), netuid, uid=66).to_dht_value(key(7))
        mallory.store(experts_key(netuid), forged, get_dht_time() + 3600, subkey=victim.address)
        found = discover(b, [netuid])
    finally:
        mallory.shutdown()
    assert [(r.uid, r.hotkey) for r in found] == [(6, victim.address)]


def test_parse_entries_checks_subkey_netuid_and_expiry():
    """Records under the wrong subkey, the wrong subnet, or already expired are dropped by the reader."""
    now = get_dht_time()
    good = make_record(key(8), 9)
    good.expiration = now + 30
    stale = make_record(key(9), 9)
    stale.expiration = now - 5
    elsewhere = make_record(key(10), 10)
    elsewhere.expiration = now + 30
    entries = {
        key(8).address: ValueWithExpiration(good.to_dht_value(key(8)), now + 30),
        key(11).address: ValueWithExpiration(good.to_dht_value(key(8)), now + 30),  # replayed under another subkey
        key(9).address: ValueWithExpiration(stale.to_dht_value(key(9)), now + 30),
        key(10).address: ValueWithExpiration(elsewhere.to_dht_value(key(10)), now + 30),
    }
    assert parse_entries(9, entries, now) == [good]
    assert parse_entries(9, b"not a dictionary", now) == []


def test_heartbeat_keeps_record_alive_until_stopped(pair, netuid):
    """With a heartbeat the record outlives its ttl and its train_step advances; after stop it expires."""
    a, b = pair
    steps = iter(range(1000))
    beat = Heartbeat(a, lambda: make_record(key(12), netuid, train_step=next(steps)), key(12), interval=0.4, ttl=1.5)
    with beat:
        time.sleep(3.0)  # twice the ttl: only re-announcement keeps it visible
        found = discover(b, [netuid])
        assert len(found) == 1 and found[0].train_step >= 3
    assert beat.beats >= 4
    assert wait_until(lambda: discover(b, [netuid]) == [], timeout=6)


def test_directory_updates_in_background(pair, netuid):
    """The directory snapshot picks up joins and leaves by itself and bumps its version on each."""
    a, b = pair
    with ExpertDirectory(b, [netuid], refresh_interval=0.2) as directory:
        with pytest.raises(TimeoutError, match="0 of 1"):
            directory.wait_for(1, timeout=0.5)
        v0 = directory.version
        announce(a, make_record(key(13), netuid, uid=1), key(13), ttl=1.5)
        assert [r.uid for r in directory.wait_for(1, timeout=10)] == [1]
        v1 = directory.version
        assert v1 > v0
        announce(a, make_record(key(14), netuid, uid=2), key(14), ttl=30)
        assert [r.uid for r in directory.wait_for(2, timeout=10)] == [1, 2]
        assert directory.version > v1
        # uid 1 is not refreshed: it leaves the snapshot after its ttl
        assert wait_until(lambda: [r.uid for r in directory.experts()] == [2], timeout=6)


MINER_SCRIPT = """
import sys, time
from moe.identity import Hotkey
from moe.net.discovery import Heartbeat
from moe.net.join import start_dht
from moe.net.expert_record import ExpertRecord
dht = start_dht(sys.argv[1:2])
hotkey = Hotkey.from_seed(bytes([31]) * 32)
record = ExpertRecord(uid=31, hotkey=hotkey.address, subnet="code", netuid=int(sys.argv[2]),
                      peer_id=dht.peer_id.to_base58(),
                      model=dict(d_model=8, n_layers=1, n_heads=1, d_ff=8, vocab_size=256, params=100))
Heartbeat(dht, lambda: record, hotkey, interval=0.3, ttl=1.5).start()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_crashed_miner_disappears_after_ttl(pair, netuid):
    """A miner process killed with SIGKILL (its DHT node and p2pd too) vanishes from discovery after its ttl."""
    a, b = pair
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    miner = subprocess.Popen(
        [sys.executable, "-c", MINER_SCRIPT, visible_maddrs(a)[0], str(netuid)],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group: the DHT child and p2pd die with it
    )
    try:
        assert miner.stdout.readline().strip() == b"ready"
        found = wait_until(lambda: discover(b, [netuid]), timeout=10)
        assert [r.uid for r in found] == [31]
        time.sleep(2.0)  # beyond one ttl: still there thanks to the heartbeat
        assert [r.uid for r in discover(b, [netuid])] == [31]
        os.killpg(miner.pid, signal.SIGKILL)
        miner.wait(10)
        assert wait_until(lambda: discover(b, [netuid]) == [], timeout=8)
    finally:
        if miner.poll() is None:
            os.killpg(miner.pid, signal.SIGKILL)
            miner.wait(10)
        miner.stdout.close()
