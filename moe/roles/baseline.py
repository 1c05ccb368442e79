"""Baselines the mixture is judged against, both one model of the expert's size trained on the union of the data:

- solo: with the compute of one expert node, seed included (the seed plus one expert's steps): what a single
  participant could build alone;
- dense: with the total compute of the whole run (the seed plus every expert's steps): what one party holding all
  the compute could build. Closing the gap to it is the research goal behind the project.
Both continue from the run's seed, so their compute counts the seed exactly once, as the mixture's does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from moe.corpus import Subnet
from moe.model.transformer import config_dict
from moe.roles.lm_job import blended_batches_from, run_lm_job
from moe.roles.run_config import RunConfig
from moe.roles.seed import seed_dir
from moe.training.checkpoint import load_model_bytes

logger = logging.getLogger(__name__)

BASELINES = ("solo", "dense")


def baseline_dir(run_dir: Path, kind: str) -> Path:
    return run_dir / "baselines" / kind


def run_baseline(cfg: RunConfig, subnets: dict[str, Subnet], run_dir: Path, kind: str, n_experts: int) -> int:
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    seed_blob = seed_dir(run_dir) / "model.bin"
    if not seed_blob.is_file():
        raise FileNotFoundError(f"baseline {kind} needs the run's seed at {seed_blob}; train the seed first")
    expert_steps = cfg.expert_train.steps * (1 if kind == "solo" else n_experts)
    train = dataclasses.replace(cfg.expert_train, steps=expert_steps)
    if train.eval_interval:
        train.eval_interval = max(train.eval_interval, expert_steps // 4)
    seed_result = seed_dir(run_dir) / "result.json"
    import json

    seed_flops = json.loads(seed_result.read_text())["train_flops"] if seed_result.is_file() else 0.0
    expected = config_dict(cfg.model)
    run_lm_job(
        cfg,
        subnets,
        run_dir,
        f"baseline-{kind}",
        train,
        blended_batches_from(cfg, subnets, train, seed=cfg.seed + 2000),
        baseline_dir(run_dir, kind),
        init=lambda model: load_model_bytes(model, seed_blob.read_bytes(), expected, source=str(seed_blob)),
        extra_result={
            "kind": kind,
            "seed_flops": seed_flops,
            "expert_equivalents": expert_steps / cfg.expert_train.steps,
        },
    )
    return 0
