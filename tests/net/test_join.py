"""Tests for moe/net/join.py: joining real hivemind DHTs on loopback, retries, fast and clean failure."""

from __future__ import annotations

import math
import socket
import threading
import time

import psutil
import pytest
from hivemind.p2p import P2P, PeerID

from moe.net.join import (
    BadMultiaddr,
    JoinError,
    NetworkConfig,
    join_network,
    start_bootstrap_dht,
    start_dht,
    visible_maddrs,
)

GHOST_PEER = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"


@pytest.fixture
def dhts():
    """Collects DHTs a test starts and shuts them all down afterwards."""
    started = []
    yield started
    for dht in started:
        dht.shutdown()


def p2pd_children() -> set[int]:
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True) if "p2pd" in (p.name() or "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_join_existing_peer(dhts):
    """A second node joins through the bootstrap's visible loopback multiaddr and both see each other."""
    boot = start_bootstrap_dht()
    dhts.append(boot)
    maddrs = visible_maddrs(boot)
    assert maddrs and all(m.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in m for m in maddrs)
    node = start_dht(maddrs)
    dhts.append(node)
    assert node.store("join-test", 42, expiration_time=time.time() + 30)
    assert boot.get("join-test", latest=True).value == 42


def test_join_network_joins_a_running_bootstrap_peer(dhts):
    """join_network joins through a running bootstrap peer on the address and port its NetworkConfig names, and the
    two peers share records."""
    boot = start_bootstrap_dht()
    dhts.append(boot)
    port = free_port()
    node = join_network(visible_maddrs(boot), NetworkConfig(port=port, join_attempts=2, join_timeout_seconds=10.0))
    dhts.append(node)
    assert any(m.startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/") for m in visible_maddrs(node))
    assert node.store("join-network-test", "hello", expiration_time=time.time() + 30)
    assert boot.get("join-network-test", latest=True).value == "hello"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(port=-1), "port"),
        (dict(port=65536), "port"),
        (dict(join_attempts=0), "join_attempts"),
        (dict(join_timeout_seconds=0.0), "join_timeout_seconds"),
        (dict(join_timeout_seconds=math.nan), "join_timeout_seconds"),
        (dict(discovery_timeout_seconds=-1.0), "discovery_timeout_seconds"),
        (dict(heartbeat_interval_seconds=0.0), "heartbeat_interval_seconds"),
        (dict(announce_ttl_seconds=4.0, heartbeat_interval_seconds=4.0), "announce_ttl_seconds"),
        (dict(announce_ttl_seconds=2.0), "announce_ttl_seconds"),
    ],
)
def test_network_config_out_of_range_is_refused_naming_the_field(overrides, field):
    """A port outside 0-65535, no join attempts, a non-positive (or NaN) timeout or interval, or an announcement
    that does not outlive its heartbeat raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"^{field} "):
        NetworkConfig(**overrides)


def test_network_config_defaults_and_edges_are_accepted():
    """The defaults, port 0 and 65535, and one join attempt are valid."""
    NetworkConfig()
    NetworkConfig(port=0, join_attempts=1)
    NetworkConfig(port=65535, announce_ttl_seconds=4.5, heartbeat_interval_seconds=4.0)


@pytest.mark.parametrize(
    "addr",
    ["garbage", "/ip4/127.0.0.1/tcp/1", "/ip4/300.1.1.1/tcp/5/p2p/" + GHOST_PEER, "/ip4/127.0.0.1/tcp/5/p2p/0OIl"],
)
def test_malformed_multiaddr_is_refused_before_starting(addr):
    """A malformed initial peer raises BadMultiaddr naming it, without starting any p2p daemon."""
    before = p2pd_children()
    with pytest.raises(BadMultiaddr, match="bad initial peer"):
        start_dht([addr])
    assert p2pd_children() == before


def test_single_string_is_refused():
    """Passing one string instead of a list is refused rather than split into characters."""
    with pytest.raises(BadMultiaddr):
        start_dht("/ip4/127.0.0.1/tcp/5/p2p/" + GHOST_PEER)


def test_absent_peer_fails_with_address_and_leaves_nothing_behind():
    """Joining a port where nobody listens raises JoinError naming the address, and no p2pd survives."""
    addr = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{GHOST_PEER}"
    before = p2pd_children()
    with pytest.raises(JoinError) as info:
        start_dht([addr], attempts=2, backoff=0.1, timeout=10)
    assert addr in str(info.value) and "2 attempts" in str(info.value)
    assert "\n" not in str(info.value)
    assert p2pd_children() == before


def test_silent_peer_does_not_hang():
    """A bootstrap address that accepts TCP but never speaks ends in JoinError at our deadline, leaving no p2pd."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    addr = f"/ip4/127.0.0.1/tcp/{server.getsockname()[1]}/p2p/{GHOST_PEER}"
    before = p2pd_children()
    try:
        with pytest.raises(JoinError, match=str(server.getsockname()[1])) as info:
            start_dht([addr], attempts=1, timeout=2.0)
        assert "no answer within 2.0s" in str(info.value)
        assert p2pd_children() == before, "the timed-out attempt's p2pd must be killed"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.slow
def test_retry_succeeds_when_bootstrap_appears_later(tmp_path, dhts, caplog):
    """A join started before its bootstrap peer exists succeeds once that peer comes up, thanks to back-off."""
    identity = str(tmp_path / "boot.id")
    P2P.generate_identity(identity)
    with open(identity, "rb") as f:
        peer = PeerID.from_identity(f.read()).to_base58()
    port = free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"
    result: dict = {}
    caplog.set_level("WARNING", logger="moe.net.join")

    def join():
        try:
            result["dht"] = start_dht([addr], attempts=8, backoff=0.5, max_backoff=2.0, timeout=10)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = e

    joiner = threading.Thread(target=join)
    joiner.start()
    time.sleep(2.0)  # the joiner's first attempts fail: nobody listens yet
    dhts.append(start_bootstrap_dht(port=port, identity_path=identity))
    joiner.join(120)
    if "dht" in result:
        dhts.append(result["dht"])
    assert "error" not in result, result.get("error")
    assert "join attempt 1/8 failed" in caplog.text, "the first attempt should have found nobody"
    assert result["dht"].peer_id.to_base58() != peer
    assert visible_maddrs(dhts[0])[0].endswith(peer)


def test_a_dht_process_ended_while_holding_hivemind_s_shared_lock_releases_it():
    """A DHT process told to end (SIGTERM, or its owner gone) at a moment it holds hivemind's MPFuture update lock,
    which every process forked from one parent shares, releases it before exiting: otherwise every DHT started after
    it hangs forever sending its first result."""
    import multiprocessing as mp

    from hivemind.utils.mpfuture import MPFuture

    from moe.net.join import _end_process

    lock = MPFuture._update_lock

    def child() -> None:
        lock.acquire()  # where a signal can land: inside `with MPFuture._update_lock:` of a send
        _end_process(group=None, grace_seconds=0.5)

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert lock.acquire(timeout=5), "the ended process left hivemind's shared lock held"
    lock.release()
