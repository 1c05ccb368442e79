"""Stopping: `python train.py` takes every process of its run with it, however it is stopped.

The network tests start the tiny network, wait until every expert serves (the router then has far more steps than the
test lasts, so the network is mid-run), stop the parent one way, and look for any process still carrying the test's
tag: nodes, their hivemind DHT processes, p2pd daemons. The node tests kill a lone bootstrap node and look the same
way; the last test checks that the network's stop kills what a node that ignores SIGTERM leaves in its group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from moe.roles.layout import SERVING, RunLayout
from moe.roles.network import Nodes

from .conftest import ROOT, Procs

STARTUP_SECONDS = 360.0
"""Seconds the tiny network may take until its experts serve (about 40 on 2 idle cores)."""
STOP_SECONDS = 10.0
"""Required: after Ctrl-C or SIGTERM of the parent, nothing of the run is left after this many seconds."""
ORPHAN_SECONDS = 30.0
"""Required: after SIGKILL of the parent, its nodes notice and are gone (with their children) within this."""
LIGHT_NETWORK = ["subnets=[english,code]", "seed_train.steps=2", "expert_train.steps=2"]
"""Every kind of node, each started sooner: two subnets, a few training steps (how long it trained is not tested)."""


def _start_serving_network(procs: Procs, out: Path) -> subprocess.Popen:
    """Start `python train.py configs/tiny.yaml` in its own session; return it once every expert serves."""
    args = [f"out_dir={out}", "run_id=s", "baselines=false", "router.steps=1000000", *LIGHT_NETWORK]
    parent = procs.start("network", args)
    layout = RunLayout(out / "s")
    procs.wait_for_file(layout.config, STARTUP_SECONDS, ("network",))
    subnets = yaml.safe_load(layout.config.read_text())["subnets"]
    for s in subnets:
        procs.wait_for_file(layout.expert(s) / SERVING, STARTUP_SECONDS, ("network",))
    procs.check_alive("network")
    return parent


def _describe(p: psutil.Process) -> str:
    """pid, parent, name and role of a leftover process (a DHT process shows its node's command line)."""
    try:
        role = next((a for a in p.cmdline() if a.startswith("role=")), "role=network")
        role = role if p.name().startswith("python") else ""
        return f"{p.pid} (parent {p.ppid()}) {p.name()} {role}".strip()
    except psutil.Error:
        return f"{p.pid} (exited while listed)"


def _assert_nothing_left(procs: Procs, seconds: float) -> None:
    left = procs.wait_gone(timeout=seconds)
    assert not left, f"still running {seconds:.0f}s after the stop: " + "; ".join(map(_describe, left))


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_sigterm_to_parent_stops_every_process(procs, tmp_path):
    """SIGTERM to the parent (`timeout`, `kill`, a scheduler) stops every node and their children within 10 s."""
    parent = _start_serving_network(procs, tmp_path)
    parent.send_signal(signal.SIGTERM)
    _assert_nothing_left(procs, STOP_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_ctrl_c_stops_every_process(procs, tmp_path):
    """SIGINT to the parent's process group, as a terminal's Ctrl-C sends, stops every process of the run in 10 s."""
    parent = _start_serving_network(procs, tmp_path)
    os.killpg(parent.pid, signal.SIGINT)
    _assert_nothing_left(procs, STOP_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_nodes_exit_when_parent_is_killed(procs, tmp_path):
    """After SIGKILL of the parent alone, its nodes notice and exit with their children within 30 s."""
    parent = _start_serving_network(procs, tmp_path)
    parent.kill()
    parent.wait()
    _assert_nothing_left(procs, ORPHAN_SECONDS)


def _start_bootstrap_node(procs: Procs, out: Path, own_session: bool) -> subprocess.Popen:
    """Start `python train.py role=bootstrap` (a node with a DHT process and a p2pd); return it once it is up."""
    args = [f"out_dir={out}", "run_id=b", "role=bootstrap"]
    if own_session:
        node = procs.start("bootstrap", args)
    else:  # in the test's process group, as a node started from a shell pipeline is in its shell's
        log = open(procs.log_dir / "bootstrap.out", "w")
        node = subprocess.Popen(procs.command(args), stdout=log, stderr=subprocess.STDOUT, env=procs.env(), cwd=ROOT)
        log.close()
        procs.procs["bootstrap"] = node
    procs.wait_for_file(RunLayout(out / "b").bootstrap, STARTUP_SECONDS, ("bootstrap",))
    return node


@pytest.mark.slow
@pytest.mark.parametrize("own_session", [True, False], ids=["own-session", "shared-group"])
def test_killed_node_leaves_no_dht_process_or_p2pd(procs, tmp_path, own_session):
    """A node killed by SIGKILL (nothing of it runs) leaves neither its DHT process nor its p2pd behind after 30 s."""
    node = _start_bootstrap_node(procs, tmp_path, own_session)
    node.kill()
    node.wait()
    _assert_nothing_left(procs, ORPHAN_SECONDS)


STUBBORN_NODE = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child: a node whose group ignores SIGTERM
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_all_kills_the_group_of_a_node_ignoring_sigterm(tmp_path):
    """A node that ignores SIGTERM is killed after the grace, together with the child it left in its process group."""
    entry = tmp_path / "stubborn.py"
    entry.write_text(textwrap.dedent(STUBBORN_NODE))
    layout = RunLayout.create(tmp_path, "r")
    nodes = Nodes(layout, entry, [])
    nodes.start("stubborn", [])
    out = layout.node_output("stubborn")
    deadline = time.monotonic() + 60
    while not out.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(out.read_text())
    try:
        nodes.stop_all(grace_seconds=1.0)
        assert nodes.procs["stubborn"].returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child)
    finally:
        for pid in (nodes.procs["stubborn"].pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
