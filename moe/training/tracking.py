"""Experiment tracking: wandb, imported lazily, offline unless the user has logged in, free when disabled.

One wandb run per node (OS process), named after the node, grouped by the network's run id, with the node's role as
`job_type` and the resolved run config logged once at init; so a whole local network reads as one group in wandb.
Metric keys are namespaced (`train/loss`, `eval/bpb/<subnet>`, `validator/weight/<hotkey>`; hotkeys shortened by
`hotkey_key`). Offline runs land in `<run_dir>/wandb/offline-run-*` (`wandb sync` uploads them later;
moe.training.wandb_offline reads them back).

Every logged metric also goes, one JSON line per `log` call, to `<run_dir>/metrics/<name>.jsonl`: the run's plots and
report read those, so they exist whether or not wandb is on.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    enabled: bool = True
    """Log to wandb at all; false makes every tracker call a no-op and never imports wandb."""
    project: str = "hivemoe"
    """wandb project name."""
    mode: str = "auto"
    """online, offline, or auto (WANDB_MODE when set, else online only when the user is logged in: WANDB_API_KEY or
    a `wandb login` entry in ~/.netrc)."""
    group: str = ""
    """Run group; empty uses the run id, so every process of one local network lands in one group."""


def resolve_mode(cfg: WandbConfig) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if logged_in() else "offline"


def logged_in() -> bool:
    """Whether wandb has credentials here: WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes for the API host
    (an unreadable or malformed netrc counts as not logged in, so the run stays offline rather than failing)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def hotkey_key(hotkey: str) -> str:
    """The part of a hex hotkey that names it in metric keys (`validator/weight/<hotkey_key>`): the first 8 hex digits,
    as the nodes' log lines print it; tables carry the full hotkey."""
    return hotkey[:8]


METRICS_DIR = "metrics"
"""Folder of a run directory holding each node's metrics as JSON lines."""


class Tracker:
    """One wandb run; `log` takes namespaced keys (`train/loss`, `eval/bpb/code`). `config` is logged once, at init.

    A disabled tracker never imports wandb; its `log` still appends the local JSON lines."""

    def __init__(
        self,
        cfg: WandbConfig,
        run_dir: str | Path,
        name: str,
        config: dict[str, Any],
        group: str = "",
        job_type: str = "",
    ):
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
            job_type=job_type or None,
            dir=str(run_dir),
            config=config,
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        logger.info("wandb run %s (%s, %s) in %s", name, job_type or "-", mode, run_dir)

    @classmethod
    def for_node(cls, cfg: RunConfig, run_dir: str | Path, name: str, job_type: str = "") -> Tracker:
        """The run of one node of the network `cfg` describes: grouped by its run id, `job_type` its role (`cfg.role`
        unless given), the whole resolved config logged once."""
        from moe.config_loader import to_dict

        return cls(cfg.wandb, run_dir, name, to_dict(cfg), group=cfg.run_id, job_type=job_type or cfg.role)

    @property
    def enabled(self) -> bool:
        """Whether a wandb run is open (callers skip work that only wandb would see)."""
        return self._run is not None

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

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log `rows` as a wandb.Table under `key` (wandb only: tables have no local JSON line)."""
        if self._run is None:
            return
        import wandb

        self._run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def images(self, images: dict[str, str | Path]) -> None:
        """Log each image file under its key (`plots/<name>`); a missing or unreadable file is skipped with a warning,
        as a plot that failed to render must not lose the rest of the run's record."""
        if self._run is None:
            return
        import wandb

        logged = {}
        for key, path in images.items():
            try:
                logged[key] = wandb.Image(str(path))
            except Exception as e:  # PIL's errors for a broken file are many and unexported
                logger.warning("cannot log image %s: %r", path, e)
        if logged:
            self._run.log(logged)

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
        """Close the run. Its offline file is complete once wandb's service has flushed it: at process exit, or at
        `close_wandb()`, not necessarily when this returns."""
        if self._run is not None:
            self._run.finish()
            self._run = None


def close_wandb() -> None:
    """Flush every finished run of this process to disk and stop wandb's service (a later run starts a new one); a
    no-op where wandb was never imported. For a process that reads its own runs' files, or goes on working after."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
