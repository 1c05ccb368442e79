"""Baselines the mixture is judged against, both one model of the expert's size trained on the union of the data:

- solo: with the compute of one expert node, seed included (the seed plus one expert's steps): what a single
  participant could build alone;
- dense: with the total compute of the whole run (the seed plus every expert's steps): what one party holding all
  the compute could build. Closing the gap to it is the research goal behind the project.
Both continue from the run's seed, so their compute counts the seed exactly once, as the mixture's does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from moe.model.transformer import config_dict
from moe.roles.layout import RESULT, RunLayout
from moe.roles.lm_job import run_lm_job, union_batches
from moe.roles.node import Stream
from moe.training.checkpoint import load_model_bytes

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)

BASELINES = ("solo", "dense")
IDLE_CHECK_STEPS = 10
"""How often (in steps) a baseline looks whether the rest of the run has finished and left cores idle."""


def take_idle_cores(layout: RunLayout, kind: str, students: list[str]) -> Callable[[int, object], None]:
    """A step hook that gives this baseline every core of the machine once the router, the other baseline and the
    distillers of `students` are done: the last job would otherwise leave a core idle to the end."""
    other = next(k for k in BASELINES if k != kind)
    taken = False

    def hook(step: int, model: object) -> None:
        nonlocal taken
        if taken or step % IDLE_CHECK_STEPS:
            return
        others = [layout.router, layout.baseline(other), *(layout.student(s) for s in students)]
        if all((path / RESULT).exists() for path in others):
            cores = len(os.sched_getaffinity(0))
            if cores > torch.get_num_threads():
                logger.info("the rest of the run is done: training on %d threads from step %d", cores, step)
                torch.set_num_threads(cores)
            taken = True

    return hook


def run_baseline(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout, kind: str, n_experts: int) -> int:
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    seed_blob = layout.seed_blob
    if not seed_blob.is_file():
        raise FileNotFoundError(f"baseline {kind} needs the run's seed at {seed_blob}; train the seed first")
    expert_steps = cfg.expert_train.steps * (1 if kind == "solo" else n_experts)
    train = dataclasses.replace(cfg.expert_train, steps=expert_steps)
    if train.eval_interval_steps:
        train.eval_interval_steps = max(train.eval_interval_steps, expert_steps // 4)
    seed_result = layout.seed / RESULT
    seed_flops = json.loads(seed_result.read_text())["train_flops"] if seed_result.is_file() else 0.0
    expected = config_dict(cfg.model)
    run_lm_job(
        cfg,
        subnets,
        layout,
        f"baseline-{kind}",
        train,
        union_batches(cfg, subnets, train, seed=cfg.seed + Stream.BASELINE),
        layout.baseline(kind),
        init=lambda model: load_model_bytes(model, seed_blob.read_bytes(), expected, source=str(seed_blob)),
        on_step=take_idle_cores(layout, kind, cfg.students),
        extra_result={
            "kind": kind,
            "seed_flops": seed_flops,
            "expert_equivalents": 1 if kind == "solo" else n_experts,
        },
    )
    return 0
