"""The student's training loop: the distillation loss on teacher windows, checkpointed for an exact resume.

The learning rate is a function of the step and the windows of step s are a function of (seed, s) alone, and the
teacher's answers are read back from its disk cache, so a distiller killed and restarted from its last checkpoint
(model, optimizer, step and the attribution totals) continues as if it had never stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from moe.distill.config import DistillConfig
from moe.distill.loss import distill_loss
from moe.training.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
from moe.training.loop import TrainConfig, lr_at, make_optimizer

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DistillResult:
    steps: int
    resumed_from: int
    seconds: float
    tokens: int
    final_kl: float
    final_hard: float


def window_batches(stream: Callable[[int], Iterator[Batch]], cycle: int) -> Callable[[int], Batch]:
    """The (x, y) batch of step s: the stream's s-th, or with `cycle` > 0 its (s mod cycle)-th, so training goes over
    the same `cycle` batches again (whose teacher answers are then cached)."""
    if cycle <= 0:
        state = {"next": None, "it": None}

        def fresh(step: int) -> Batch:
            if state["next"] != step:
                state["it"] = stream(step)
            state["next"] = step + 1
            return next(state["it"])

        return fresh
    batches: dict[int, Batch] = {}

    def cycled(step: int) -> Batch:
        k = step % cycle
        if k not in batches:
            batches[k] = next(stream(k))
        return batches[k]

    return cycled


def schedule(cfg: DistillConfig) -> TrainConfig:
    """The shared loop's view of the student's schedule (for its optimizer and learning rate)."""
    return TrainConfig(
        steps=max(1, cfg.steps),
        lr=cfg.lr,
        min_lr_ratio=cfg.min_lr_ratio,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )


def train_student(
    student: torch.nn.Module,
    batch_at: Callable[[int], Batch],
    teacher: Callable[[torch.Tensor], torch.Tensor],
    cfg: DistillConfig,
    checkpoint_dir: str | Path,
    model_config: dict,
    state_extra: Callable[[], dict] | None = None,
    on_resume: Callable[[dict], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Train `student` for cfg.steps from `teacher(x)` on `batch_at(step)`; resumes from `checkpoint_dir` if it holds
    a checkpoint (`on_resume` gets the `extra` that `state_extra()` saved with it)."""
    sched = schedule(cfg)
    optimizer = make_optimizer(student, sched)
    checkpoint_dir = Path(checkpoint_dir)
    start = 0
    if has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir, student, optimizer, expect_config=model_config)
        start = int(state["step"])
        if start > cfg.steps:
            raise CheckpointError(f"checkpoint {checkpoint_dir} is at step {start}, past steps={cfg.steps}")
        if on_resume is not None:
            on_resume(state.get("extra") or {})
        logger.info("student resumed from %s at step %d", checkpoint_dir, start)

    def save(step: int) -> None:
        extra = state_extra() if state_extra is not None else {}
        save_checkpoint(checkpoint_dir, student, step, model_config, optimizer, extra=extra)

    t0, tokens, kl, hard = time.perf_counter(), 0, float("nan"), float("nan")
    student.train()
    for step in range(start, cfg.steps):
        x, y = batch_at(step)
        target = teacher(x)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, sched)
        logits, aux = student(x, return_aux=True)
        loss = distill_loss(logits, target, y, cfg.temperature, cfg.hard_weight)
        optimizer.zero_grad(set_to_none=True)
        (loss.total + aux).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        optimizer.step()
        kl, hard = float(loss.kl.detach()), float(loss.hard.detach())
        tokens += x.numel()
        done = step + 1
        if on_step is not None:
            on_step(done, kl)
        if done % 10 == 0 or done == cfg.steps:
            logger.info("student step %d/%d kl %.4f hard %.4f", done, cfg.steps, kl, hard)
        if cfg.checkpoint_interval_steps and done % cfg.checkpoint_interval_steps == 0 and done != cfg.steps:
            save(done)
    if start < cfg.steps or not (checkpoint_dir / "state.json").exists():
        save(cfg.steps)
    student.eval()
    return DistillResult(cfg.steps, start, time.perf_counter() - t0, tokens, kl, hard)
