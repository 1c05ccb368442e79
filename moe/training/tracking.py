"""Experiment tracking: wandb, imported lazily, offline unless the user has logged in, free when disabled.

Every logged metric also goes, one JSON line per `log` call, to `<run_dir>/metrics/<name>.jsonl`: the run's plots and
report read those, so they exist whether or not wandb is on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    enabled: bool = True
    """Log to wandb at all; false makes every tracker call a no-op and never imports wandb."""
    project: str = "hivemoe"
    """wandb project name."""
    mode: str = "auto"
    """online, offline, or auto (online only when WANDB_API_KEY is set or WANDB_MODE says so)."""
    group: str = ""
    """Run group; empty uses the run id, so every process of one local network lands in one group."""


def resolve_mode(cfg: WandbConfig) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


METRICS_DIR = "metrics"
"""Folder of a run directory holding each node's metrics as JSON lines."""


class Tracker:
    """One wandb run per process; `log` takes namespaced keys (`train/loss`, `eval/bpb/code`)."""

    def __init__(self, cfg: WandbConfig, run_dir: str | Path, name: str, config: dict[str, Any], group: str = ""):
        self._run = None
        self._metrics_path = Path(run_dir) / METRICS_DIR / f"{name}.jsonl"
        if not cfg.enabled:
            return
        import wandb  # lazy: a disabled tracker never pays for the import

        mode = resolve_mode(cfg)
        self._run = wandb.init(
            project=cfg.project,
            name=name,
            group=cfg.group or group or None,
            dir=str(run_dir),
            config=config,
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        logger.info("wandb run %s (%s) in %s", name, mode, run_dir)

    @property
    def run_path(self) -> str | None:
        return None if self._run is None else str(Path(self._run.dir).parent)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._append_local(metrics, step)
        if self._run is not None:
            self._run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(metrics)

    def _append_local(self, metrics: dict[str, float], step: int | None) -> None:
        """One JSON line of the numeric metrics; non-finite values become null (strict JSON), a full disk only costs
        the local copy."""
        row: dict[str, Any] = {"time": round(time.time(), 3), "step": step}
        for k, v in metrics.items():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue  # images and tables live in wandb only
            row[k] = x if math.isfinite(x) else None
        try:
            self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            logger.warning("cannot append metrics to %s: %s", self._metrics_path, e)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
