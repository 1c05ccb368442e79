"""Faults of a real mini network: a crashed expert, its restart under the same hotkey, unreachable or bad peers.

The bootstrap DHT peer and the `Mixture` live in the test process; three expert nodes are `python train.py
role=expert` processes on loopback, branched from an (untrained) seed checkpoint written by the test.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from moe.config_loader import parse_args
from moe.model.transformer import ByteLM, config_dict
from moe.net.client import ClientConfig
from moe.net.join import NetworkConfig, start_bootstrap_dht, visible_maddrs
from moe.roles.run_config import RunConfig
from moe.routing.mixing import route_and_mix
from moe.routing.remote import Mixture, RouterConfig
from moe.training.checkpoint import model_to_bytes
from subnets import all_subnets

from .conftest import TAG_VAR, TINY, Procs

SUBNETS = ["english", "code", "math"]
VICTIM = "math"
FORWARD_TIMEOUT = 4.0
"""Seconds the mixture waits for an expert before skipping it."""
ANNOUNCE_TTL = 6.0
"""Seconds an expert's DHT record outlives its last heartbeat."""
GOOD_PEER_ID = "12D3KooWHnXW9WRA1WkkdHa1o5ahz6jVG39Z3eMovjEvXTFW9rN1"
"""A well-formed peer id nobody here owns."""


@dataclass
class Mini:
    run_dir: Path
    peers: list[str]
    args: dict[str, list[str]]
    procs: Procs
    mixture: Mixture


def _tagged_env(tag: str):
    """Context: the p2pd daemons this process spawns meanwhile inherit the tag, so teardown can find them."""

    class _Ctx:
        def __enter__(self):
            self.old = os.environ.get(TAG_VAR)
            os.environ[TAG_VAR] = tag

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop(TAG_VAR, None)
            else:
                os.environ[TAG_VAR] = self.old

    return _Ctx()


def _expert_args(run_dir: Path, subnet: str, peers: list[str], seed: Path) -> list[str]:
    return [
        "role=expert",
        f"subnet={subnet}",
        f"out_dir={run_dir.parent}",
        f"run_id={run_dir.name}",
        f"initial_peers={','.join(peers)}",
        f"seed_checkpoint={seed}",
        "expert_train.steps=10",
        "expert_train.eval_batches=1",
        "network.heartbeat_interval_seconds=1.0",
        f"network.announce_ttl_seconds={ANNOUNCE_TTL}",
    ]


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Iterator[Mini]:
    out = tmp_path_factory.mktemp("faults")
    run_dir = out / "f"
    run_dir.mkdir()
    procs = Procs(out / "proc-logs")
    dht = mixture = None
    try:
        cfg = parse_args(RunConfig, [str(TINY)])
        torch.manual_seed(0)
        seed = run_dir / "seed.bin"
        seed.write_bytes(model_to_bytes(ByteLM(cfg.model), config_dict(cfg.model)))
        with _tagged_env(procs.tag):
            dht = start_bootstrap_dht(host="127.0.0.1")
        peers = visible_maddrs(dht, "127.0.0.1")
        args = {s: _expert_args(run_dir, s, peers, seed) for s in SUBNETS}
        for s in SUBNETS:
            procs.start(f"expert-{s}", args[s])
        names = tuple(f"expert-{s}" for s in SUBNETS)
        for s in SUBNETS:
            procs.wait_for_file(run_dir / "experts" / s / "serving.json", 240.0, names)
        subnets = all_subnets()
        client = ClientConfig(forward_timeout_seconds=FORWARD_TIMEOUT)
        rc = RouterConfig(k_best=len(SUBNETS), d_gate=16, probe_len=8, client=client)
        net = NetworkConfig(heartbeat_interval_seconds=1.0, announce_ttl_seconds=ANNOUNCE_TTL)
        with _tagged_env(procs.tag):
            mixture = Mixture.from_dht(peers, [subnets[s].netuid for s in SUBNETS], rc, net)
        mixture.wait_for_experts(len(SUBNETS), timeout=60.0)
        yield Mini(run_dir, peers, args, procs, mixture)
    finally:
        if mixture is not None:
            mixture.shutdown()
        if dht is not None:
            dht.shutdown()
        procs.reap()


def _serving(run_dir: Path, subnet: str) -> dict:
    return json.loads((run_dir / "experts" / subnet / "serving.json").read_text())


def _assert_distribution(logp: torch.Tensor, shape: tuple[int, int]) -> None:
    assert logp.shape == (*shape, 256)
    assert torch.isfinite(logp).all()
    assert torch.logsumexp(logp, -1).abs().max() < 1e-3


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.3)


def _batch() -> torch.Tensor:
    return torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_killed_expert_is_skipped_then_expires(mini):
    """After SIGKILL of one expert the mixture still gives normalized log-probs without it; its record then expires."""
    m, x = mini.mixture, _batch()
    _assert_distribution(m.log_probs(x), tuple(x.shape))
    victim = _serving(mini.run_dir, VICTIM)
    assert victim["hotkey"] in {r.hotkey for r in m.records()}

    mini.procs.kill(f"expert-{VICTIM}")  # the node, its DHT process and its p2pd die at once, as on a crash
    entries = m.entries()
    keys = [e.key for e in entries]
    assert victim["hotkey"] in keys  # its record outlives it by up to the ttl: the call path must cope
    t0 = time.monotonic()
    out = route_and_mix(m.gate, x, entries, m.call, m.rc.k_best, m.rc.probe_len)
    elapsed = time.monotonic() - t0
    _assert_distribution(out.logp, tuple(x.shape))
    j = keys.index(victim["hotkey"])
    assert not out.answered[:, :, j].any()
    others = [i for i in range(len(keys)) if i != j]
    assert out.answered[:, :, others].any(dim=-1).all()  # every position still mixed from live experts
    # a liveness bound, not a speed check: two rounds (probe, chosen), each cut off at forward_timeout
    assert elapsed < 2 * FORWARD_TIMEOUT + 10.0
    from hivemind.p2p import PeerID

    assert m.client.health.failures(PeerID.from_base58(victim["peer_id"])) >= 1

    _wait(lambda: victim["hotkey"] not in {r.hotkey for r in m.records()}, ANNOUNCE_TTL + 20.0, "victim expiry")
    assert len(m.records()) == len(SUBNETS) - 1
    _assert_distribution(m.log_probs(x), tuple(x.shape))


@pytest.mark.slow
def test_restarted_expert_rejoins_with_same_hotkey(mini):
    """A crashed expert restarted on its run dir resumes its checkpoint and rejoins: same hotkey, new peer id."""
    m, x = mini.mixture, _batch()
    name = f"expert-{VICTIM}"
    if mini.procs.procs[name].poll() is None:
        mini.procs.kill(name)
    old = _serving(mini.run_dir, VICTIM)
    (mini.run_dir / "experts" / VICTIM / "serving.json").unlink()

    mini.procs.start(f"{name}-restarted", mini.args[VICTIM])
    serving = mini.run_dir / "experts" / VICTIM / "serving.json"
    mini.procs.wait_for_file(serving, 180.0, (f"{name}-restarted",))
    new = _serving(mini.run_dir, VICTIM)
    assert new["hotkey"] == old["hotkey"]
    assert new["peer_id"] != old["peer_id"]
    log = (mini.run_dir / "logs" / f"{name}.log").read_text()
    assert "resumed from" in log

    def rejoined() -> bool:
        return any(r.hotkey == new["hotkey"] and r.peer_id == new["peer_id"] for r in m.records())

    _wait(rejoined, 30.0, "rejoin in discovery")
    assert len(m.records()) == len(SUBNETS)
    entries = m.entries()
    keys = [e.key for e in entries]
    out = route_and_mix(m.gate, x, entries, m.call, m.rc.k_best, m.rc.probe_len)
    _assert_distribution(out.logp, tuple(x.shape))
    assert out.answered[:, :, keys.index(new["hotkey"])].any()


def _error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert lines, "no error message on stderr"
    return lines[-1]


@pytest.mark.slow
def test_unreachable_initial_peer_is_a_one_line_error(procs, tmp_path):
    """An expert whose only initial peer does not answer exits 1 with one `error:` line naming that address."""
    addr = f"/ip4/127.0.0.1/tcp/1/p2p/{GOOD_PEER_ID}"
    args = ["role=expert", "subnet=english", f"out_dir={tmp_path}", "run_id=u", f"initial_peers={addr}"]
    r = procs.run([*args, "network.join_attempts=2", "network.join_timeout_seconds=3"], timeout=120.0)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _error_line(r)
    assert line.startswith("error: ") and addr in line
    assert procs.wait_gone() == []  # failed join attempts leave no DHT process or p2pd behind


@pytest.mark.parametrize(
    "addr",
    ["/ip4/127.0.0.1/tcp/notaport", "/ip4/127.0.0.1/tcp/31337"],
    ids=["bad-port", "no-peer-id"],
)
def test_malformed_initial_peer_is_a_one_line_error(procs, tmp_path, addr):
    """A malformed initial peer address is refused with one `error:` line naming it, before any network work."""
    args = ["role=expert", "subnet=english", f"out_dir={tmp_path}", "run_id=m", f"initial_peers={addr}"]
    r = procs.run(args, timeout=120.0)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _error_line(r)
    assert line.startswith("error: bad initial peer") and addr in line


def test_corrupt_seed_checkpoint_is_a_one_line_error(procs, tmp_path):
    """An expert given a corrupt seed checkpoint exits 1 with one `error:` line naming the file, nothing else."""
    seed = tmp_path / "seed.bin"
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    seed.write_bytes(noise.numpy().tobytes())
    args = ["role=expert", "subnet=english", f"out_dir={tmp_path}", "run_id=c", f"seed_checkpoint={seed}"]
    r = procs.run(args, timeout=120.0)
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [_error_line(r)]
    assert _error_line(r).startswith("error: seed ") and str(seed) in _error_line(r)


def test_corrupt_hotkey_file_is_a_one_line_error(procs, tmp_path):
    """A node given a corrupt key file (owner-only, so it is read) exits 1 with one `error:` line naming the file."""
    key = tmp_path / "miner.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    args = ["role=expert", "subnet=english", f"out_dir={tmp_path}", "run_id=k", f"hotkey_path={key}"]
    r = procs.run(args, timeout=120.0)
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [_error_line(r)]
    assert _error_line(r).startswith("error: hotkey file ") and str(key) in _error_line(r)
