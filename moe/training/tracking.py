"""Experiment tracking: wandb, imported lazily, offline unless the user has logged in, free when disabled."""

from __future__ import annotations

import logging
import os
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


class Tracker:
    """One wandb run per process; `log` takes namespaced keys (`train/loss`, `eval/bpb/code`)."""

    def __init__(self, cfg: WandbConfig, run_dir: str | Path, name: str, config: dict[str, Any], group: str = ""):
        self._run = None
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
        if self._run is not None:
            self._run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(metrics)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
