"""One language-model training job (seed, expert or baseline): data in, checkpoint and result.json out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from moe.corpus import Subnet
from moe.corpus.batches import BlendedBatches, ByteBatches
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import StatusBoard, eval_windows, subnet_tokens, write_json
from moe.roles.run_config import RunConfig
from moe.training.loop import TrainConfig, TrainResult, train_lm
from moe.training.tracking import Tracker

logger = logging.getLogger(__name__)


def macro_bpb(per_subnet: dict[str, float]) -> dict[str, float]:
    """Per-subnet bits per byte plus `all`, their plain mean: every domain counts the same."""
    out = dict(per_subnet)
    out["all"] = float(np.mean(list(per_subnet.values()))) if per_subnet else float("nan")
    return out


def validation_sets(cfg: RunConfig, subnets: dict[str, Subnet], train: TrainConfig):
    tokens = {name: subnet_tokens(subnets[name], "val", cfg.data) for name in cfg.subnets}
    return eval_windows(tokens, train.seq_len, train.batch_size, train.eval_batches)


def blended_batches_from(
    cfg: RunConfig, subnets: dict[str, Subnet], train: TrainConfig, seed: int, split: str = "train"
):
    """Batches drawn evenly from every subnet of the run (the union of the data), positioned at any step."""
    tokens = [subnet_tokens(subnets[name], split, cfg.data) for name in cfg.subnets]

    def start(step: int):
        samplers = [ByteBatches(t, train.seq_len, train.batch_size, seed + i) for i, t in enumerate(tokens)]
        blend = BlendedBatches(samplers, [1.0] * len(samplers), train.batch_size, seed)
        for _ in range(step * train.grad_accum):
            blend.sample()
        return iter(blend)

    return start


def run_lm_job(
    cfg: RunConfig,
    subnets: dict[str, Subnet],
    run_dir: Path,
    name: str,
    train: TrainConfig,
    batches_from: Callable[[int], object],
    out_dir: Path,
    init: Callable[[ByteLM], None] | None = None,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    extra_result: dict | None = None,
) -> tuple[ByteLM, TrainResult]:
    """Build the model, optionally initialise it (`init`), train it, evaluate on every subnet, save result.json."""
    status = StatusBoard(run_dir, name)
    status.update(phase="loading data", step=0, steps=train.steps)
    torch.manual_seed(cfg.seed)
    model = ByteLM(cfg.model)
    if init is not None:
        init(model)
    evals = validation_sets(cfg, subnets, train)
    tracker = Tracker(cfg.wandb, run_dir, name, asdict(cfg), group=cfg.run_id)

    def step_hook(step: int, m: torch.nn.Module) -> None:
        if step % max(1, train.log_interval) == 0 or step == train.steps:
            status.update(phase="training", step=step)
        if on_step is not None:
            on_step(step, m)

    status.update(phase="training")
    result = train_lm(
        model,
        batches_from,
        evals,
        train,
        out_dir / "checkpoint",
        config_dict(cfg.model),
        tracker=tracker,
        tag=name,
        on_step=step_hook,
    )
    eval_bpb = macro_bpb(result.eval_bpb)
    tracker.summary({f"eval/bpb/{k}": v for k, v in eval_bpb.items()})
    tracker.finish()
    record = {
        "name": name,
        "params": model.num_params(),
        "train_steps": result.steps,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "train_flops": result.flops,
        "final_loss": result.final_loss,
        "eval_bpb": eval_bpb,
        **(extra_result or {}),
    }
    write_json(out_dir / "result.json", record)
    status.update(phase="trained", step=result.steps, eval_bpb=eval_bpb["all"])
    logger.info("%s done: %s", name, " ".join(f"{k}={v:.3f}" for k, v in eval_bpb.items()))
    return model, result
