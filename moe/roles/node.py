"""What every node process shares: its log file, its status board, waiting to be told to stop, and stopping with its
parent."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

from moe.fileio import write_json

PARENT_PID_VAR = "HIVEMOE_PARENT_PID"
"""Set by the local network on every node it starts: the pid of the parent the node must not outlive."""

logger = logging.getLogger(__name__)


class Stream(IntEnum):
    """Offsets added to the run's seed so that each role draws its own random stream. Only their distinctness
    matters (an expert adds its subnet's netuid instead, and netuids are small); they keep the values the first runs
    used, so results reproduce."""

    CENTROID_PROBE = 7
    """The windows an expert averages its published domain centroid over."""
    SEED = 1000
    """The shared seed's training batches."""
    BASELINE = 2000
    """The solo and dense baselines' training batches."""
    ROUTER = 3000
    """The gate's training batches on the routing split."""
    ROUTER_AUDIT = 3100
    """The router's causality audit: windows of the routing split, their twins' donors, where twins go."""
    ROUTER_TRAFFIC = 3200
    """The routing-split sequences the local network's router mixes before the validators start."""
    DISTILL = 4000
    """The windows a distiller asks the teacher for."""


def setup_logging(logs_dir: Path, name: str, console_level: int = logging.WARNING) -> None:
    """Everything at INFO (or $HIVEMOE_LOG_LEVEL) into `<logs_dir>/<name>.log`; the console only gets warnings."""
    level = getattr(logging, os.environ.get("HIVEMOE_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = logging.FileHandler(logs_dir / f"{name}.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(level)
    ch = logging.StreamHandler()
    ch.setFormatter(logging.Formatter(f"[{name}] %(levelname)s %(message)s"))
    ch.setLevel(console_level)
    root.addHandler(fh)
    root.addHandler(ch)
    root.setLevel(min(level, console_level))
    for noisy in ("hivemind", "asyncio", "filelock", "datasets", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class StatusBoard:
    """Each process's latest progress in `<status_dir>/<name>.json`, read by the local network's display."""

    def __init__(self, status_dir: Path, name: str):
        self.path = status_dir / f"{name}.json"
        self.fields: dict[str, Any] = {"name": name}

    def update(self, **fields: Any) -> None:
        self.fields.update(fields, updated=time.time())
        write_json(self.path, self.fields)

    @staticmethod
    def read_all(status_dir: Path) -> dict[str, dict]:
        out = {}
        for p in sorted(status_dir.glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being rewritten; the next poll gets it
        return out


def wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT: a serving node's normal life after its work is done."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


class Stopped(KeyboardInterrupt):
    """What SIGTERM raises in a process's main thread (`exit_on_sigterm`): it unwinds the same way as Ctrl-C."""


def exit_on_sigterm() -> None:
    """Make SIGTERM raise `Stopped`, so `finally` blocks close the node's DHT, server and p2pd instead of the process
    vanishing and orphaning them. Only the first SIGTERM raises: a second one arriving during that cleanup is ignored
    rather than cutting it short (SIGKILL remains for a process that hangs)."""

    def raise_stopped(signum, frame):
        signal.signal(signal.SIGTERM, lambda *_: None)  # not SIG_IGN, which a process started meanwhile would inherit
        raise Stopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, raise_stopped)


def exit_with_parent(poll_seconds: float = 1.0, grace_seconds: float = 10.0) -> None:
    """If the local network started this node, exit once that parent is gone, even if it died by SIGKILL.

    The parent's pid comes in $HIVEMOE_PARENT_PID (removed here, so nothing this node starts inherits it). A daemon
    thread polls `os.getppid()`: once it differs, the parent died and we were reparented. The node then gets SIGTERM
    for its usual orderly exit, and if it still runs `grace_seconds` later, its descendants and it are killed.
    Polling is chosen over Linux's PR_SET_PDEATHSIG, which fires when the parent *thread* that started us exits
    rather than the process, and misses a parent that died before the call; and over a pipe the parent holds open,
    whose write end every process the parent forks later (hivemind forks its DHT process) inherits and keeps open
    after the parent is gone. Does nothing in a node started by hand.
    """
    parent = os.environ.pop(PARENT_PID_VAR, None)
    if parent is None:
        return
    expected = int(parent)

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(poll_seconds)
        logger.warning("parent %d is gone; stopping", expected)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        logger.warning("still running %.0fs after the parent died; killing this node", grace_seconds)
        terminate_children(kill_after_seconds=2.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def exit_now(code: int) -> NoReturn:
    """End a stopped process at once: run the atexit handlers (multiprocessing stops daemon processes such as
    hivemind's DHT, logging flushes), SIGTERM every descendant still running (torch's shared-memory manager, a stray
    p2pd), then skip the interpreter's teardown, as multiprocessing does for its own children. That teardown,
    garbage-collecting all that torch, hivemind and the corpus loaded, took 1-5 s of CPU per process on a busy 2-core
    machine, in every node at once, which alone could miss the 10 s in which an interrupted network must be gone."""
    atexit._run_exitfuncs()
    terminate_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def terminate_children(kill_after_seconds: float | None = None) -> None:
    """SIGTERM every descendant of this process; given `kill_after_seconds`, SIGKILL those still there after it."""
    import psutil

    from moe.processes import terminate

    terminate(psutil.Process().children(recursive=True), kill_after_seconds)
