"""Tests for moe/training/loop.py: LR schedule, learning on real bytes, exact resume, refusing foreign checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
import torch

from moe.corpus.batches import batches_at_step, iter_eval_windows
from moe.model.tokenizer import encode
from moe.model.transformer import ByteLM, ModelConfig, config_dict
from moe.training.checkpoint import CheckpointError, read_state
from moe.training.loop import TrainConfig, lr_at, train_lm

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=32)
CFG = TrainConfig(
    steps=20,
    batch_size=4,
    seq_len=32,
    lr=3e-3,
    warmup_steps=3,
    eval_interval_steps=0,
    log_interval_steps=5,
    progress=False,
)
TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(200))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(TEXT)
    return encode(path.read_text())


def batches_from(tokens: np.ndarray, cfg: TrainConfig, seed: int = 0):
    """The seed's batch stream positioned at optimizer step `step`, as every trainer of a run gets it."""
    return batches_at_step(tokens, cfg.seq_len, cfg.batch_size, seed, cfg.grad_accum)


def make(seed: int = 0, cfg: ModelConfig = MODEL) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(cfg)


def test_lr_schedule_shape():
    """LR rises linearly to the peak over warm-up, then decays by cosine, monotonically, towards lr * min_lr_ratio."""
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in pairwise(lrs[:10]))
    assert all(a >= b for a, b in pairwise(lrs[10:]))
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert 0.1 <= lrs[-1] < 0.1 + 1e-2
    assert lr_at(500, cfg) == pytest.approx(0.1)  # past the end it stays at the floor
    assert lr_at(0, replace(cfg, warmup_steps=0)) == pytest.approx(1.0)


def test_train_reduces_loss_and_reports_eval(tokens, tmp_path):
    """Training a tiny ByteLM on real bytes lowers held-out bits per byte and saves a final checkpoint."""
    model = make()
    evals = {"code": lambda: iter_eval_windows(tokens, 32, 8, max_windows=8)}
    from moe.metrics import evaluate_model_bpb

    before = evaluate_model_bpb(model, evals["code"]())
    steps = []
    result = train_lm(
        model,
        batches_from(tokens, CFG),
        evals,
        replace(CFG, steps=40, lr=1e-2),
        tmp_path / "ckpt",
        config_dict(MODEL),
        on_step=lambda s, m: steps.append(s),
    )
    assert steps == list(range(1, 41))
    assert result.steps == 40 and result.tokens == 40 * 4 * 32
    assert result.final_loss < math.log(256) - 1.0
    assert result.eval_bpb["code"] < before - 2.0
    assert read_state(tmp_path / "ckpt")["step"] == 40
    assert model.training  # evaluation restores train mode


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


class Crash(Exception):
    pass


def test_resume_after_crash_is_exact(tokens, tmp_path):
    """A run killed after its step-10 checkpoint and resumed by a fresh call ends with the same weights as a
    straight 20-step run (same LR schedule, same batches, restored AdamW state)."""
    cfg = replace(CFG, checkpoint_interval_steps=10)
    straight = make(0)
    train_lm(straight, batches_from(tokens, cfg), {}, cfg, tmp_path / "a", config_dict(MODEL))

    def crash(step: int, _model) -> None:
        if step == 13:
            raise Crash

    with pytest.raises(Crash):
        train_lm(make(0), batches_from(tokens, cfg), {}, cfg, tmp_path / "b", config_dict(MODEL), on_step=crash)
    assert read_state(tmp_path / "b")["step"] == 10
    resumed = make(123)  # different init: everything must come from the checkpoint
    seen = []
    train_lm(
        resumed,
        batches_from(tokens, cfg),
        {},
        cfg,
        tmp_path / "b",
        config_dict(MODEL),
        on_step=lambda s, m: seen.append(s),
    )
    assert seen == list(range(11, 21))
    assert max_diff(straight, resumed) == 0.0


def test_extend_run_with_more_steps_is_exact(tokens, tmp_path):
    """With a schedule that does not depend on total steps, 10 steps then a call with steps=20 resuming from that
    checkpoint equals 20 steps straight."""
    cfg = replace(CFG, min_lr_ratio=1.0)  # constant after warm-up, so steps=10 and steps=20 share the schedule
    straight = make(0)
    train_lm(straight, batches_from(tokens, cfg), {}, cfg, tmp_path / "a", config_dict(MODEL))
    first = make(0)
    train_lm(first, batches_from(tokens, cfg), {}, replace(cfg, steps=10), tmp_path / "b", config_dict(MODEL))
    assert read_state(tmp_path / "b")["step"] == 10
    resumed = make(5)
    train_lm(resumed, batches_from(tokens, cfg), {}, cfg, tmp_path / "b", config_dict(MODEL))
    assert max_diff(straight, resumed) == 0.0
    assert read_state(tmp_path / "b")["step"] == 20


def test_grad_accum_resume_is_exact(tokens, tmp_path):
    """With grad_accum=2 the resumed run also matches: batches_from skips step * grad_accum micro-batches."""
    cfg = replace(CFG, steps=6, grad_accum=2, checkpoint_interval_steps=3, min_lr_ratio=1.0)
    straight = make(0)
    train_lm(straight, batches_from(tokens, cfg), {}, cfg, tmp_path / "a", config_dict(MODEL))
    first = make(0)
    train_lm(first, batches_from(tokens, cfg), {}, replace(cfg, steps=3), tmp_path / "b", config_dict(MODEL))
    resumed = make(1)
    train_lm(resumed, batches_from(tokens, cfg), {}, cfg, tmp_path / "b", config_dict(MODEL))
    assert max_diff(straight, resumed) == 0.0


def test_foreign_checkpoint_is_an_error(tokens, tmp_path):
    """A checkpoint from another model config, or one past cfg.steps, is a CheckpointError, never a silent restart."""
    cfg = replace(CFG, steps=2)
    train_lm(make(0), batches_from(tokens, cfg), {}, cfg, tmp_path / "c", config_dict(MODEL))
    other = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)
    with pytest.raises(CheckpointError, match="different model config"):
        train_lm(make(0, other), batches_from(tokens, cfg), {}, cfg, tmp_path / "c", config_dict(other))
    with pytest.raises(CheckpointError, match="past steps"):
        train_lm(make(0), batches_from(tokens, cfg), {}, replace(cfg, steps=1), tmp_path / "c", config_dict(MODEL))


def test_resume_false_starts_over(tokens, tmp_path):
    """resume=False ignores an existing checkpoint and retrains from the model it is given."""
    cfg = replace(CFG, steps=3)
    a = make(0)
    train_lm(a, batches_from(tokens, cfg), {}, cfg, tmp_path / "c", config_dict(MODEL))
    b = make(0)
    seen = []
    train_lm(
        b,
        batches_from(tokens, cfg),
        {},
        cfg,
        tmp_path / "c",
        config_dict(MODEL),
        resume=False,
        on_step=lambda s, m: seen.append(s),
    )
    assert seen == [1, 2, 3]
    assert max_diff(a, b) == 0.0
