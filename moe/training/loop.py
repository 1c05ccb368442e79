"""The language-model training loop shared by the seed, every expert and the baselines.

accelerate handles the device, bf16 autocast on CUDA (fp32 on CPU), gradient accumulation and DDP when launched
with `accelerate launch`. The learning rate is a pure function of the step and batches are a pure function of
(seed, step), so a run resumed from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moe.config_checks import require_at_least, require_between, require_one_of, require_positive
from moe.metrics import evaluate_model_bpb
from moe.training.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainConfig:
    """One language model's training; the defaults are an expert's in the default run (the seed's differ)."""

    steps: int = 400
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per micro-batch."""
    seq_len: int = 128
    """Bytes per training sequence."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (norms and embeddings are not decayed)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    eval_interval_steps: int = 0
    """Steps between evaluations; 0 evaluates only at the end."""
    eval_batches: int = 8
    """Validation batches per subnet per evaluation."""
    log_interval_steps: int = 20
    """Steps between log lines."""
    checkpoint_interval_steps: int = 0
    """Steps between checkpoints; 0 saves only at the end."""
    mixed_precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), no, bf16 or fp16."""
    compile: str = "auto"
    """torch.compile the model: auto (CUDA only), true or false."""
    cpu_threads: int = 0
    """torch CPU threads for this process; 0 keeps torch's default."""
    progress: bool = True
    """Show a live progress bar."""

    def __post_init__(self):
        require_at_least(self, 1, ["batch_size", "seq_len", "grad_accum", "eval_batches", "log_interval_steps"])
        counts = ["steps", "warmup_steps", "eval_interval_steps", "checkpoint_interval_steps", "cpu_threads"]
        require_at_least(self, 0, [*counts, "weight_decay", "grad_clip"])
        require_positive(self, ["lr"])
        require_between(self, "min_lr_ratio", 0.0, 1.0)
        require_one_of(self, "mixed_precision", ("auto", "no", "bf16", "fp16"))
        require_one_of(self, "compile", ("auto", "true", "false"))


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    eval_bpb: dict[str, float] = field(default_factory=dict)
    flops: float = 0.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.dim() < 2 or "embed" in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=torch.cuda.is_available())


def make_accelerator(cfg: TrainConfig, grad_accum: int | None = None):
    from accelerate import Accelerator

    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum or cfg.grad_accum)


def _want_compile(cfg: TrainConfig) -> bool:
    return cfg.compile == "true" or (cfg.compile == "auto" and torch.cuda.is_available())


def train_lm(
    model: torch.nn.Module,
    batches_from: Callable[[int], Iterator[Batch]],
    eval_sets: dict[str, Callable[[], Iterable[Batch]]],
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    model_config: dict,
    tracker=None,
    tag: str = "train",
    resume: bool = True,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps, evaluating bits per byte on each eval set, checkpointing to `checkpoint_dir`.

    `batches_from(step)` yields micro-batches starting at optimizer step `step` (so resuming skips nothing and
    repeats nothing). A checkpoint in `checkpoint_dir` that does not fit raises CheckpointError; it is never
    silently discarded. `on_step(step, model)` runs after every optimizer step (an expert node refreshes its
    served weights from it). `tracker` gets `train/loss`, `train/lr`, `train/tokens_per_s`, `train/tokens` (this
    session's) every log interval and `eval/bpb/<subnet>` at each evaluation; `tag` names the job in log lines only.
    """
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    accelerator = make_accelerator(cfg)
    optimizer = make_optimizer(model, cfg)
    checkpoint_dir = Path(checkpoint_dir)
    start_step = 0
    if resume and has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir, model, optimizer, expect_config=model_config)
        start_step = int(state["step"])
        logger.info("[%s] resumed from %s at step %d", tag, checkpoint_dir, start_step)
        if start_step > cfg.steps:
            raise CheckpointError(f"checkpoint {checkpoint_dir} is at step {start_step}, past steps={cfg.steps}")
    train_model = torch.compile(model) if _want_compile(cfg) else model
    train_model, optimizer = accelerator.prepare(train_model, optimizer)
    device = accelerator.device
    flops_per_token = model.flops_per_token() if hasattr(model, "flops_per_token") else 0

    def evaluate() -> dict[str, float]:
        with accelerator.autocast():
            return {name: evaluate_model_bpb(model, windows(), device) for name, windows in eval_sets.items()}

    progress = None
    if cfg.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.steps, initial=start_step, desc=tag, unit="step", dynamic_ncols=True, leave=False)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * accelerator.num_processes
    batches = batches_from(start_step)
    t0, tokens, loss_value, eval_bpb = time.perf_counter(), 0, float("nan"), {}
    model.train()
    for step in range(start_step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with accelerator.accumulate(train_model):
                logits, aux = train_model(x, return_aux=True)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                accelerator.backward(loss + aux)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(train_model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        loss_value = float(loss_sum) / cfg.grad_accum  # note: CPU-GPU sync point, once per step
        tokens += tokens_per_step
        done = step + 1
        if on_step is not None:
            on_step(done, model)
        if progress is not None:
            rate = tokens / max(1e-9, time.perf_counter() - t0)
            progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
            progress.update(1)
        if done % cfg.log_interval_steps == 0 or done == cfg.steps:
            rate = tokens / max(1e-9, time.perf_counter() - t0)
            logger.info(
                "[%s] step %d/%d loss %.4f lr %.2e %.0f tok/s",
                tag,
                done,
                cfg.steps,
                loss_value,
                lr_at(step, cfg),
                rate,
            )
            if tracker is not None:
                metrics = {"train/loss": loss_value, "train/lr": lr_at(step, cfg), "train/tokens_per_s": rate}
                tracker.log({**metrics, "train/tokens": tokens}, step=done)
        if cfg.eval_interval_steps and done % cfg.eval_interval_steps == 0 and done != cfg.steps:
            eval_bpb = evaluate()
            _log_eval(tag, done, eval_bpb, tracker)
        if cfg.checkpoint_interval_steps and done % cfg.checkpoint_interval_steps == 0 and done != cfg.steps:
            save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), done, model_config, optimizer)
    if progress is not None:
        progress.close()
    eval_bpb = evaluate()
    _log_eval(tag, cfg.steps, eval_bpb, tracker)
    if start_step < cfg.steps or not (checkpoint_dir / "state.json").exists():
        save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), cfg.steps, model_config, optimizer)
    seconds = time.perf_counter() - t0
    return TrainResult(
        steps=cfg.steps,
        tokens=tokens,
        seconds=seconds,
        final_loss=loss_value,
        eval_bpb=eval_bpb,
        flops=float(flops_per_token) * tokens,
    )


def _log_eval(tag: str, step: int, eval_bpb: dict[str, float], tracker) -> None:
    logger.info("[%s] step %d eval bpb %s", tag, step, " ".join(f"{k}={v:.4f}" for k, v in eval_bpb.items()))
    if tracker is not None:
        tracker.log({f"eval/bpb/{k}": v for k, v in eval_bpb.items()}, step=step)
