"""What every node process shares: its log file, its status board, and waiting to be told to stop."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from enum import IntEnum
from pathlib import Path
from typing import Any

from moe.fileio import write_json


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
