"""Fixtures for tests that start whole hivemoe nodes (`python train.py role=...`) as separate OS processes.

Every process a test starts carries a unique tag in its environment; hivemind hands the environment down to the
DHT processes and p2pd daemons the nodes start, so at teardown everything tagged is found (even orphans whose parent
was SIGKILLed) and killed. Nothing that another user of the machine started is ever touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "train.py"
TINY = ROOT / "configs" / "tiny.yaml"
TAG_VAR = "HIVEMOE_TEST_TAG"


class Procs:
    """Node processes of one test, each in its own session, logging to `<log_dir>/<name>.out`."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.tag = uuid.uuid4().hex
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, TAG_VAR: self.tag, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}

    def command(self, args: list[str], netns: str | None = None) -> list[str]:
        cmd = [sys.executable, str(TRAIN), str(TINY), *args]
        return ["ip", "netns", "exec", netns, *cmd] if netns else cmd

    def start(self, name: str, args: list[str], netns: str | None = None) -> subprocess.Popen:
        """Start `python train.py configs/tiny.yaml *args` (inside network namespace `netns` if given)."""
        log = open(self.log_dir / f"{name}.out", "w")
        p = subprocess.Popen(
            self.command(args, netns),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = p
        return p

    def run(
        self, args: list[str], timeout: float, netns: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a node to completion, capturing its output; its process group is killed if it overruns `timeout`."""
        p = subprocess.Popen(
            self.command(args, netns),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**(env or {})),
            cwd=ROOT,
            start_new_session=True,
        )
        self.procs[f"run-{p.pid}"] = p
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group(p)
            out, err = p.communicate()
            pytest.fail(f"train.py {' '.join(args)} ran past {timeout:.0f}s; stderr tail: {err[-2000:]}")
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def check_alive(self, *names: str) -> None:
        """Fail the test with the node's log tail if any named node has exited."""
        for name in names:
            code = self.procs[name].poll()
            if code is not None:
                pytest.fail(f"node {name} exited with code {code}:\n{self.log(name)}")

    def wait_for_file(self, path: Path, timeout: float, names: tuple[str, ...] = ()) -> None:
        """Wait until `path` exists, failing early (with the log) if one of the `names` nodes dies first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            self.check_alive(*names)
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}:\n{self.log(n)}" for n in names)
                pytest.fail(f"{path} did not appear within {timeout:.0f}s\n{logs}")
            time.sleep(0.3)

    @staticmethod
    def kill_group(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def kill(self, name: str) -> None:
        """SIGKILL a node and its whole process group (its DHT process and p2pd die with it, as on a crash)."""
        self.kill_group(self.procs[name])

    def tagged(self) -> list[psutil.Process]:
        """Live processes carrying this test's tag (nodes, their DHT processes, p2pd daemons), zombies excluded."""
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if p.name() == "torch_shm_manager" and p.ppid() == os.getpid():
                    continue  # ours, spawned with the tag while a DHT started; killing it aborts us at exit
                if p.environ().get(TAG_VAR) == self.tag:
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def wait_gone(self, timeout: float = 15.0) -> list[psutil.Process]:
        """Wait for every tagged process to exit; returns those still alive at the deadline."""
        deadline = time.monotonic() + timeout
        alive = self.tagged()
        while alive and time.monotonic() < deadline:
            time.sleep(0.3)
            alive = self.tagged()
        return alive

    def reap(self) -> None:
        """Kill every process group started here, then anything still tagged (orphaned DHT processes, p2pd)."""
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for p in self.tagged():
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """A `Procs` whose processes (and their descendants) are all killed when the test ends."""
    p = Procs(tmp_path / "proc-logs")
    try:
        yield p
    finally:
        p.reap()
