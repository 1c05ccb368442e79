"""Find and load a trained model of a finished run by name: the thing `hivemoe export` turns into a HF checkpoint.

    dense            <run>/students/dense/checkpoint   the dense distilled student
    btx              <run>/students/btx/checkpoint     the Branch-Train-MiX (MoE) student
    seed             <run>/seed/checkpoint             the network's shared seed model
    expert:<subnet>  <run>/experts/<subnet>/checkpoint one subnet's expert
    baseline:<kind>  <run>/baselines/<kind>/checkpoint a baseline (solo, dense)

The model is rebuilt from the checkpoint's own config (state.json "config", a ModelConfig) and loaded with hash
verification, so a truncated or tampered checkpoint is refused rather than exported.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from moe.model.transformer import ByteLM, ModelConfig
from moe.roles.layout import CHECKPOINT, RunLayout
from moe.training.checkpoint import CheckpointError, load_checkpoint, read_state

MODEL_NAMES = ("dense", "btx", "seed", "expert:<subnet>", "baseline:<kind>")
"""The model names a run can be asked for, as shown in error messages and `--help`."""

_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class RunModelError(RuntimeError):
    """A run that does not hold the requested model, or holds it missing, corrupt or unloadable (one-line message)."""


def checkpoint_dir(run_dir: str | Path, model: str) -> Path:
    """Checkpoint directory of `model` inside `run_dir` (not checked for existence); RunModelError on a bad name."""
    layout = RunLayout(Path(run_dir))
    kind, _, arg = model.partition(":")
    if kind in ("dense", "btx") and not arg:
        return layout.student(kind) / CHECKPOINT
    if kind == "seed" and not arg:
        return layout.seed / CHECKPOINT
    if kind in ("expert", "baseline") and _NAME_PART.fullmatch(arg) and ".." not in arg:
        folder = layout.expert(arg) if kind == "expert" else layout.baseline(arg)
        return folder / CHECKPOINT
    raise RunModelError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")


def load_run_model(run_dir: str | Path, model: str) -> ByteLM:
    """The run's `model` as a ByteLM in eval mode on CPU; RunModelError if it is missing, corrupt or unloadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunModelError(f"no run directory at {run_dir}")
    path = checkpoint_dir(run_dir, model)
    if not path.is_dir():
        raise RunModelError(f"run {run_dir} has no {model} model ({path} missing)")
    try:
        config = read_state(path).get("config")
        if not isinstance(config, dict):
            raise RunModelError(f"checkpoint {path} records no model config")
        try:
            cfg = ModelConfig(**config)
        except (TypeError, ValueError) as e:
            raise RunModelError(f"checkpoint {path} has a config that is not a ByteLM's: {e}") from None
        net = ByteLM(cfg)
        load_checkpoint(path, net, expect_config=asdict(cfg))
    except CheckpointError as e:
        raise RunModelError(str(e)) from None
    return net.eval()
