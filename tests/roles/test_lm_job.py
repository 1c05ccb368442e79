"""Tests for moe/roles/lm_job.py: one language-model training job, and the union of the subnets' data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from moe.config_loader import parse_args
from moe.corpus.tokens import subnet_tokens
from moe.metrics import evaluate_model_bpb
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import CHECKPOINT, RESULT, RunLayout
from moe.roles.lm_job import run_lm_job, union_batches, validation_sets
from moe.roles.node import StatusBoard
from moe.roles.run_config import RunConfig
from moe.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


def tiny(tmp_path, *overrides: str) -> RunConfig:
    return parse_args(RunConfig, ["configs/tiny.yaml", f"out_dir={tmp_path}", "run_id=r", *overrides])


def test_job_trains_evaluates_and_saves(tmp_path, subnets):
    """A 3-step job writes result.json (params, steps, per-subnet bpb of the returned model, `all` = their mean,
    the extra fields) and a checkpoint holding the returned model, and marks its board trained."""
    cfg = tiny(tmp_path, "subnets=english,code")
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    train = dataclasses.replace(cfg.expert_train, steps=3)
    steps_seen, inits = [], []
    model, result = run_lm_job(
        cfg,
        subnets,
        layout,
        "job",
        train,
        union_batches(cfg, subnets, train, seed=1),
        layout.root / "job",
        init=lambda m: inits.append(type(m)),
        on_step=lambda step, m: steps_seen.append(step),
        extra_result={"subnet": "code"},
    )
    record = json.loads((layout.root / "job" / RESULT).read_text())
    assert inits == [ByteLM] and steps_seen == [1, 2, 3]
    assert record["name"] == "job" and record["subnet"] == "code"
    assert record["params"] == model.num_params() and record["train_steps"] == 3 == result.steps
    assert record["tokens"] == 3 * train.batch_size * train.seq_len and record["train_flops"] > 0
    bpb = record["eval_bpb"]
    assert set(bpb) == {"english", "code", "all"}
    assert bpb["all"] == pytest.approx((bpb["english"] + bpb["code"]) / 2)
    evals = validation_sets(cfg, subnets, train)
    for name in ("english", "code"):
        assert bpb[name] == pytest.approx(evaluate_model_bpb(model, evals[name]()), rel=1e-5)
    restored = ByteLM(cfg.model)
    state = load_checkpoint(layout.root / "job" / CHECKPOINT, restored, expect_config=config_dict(cfg.model))
    assert state["step"] == 3
    for k, v in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v, rtol=0, atol=0)
    board = StatusBoard.read_all(layout.status)["job"]
    assert board["phase"] == "trained" and board["step"] == 3 and board["eval_bpb"] == pytest.approx(bpb["all"])


def test_job_is_seeded(tmp_path, subnets):
    """Two jobs with the same run seed and batches end with identical weights and scores."""
    results = []
    for run in ("a", "b"):
        cfg = tiny(tmp_path / run, "subnets=math")
        layout = RunLayout.create(cfg.out_dir, cfg.run_id)
        train = dataclasses.replace(cfg.expert_train, steps=2)
        model, _ = run_lm_job(
            cfg, subnets, layout, "job", train, union_batches(cfg, subnets, train, seed=3), layout.root / "job"
        )
        results.append((model.state_dict(), json.loads((layout.root / "job" / RESULT).read_text())["eval_bpb"]))
    (wa, ba), (wb, bb) = results
    assert ba == bb
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def source_of(row: np.ndarray, streams: dict[str, bytes]) -> list[str]:
    """The subnets whose train stream contains this window of tokens (found at a token-aligned offset)."""
    needle = row.astype("<u2").tobytes()
    found = []
    for name, hay in streams.items():
        i = hay.find(needle)
        while i != -1 and i % 2:
            i = hay.find(needle, i + 1)
        if i != -1:
            found.append(name)
    return found


def test_union_batches_draw_from_every_subnet(tmp_path, subnets):
    """Every row of the union's batches is a window of exactly one of the run's subnets' train split (never another
    subnet's), every subnet shows up, and y is x shifted by one byte."""
    cfg = tiny(tmp_path, "subnets=english,code,math")
    train = dataclasses.replace(cfg.expert_train, batch_size=8, seq_len=32)
    streams = {n: subnet_tokens(s, "train", cfg.data).astype("<u2").tobytes() for n, s in subnets.items()}
    batches = union_batches(cfg, subnets, train, seed=0)(0)
    seen = []
    for _ in range(4):
        x, y = next(batches)
        assert x.shape == y.shape == (8, 32)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for xr, yr in zip(x.numpy(), y.numpy(), strict=True):
            found = source_of(np.concatenate([xr, yr[-1:]]), streams)
            assert len(found) == 1, found
            seen.append(found[0])
    assert set(seen) == {"english", "code", "math"}


def test_union_batches_resume_at_a_step(tmp_path, subnets):
    """The stream started at step 2 yields exactly the batches the stream from step 0 yields third onwards."""
    cfg = tiny(tmp_path, "subnets=english,persian")
    train = dataclasses.replace(cfg.expert_train, grad_accum=2)
    stream = union_batches(cfg, subnets, train, seed=4)
    full = stream(0)
    for _ in range(2 * train.grad_accum):
        next(full)
    resumed = stream(2)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(full), next(resumed)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
