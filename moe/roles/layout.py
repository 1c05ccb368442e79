"""What every role of a run shares: its directory, log file, status board, data and evaluation windows."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe.corpus import SLICE_BYTES, Subnet, fetch_subnet
from moe.corpus.batches import ByteBatches, iter_eval_windows, load_tokens
from moe.roles.run_config import CorpusConfig, RunConfig

logger = logging.getLogger(__name__)


def run_directory(cfg: RunConfig) -> Path:
    """`<out_dir>/<run_id>`, naming the run after the current time when no run_id is given."""
    if not cfg.run_id:
        cfg.run_id = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.out_dir) / cfg.run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup_logging(run_dir: Path, name: str, console_level: int = logging.WARNING) -> None:
    """Everything at INFO (or $HIVEMOE_LOG_LEVEL) into `<run_dir>/logs/<name>.log`; the console only gets warnings."""
    level = getattr(logging, os.environ.get("HIVEMOE_LOG_LEVEL", "INFO").upper(), logging.INFO)
    (run_dir / "logs").mkdir(exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = logging.FileHandler(run_dir / "logs" / f"{name}.log")
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


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)


class StatusBoard:
    """Each process's latest progress in `<run_dir>/status/<name>.json`, read by the local network's display."""

    def __init__(self, run_dir: Path, name: str):
        self.path = run_dir / "status" / f"{name}.json"
        self.fields: dict[str, Any] = {"name": name}

    def update(self, **fields: Any) -> None:
        self.fields.update(fields, updated=time.time())
        write_json(self.path, self.fields)

    @staticmethod
    def read_all(run_dir: Path) -> dict[str, dict]:
        out = {}
        for p in sorted((run_dir / "status").glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being rewritten; the next poll gets it
        return out


def subnet_folder(subnet: Subnet, data: CorpusConfig) -> Path:
    """The subnet's fetched split files (fetching once if the cache is missing)."""
    return fetch_subnet(subnet, data.data_dir or None, max_bytes=SLICE_BYTES if data.slice else None)


def subnet_tokens(subnet: Subnet, split: str, data: CorpusConfig) -> np.ndarray:
    return load_tokens(subnet_folder(subnet, data), split)


def batches_from(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, grad_accum: int = 1):
    """`batches_from(step)`: the batch stream of a given seed positioned at optimizer step `step` (exact resume)."""

    def start(step: int):
        sampler = ByteBatches(tokens, seq_len, batch_size, seed)
        for _ in range(step * grad_accum):
            sampler.sample()
        return iter(sampler)

    return start


def eval_windows(
    tokens_by_subnet: dict[str, np.ndarray], seq_len: int, batch_size: int, max_batches: int
) -> dict[str, Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]]:
    """Deterministic validation windows per subnet (the same ones for every model of a run)."""
    max_windows = max_batches * batch_size
    return {
        name: (lambda t=tokens: iter_eval_windows(t, seq_len, batch_size, max_windows))
        for name, tokens in tokens_by_subnet.items()
    }
