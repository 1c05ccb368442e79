"""A network spread over three hosts for real: Linux network namespaces joined by a bridge, one address each.

ns1 (10.213.0.1) runs the bootstrap peer, the seed node and finally the router; ns2 and ns3 each run one expert
node that fetches the seed over hivemind and serves its specialist across the bridge. The bridge lives in a fourth
namespace, so nothing is reachable from, or visible to, the host's own network. Needs root and `ip netns`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Procs

pytestmark = pytest.mark.slow

PREFIX = "10.213.0"
"""The /24 of the namespaces' addresses; private to the bridge namespace, so concurrent runs cannot clash."""
PORT = 31337
"""Bootstrap port in ns1 (its own network stack: no clash with anything on the host)."""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    """Namespaces ns1..ns3 on one bridge: {namespace name: address}; all deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = uuid.uuid4().hex[:6]
    hub, names = f"hm{tag}b", [f"hm{tag}{i}" for i in (1, 2, 3)]
    created: list[str] = []
    try:
        try:
            _ip("netns", "add", hub)
        except RuntimeError as e:
            pytest.skip(f"cannot create network namespaces here: {e}")
        created.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        out = {}
        for i, ns in enumerate(names, start=1):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("link", "add", f"v{tag}{i}", "netns", ns, "type", "veth", "peer", "name", f"p{tag}{i}", "netns", hub)
            _ip("-n", hub, "link", "set", f"p{tag}{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"p{tag}{i}", "up")
            _ip("-n", ns, "addr", "add", f"{PREFIX}.{i}/24", "dev", f"v{tag}{i}")
            _ip("-n", ns, "link", "set", f"v{tag}{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[ns] = f"{PREFIX}.{i}"
        r = subprocess.run(
            ["ip", "netns", "exec", names[1], "ping", "-c", "1", "-W", "5", f"{PREFIX}.1"], capture_output=True
        )
        if shutil.which("ping") and r.returncode != 0:
            raise RuntimeError(f"namespaces cannot reach each other: {r.stdout.decode()[-300:]}")
        yield out
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_three_host_network_over_namespaces(hosts, procs: Procs, tmp_path: Path):
    """Bootstrap, seed and router on one host and an expert on each of two others train, serve and mix via a bridge."""
    (ns1, a1), (ns2, a2), (ns3, a3) = hosts.items()
    run_dir = tmp_path / "mh"
    common = [f"out_dir={tmp_path}", "run_id=mh", "subnets=english,code", "network.join_timeout_seconds=10"]

    procs.start("bootstrap", [*common, "role=bootstrap", f"network.host={a1}", f"network.port={PORT}"], netns=ns1)
    procs.wait_for_file(run_dir / "bootstrap.json", 120.0, ("bootstrap",))
    peers = json.loads((run_dir / "bootstrap.json").read_text())["initial_peers"]
    assert peers and all(p.startswith(f"/ip4/{a1}/tcp/{PORT}/p2p/") for p in peers), peers
    joined = [*common, f"initial_peers={','.join(peers)}"]

    procs.start("seed", [*joined, "role=seed", f"network.host={a1}", "seed_train.steps=10"], netns=ns1)
    procs.wait_for_file(run_dir / "seed" / "published.json", 180.0, ("bootstrap", "seed"))
    for name, ns, addr, subnet in (("expert-english", ns2, a2, "english"), ("expert-code", ns3, a3, "code")):
        args = [*joined, "role=expert", f"subnet={subnet}", f"network.host={addr}", "expert_train.steps=10"]
        procs.start(name, args, netns=ns)
    for subnet in ("english", "code"):
        procs.wait_for_file(run_dir / "experts" / subnet / "serving.json", 240.0, ("expert-english", "expert-code"))

    experts = {s: json.loads((run_dir / "experts" / s / "result.json").read_text()) for s in ("english", "code")}
    for r in experts.values():
        assert r["branched_from"].startswith("network seed")  # fetched over hivemind from ns1, sha256-verified

    # `hivemoe status` from the third host sees both experts through the bootstrap on the first, and reaches them
    status = subprocess.run(
        ["ip", "netns", "exec", ns3, sys.executable, "-m", "moe.cli.main", "status", "--initial-peers", *peers]
        + ["--subnets", "english,code", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=procs.env(),
        cwd=ROOT,
    )
    assert status.returncode == 0, status.stderr[-2000:]
    view = json.loads(status.stdout.strip().splitlines()[-1])
    assert sorted(e["subnet"] for e in view["experts"]) == ["code", "english"]
    assert {e["hotkey"] for e in view["experts"]} == {e["hotkey"] for e in experts.values()}
    assert all(e["latency_p50_ms"] > 0 for e in view["experts"])  # probed from the third host across the bridge

    router = [*joined, "role=router", f"network.host={a1}", "router.steps=5"]
    r = procs.run(router, timeout=240.0, netns=ns1, env={"HIVEMOE_LOG_LEVEL": "DEBUG"})
    assert r.returncode == 0, f"router failed:\n{r.stderr[-3000:]}\n{procs.log('expert-english')}"
    # experts advertise their own address for the direct TCP path, so calls across hosts skip the p2pd relay
    assert "no direct path" not in (run_dir / "logs" / "router.log").read_text()
    result = json.loads((run_dir / "router" / "result.json").read_text())
    assert set(result["eval_bpb"]) == {"english", "code", "all"}
    assert all(math.isfinite(v) and 0 < v < 8.5 for v in result["eval_bpb"].values())
    assert sorted(result["experts"]) == sorted(e["hotkey"] for e in experts.values())
    procs.check_alive("bootstrap", "seed", "expert-english", "expert-code")
