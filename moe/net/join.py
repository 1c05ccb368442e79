"""Joining the hivemoe DHT: start a hivemind DHT that never hangs, retrying with exponential back-off.

hivemind's `DHT(start=True)` waits on its child process without a deadline, and a bootstrap peer that accepts TCP
but never speaks can stall the p2p daemon; here every attempt waits at most `timeout` seconds, a failed attempt's
process tree (the DHT process and its p2pd) is killed before the next one, and the final failure is a `JoinError`
naming each address tried and why. Malformed multiaddrs are refused before any process starts. The DHT process never
outlives the process that started it (`OwnedDHT`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import hivemind
import psutil
from hivemind.dht.validation import RecordValidatorBase
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

from moe.config_checks import require_at_least, require_between, require_positive
from moe.net.dht_records import SignedRecordValidator
from moe.net.serial_pipe import SerialSender, WholeMessageReceiver
from moe.processes import terminate

logger = logging.getLogger(__name__)


@dataclass
class NetworkConfig:
    """How a node joins the network and how long what it announces lives."""

    host: str = "127.0.0.1"
    """Address this node listens on; 0.0.0.0 to be reachable from other machines."""
    port: int = 0
    """TCP port for the node's hivemind peer; 0 picks a free one."""
    join_attempts: int = 6
    """Tries to reach the initial peers before giving up."""
    join_timeout_seconds: float = 15.0
    """Seconds one join attempt may take."""
    discovery_timeout_seconds: float = 60.0
    """Seconds a node waits for what it needs from the network (the seed, the experts) before failing."""
    announce_ttl_seconds: float = 20.0
    """Seconds a DHT announcement lives; a dead node vanishes from discovery after it."""
    heartbeat_interval_seconds: float = 4.0
    """Seconds between re-announcements (and between refreshes of a node's view of the experts)."""

    def __post_init__(self):
        require_between(self, "port", 0, 65535)
        require_at_least(self, 1, ["join_attempts"])
        require_positive(self, ["join_timeout_seconds", "discovery_timeout_seconds", "heartbeat_interval_seconds"])
        if not self.announce_ttl_seconds > self.heartbeat_interval_seconds:
            raise ValueError("announce_ttl_seconds must exceed heartbeat_interval_seconds, or records flicker")


class JoinError(RuntimeError):
    """Could not join the DHT after all attempts; the message names the addresses tried and the last reason."""


class BadMultiaddr(ValueError):
    """An initial peer address that is not a multiaddr ending in /p2p/<peer id>."""


def parse_initial_peers(initial_peers: Iterable[str]) -> list[str]:
    """Check each address parses as a multiaddr with a valid /p2p/ peer id; raises BadMultiaddr (one line)."""
    if isinstance(initial_peers, (str, bytes)):
        raise BadMultiaddr("initial_peers must be a list of multiaddr strings, not a single string")
    out = []
    for addr in initial_peers:
        addr = str(addr).strip()
        try:
            maddr = Multiaddr(addr)
            peer = maddr["p2p"]
            PeerID.from_base58(peer)
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadMultiaddr(
                f"bad initial peer {addr!r}: {reason} (expected /ip4/HOST/tcp/PORT/p2p/PEER_ID)"
            ) from None
        out.append(addr)
    return out


class OwnedDHT(hivemind.DHT):
    """A hivemind DHT whose process goes when the process that started it (its owner) goes, taking its p2pd along.

    hivemind makes the DHT process a daemon, which only helps when the owner exits through Python's atexit: an owner
    killed by a signal leaves it and its p2pd running for good, and SIGTERM (hivemind's own fallback, and atexit's)
    kills it without its p2pd. So the DHT process, on SIGTERM or once its owner is gone, terminates its children and
    exits. It notices the owner's death by polling `os.getppid()`, which works whichever thread started it (Linux's
    PR_SET_PDEATHSIG fires when that *thread* exits) and whoever else holds inherited pipes. When the owner led its
    own session, as every node the local network starts does, the owner's whole process group goes too: the other
    p2pd daemons it started (its expert server's, its client's) would otherwise be orphaned with it.
    """

    owner_poll_seconds: float = 1.0
    """Seconds between checks that the owner is alive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner_pid = os.getpid()
        self._outer_pipe = SerialSender(self._outer_pipe)  # calls come from several threads (moe.net.serial_pipe)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: _end_process(group=None))
        group = self.owner_pid if os.getsid(0) == self.owner_pid else None
        threading.Thread(target=self._watch_owner, args=(group,), name="owner-watch", daemon=True).start()
        self._inner_pipe = WholeMessageReceiver(self._inner_pipe)  # its fd is non-blocking (moe.net.serial_pipe)
        super().run()

    def _watch_owner(self, group: int | None) -> None:
        while os.getppid() == self.owner_pid:
            time.sleep(self.owner_poll_seconds)
        logger.warning("the process that started this DHT (%d) is gone; stopping", self.owner_pid)
        _end_process(group)


def _end_process(group: int | None, grace_seconds: float = 3.0) -> None:
    """Terminate this process's descendants and, given a process `group`, every other member of it, then exit.

    Each gets SIGTERM (p2pd then removes its socket files), and SIGKILL if still there after `grace_seconds`.
    """
    me = psutil.Process()
    targets = me.children(recursive=True)
    if group is not None:
        targets += [p for p in psutil.process_iter() if p.pid != me.pid and p not in targets and _in_group(p, group)]
    terminate(targets, kill_after_seconds=grace_seconds)
    _release_shared_locks(timeout_seconds=grace_seconds)
    os._exit(0)


def _release_shared_locks(timeout_seconds: float) -> None:
    """hivemind's MPFuture locks are shared by every process forked from one parent, and one still held when this
    process exits stays held for all of them: every DHT started after it would hang sending its first result. The
    frame a signal interrupted may hold one (drop it: that frame never resumes); another thread may be mid-send (wait
    for it, up to `timeout_seconds`)."""
    from hivemind.utils.mpfuture import MPFuture

    for lock in (MPFuture._update_lock, MPFuture._initialization_lock):
        try:
            if lock._semlock._is_mine():
                lock.release()
            elif lock.acquire(timeout=timeout_seconds):
                lock.release()
        except (AttributeError, ValueError, OSError) as e:  # a hivemind without these locks, or one already released
            logger.debug("shared lock not checked at exit: %r", e)


def _in_group(p: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(p.pid) == group
    except OSError:
        return False


def _kill_tree(dht: hivemind.DHT) -> None:
    """Kill a DHT whose start failed or timed out, and its p2pd child, so no process or port is left behind."""
    children = []
    if dht.pid is not None and dht.is_alive():
        try:
            children = psutil.Process(dht.pid).children(recursive=True)
        except psutil.Error:
            pass
    for child in children:  # first, so that none is orphaned when its parent dies
        try:
            child.kill()
            child.wait(5)
        except psutil.Error:
            pass
    try:
        dht.kill()  # nothing to save from a half-started node; SIGTERM could wait on a stuck event loop
        dht.join(5)
    except (AttributeError, AssertionError, ValueError):  # never started
        pass


def _start_once(
    initial_peers: list[str], host_maddrs: list[str], timeout: float, validators: list[RecordValidatorBase], **kwargs
) -> hivemind.DHT:
    dht = OwnedDHT(
        initial_peers=initial_peers or None,
        host_maddrs=host_maddrs,
        start=False,
        record_validators=validators,
        startup_timeout=timeout,
        **kwargs,
    )
    dht.run_in_background(await_ready=False)
    try:
        dht.wait_until_ready(timeout=timeout)
    except BaseException:
        _kill_tree(dht)
        raise
    return dht


def start_dht(
    initial_peers: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 0,
    attempts: int = 5,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    timeout: float = 15.0,
    record_validators: Sequence[RecordValidatorBase] = (),
    **dht_kwargs,
) -> hivemind.DHT:
    """Join the DHT through `initial_peers`, retrying up to `attempts` times.

    Each attempt waits at most `timeout` seconds; between attempts we sleep `backoff`·2^i seconds (capped at
    `max_backoff`), so a bootstrap peer that starts a little later is still found. Raises BadMultiaddr at once for a
    malformed address and JoinError after the last attempt. Every node gets `SignedRecordValidator` so it refuses to
    store forged hivemoe records; `dht_kwargs` go to hivemind.DHT (e.g. `client_mode=True`).
    """
    peers = parse_initial_peers(initial_peers)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    host_maddrs = [f"/ip4/{host}/tcp/{port}"]
    Multiaddr(host_maddrs[0])  # a bad host fails here, before any process starts
    validators = [SignedRecordValidator(), *record_validators]
    reason = "no attempt made"
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            dht = _start_once(peers, host_maddrs, timeout, validators, **dht_kwargs)
            if attempt:
                logger.info("joined the DHT on attempt %d/%d", attempt + 1, attempts)
            return dht
        except TimeoutError:
            reason = f"no answer within {timeout:.1f}s"
        except Exception as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
        logger.warning(
            "DHT join attempt %d/%d failed after %.1fs: %s",
            attempt + 1,
            attempts,
            time.monotonic() - started,
            reason,
        )
        if attempt + 1 < attempts:
            time.sleep(min(max_backoff, backoff * 2**attempt))
    tried = ", ".join(peers) if peers else "(no initial peers)"
    raise JoinError(f"could not join the DHT via {tried} after {attempts} attempts: {reason}")


def join_network(initial_peers: Sequence[str], network: NetworkConfig) -> hivemind.DHT:
    """Join through `initial_peers` as `network` says (listen address, attempts, per-attempt timeout)."""
    return start_dht(
        initial_peers,
        network.host,
        network.port,
        attempts=network.join_attempts,
        timeout=network.join_timeout_seconds,
    )


def start_bootstrap_dht(host: str = "127.0.0.1", port: int = 0, timeout: float = 15.0, **dht_kwargs) -> hivemind.DHT:
    """Start the first peer of a new network (no initial peers); raises JoinError if it cannot start in time.

    Three attempts: hivemind forks the DHT's process, and a fork taken while another thread of a busy parent holds
    a lock can hang at start (seen about once in a hundred starts in our test suite); a fresh fork recovers.
    """
    return start_dht([], host=host, port=port, attempts=3, timeout=timeout, **dht_kwargs)


def visible_maddrs(dht: hivemind.DHT, host: str | None = "127.0.0.1") -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) other peers can pass as initial_peers; only those on `host` unless None."""
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    if host is not None:
        maddrs = [m for m in maddrs if m.startswith(f"/ip4/{host}/")] or maddrs
    return maddrs
