"""One language-model training job (seed, expert or baseline): data in, checkpoint and result.json out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from moe.corpus.batches import BatchStream, blended_batches_at_step, eval_windows
from moe.corpus.tokens import shifted_tokens, subnet_tokens
from moe.fileio import write_json
from moe.metrics import byte_log_probs, evaluate_model_bpb, macro_bpb, score_sets
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import CHECKPOINT, RESULT, RunLayout
from moe.roles.node import StatusBoard
from moe.training.loop import TrainConfig, TrainResult, train_lm
from moe.training.tracking import Tracker

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


def validation_sets(cfg: RunConfig, subnets: dict[str, Subnet], train: TrainConfig):
    """Every subnet's validation windows, the same for every model of the run."""
    tokens = {name: subnet_tokens(subnets[name], "val", cfg.data) for name in cfg.subnets}
    return eval_windows(tokens, train.seq_len, train.batch_size, train.eval_batches)


def shifted_sets(cfg: RunConfig, subnets: dict[str, Subnet], seq_len: int, batch_size: int):
    """Every window of each subnet's shifted evaluation set (text from another source), where it has one."""
    tokens = {name: shifted_tokens(subnets[name], cfg.data) for name in cfg.subnets}
    return eval_windows({k: t for k, t in tokens.items() if t is not None}, seq_len, batch_size, max_batches=0)


def shifted_scores(model: ByteLM, sets) -> dict:
    """The result fields of a model's score on shifted text: `shifted_bpb` and `worst_window_bpb`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bpb, worst = score_sets(lambda x: byte_log_probs(model(x.to(device))).cpu(), sets)
    model.train(was_training)
    return {"shifted_bpb": bpb if sets else {}, "worst_window_bpb": worst}


def score_model(cfg: RunConfig, subnets: dict[str, Subnet], model: ByteLM) -> dict:
    """`eval_bpb` on every subnet's validation windows and the shifted fields, as every model of the run is scored
    (for models trained elsewhere: a distilled student, a seed taken from a checkpoint)."""
    t = cfg.expert_train
    model.eval()
    with torch.no_grad():
        evals = validation_sets(cfg, subnets, t)
        eval_bpb = macro_bpb({s: evaluate_model_bpb(model, windows()) for s, windows in evals.items()})
    return {"eval_bpb": eval_bpb, **shifted_scores(model, shifted_sets(cfg, subnets, t.seq_len, t.batch_size))}


def union_batches(cfg: RunConfig, subnets: dict[str, Subnet], train: TrainConfig, seed: int) -> BatchStream:
    """Training batches drawn evenly from every subnet of the run (the union of the data)."""
    tokens = [subnet_tokens(subnets[name], "train", cfg.data) for name in cfg.subnets]
    return blended_batches_at_step(tokens, train.seq_len, train.batch_size, seed, train.grad_accum)


def run_lm_job(
    cfg: RunConfig,
    subnets: dict[str, Subnet],
    layout: RunLayout,
    name: str,
    train: TrainConfig,
    batches: BatchStream,
    out_dir: Path,
    init: Callable[[ByteLM], None] | None = None,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    extra_result: dict | None = None,
) -> tuple[ByteLM, TrainResult]:
    """Build the model, optionally initialise it (`init`), train it, evaluate on every subnet, save result.json."""
    status = StatusBoard(layout.status, name)
    status.update(phase="loading data", step=0, steps=train.steps)
    torch.manual_seed(cfg.seed)
    model = ByteLM(cfg.model)
    if init is not None:
        init(model)
    evals = validation_sets(cfg, subnets, train)
    tracker = Tracker.for_node(cfg, layout.root, name)  # job_type: seed, expert or baseline (cfg.role)

    def step_hook(step: int, m: torch.nn.Module) -> None:
        if step % train.log_interval_steps == 0 or step == train.steps:
            status.update(phase="training", step=step)
        if on_step is not None:
            on_step(step, m)

    status.update(phase="training")
    result = train_lm(
        model,
        batches,
        evals,
        train,
        out_dir / CHECKPOINT,
        config_dict(cfg.model),
        tracker=tracker,
        tag=name,
        on_step=step_hook,
    )
    eval_bpb = macro_bpb(result.eval_bpb)
    shifted = shifted_scores(model, shifted_sets(cfg, subnets, train.seq_len, train.batch_size))
    tracker.summary({f"eval/bpb/{k}": v for k, v in eval_bpb.items()})
    tracker.summary({f"shifted/bpb/{k}": v for k, v in shifted["shifted_bpb"].items()})
    tracker.summary({"train/final_loss": result.final_loss, "train/flops": result.flops, "params": model.num_params()})
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
        **shifted,
        **(extra_result or {}),
    }
    write_json(out_dir / RESULT, record)
    status.update(phase="trained", step=result.steps, eval_bpb=eval_bpb["all"])
    logger.info("%s done: %s", name, " ".join(f"{k}={v:.3f}" for k, v in eval_bpb.items()))
    return model, result
