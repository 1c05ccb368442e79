"""Tests for moe/roles/baseline.py: the solo and dense baselines, trained from the run's seed."""

from __future__ import annotations

import json
import os

import pytest
import torch

from moe.config_loader import parse_args
from moe.fileio import write_json
from moe.model.transformer import ByteLM, ModelConfig, config_dict
from moe.roles.baseline import IDLE_CHECK_STEPS, run_baseline, take_idle_cores
from moe.roles.layout import CHECKPOINT, RESULT, RunLayout
from moe.roles.run_config import RunConfig
from moe.training.checkpoint import CheckpointError, load_checkpoint, model_to_bytes


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


def baseline_cfg(tmp_path, *overrides: str) -> RunConfig:
    args = ["configs/tiny.yaml", f"out_dir={tmp_path}", "run_id=r", "role=baseline", "subnets=english,code"]
    return parse_args(RunConfig, [*args, "expert_train.steps=2", *overrides])


def with_seed(cfg: RunConfig, seed_flops: float | None = None) -> tuple[RunLayout, ByteLM]:
    """The run's layout with a seed blob in it (and the seed's result.json when `seed_flops` is given)."""
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    torch.manual_seed(99)
    seed = ByteLM(cfg.model)
    layout.seed.mkdir(parents=True, exist_ok=True)
    layout.seed_blob.write_bytes(model_to_bytes(seed, config_dict(cfg.model)))
    if seed_flops is not None:
        write_json(layout.seed / RESULT, {"train_flops": seed_flops})
    return layout, seed


def test_refuses_without_the_runs_seed(tmp_path, subnets):
    """Without seed/model.bin the baseline refuses with FileNotFoundError naming the missing path, training nothing."""
    cfg = baseline_cfg(tmp_path)
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    with pytest.raises(FileNotFoundError, match=str(layout.seed_blob)):
        run_baseline(cfg, subnets, layout, "solo", n_experts=2)
    assert not layout.baseline("solo").exists()


def test_unknown_kind_is_refused(tmp_path, subnets):
    """A baseline kind other than solo or dense is a ValueError before anything is read."""
    cfg = baseline_cfg(tmp_path)
    with pytest.raises(ValueError, match="baseline must be one of"):
        run_baseline(cfg, subnets, RunLayout.create(cfg.out_dir, cfg.run_id), "huge", n_experts=2)


def test_solo_trains_one_experts_steps(tmp_path, subnets):
    """solo trains one expert's steps from the seed, records one expert-equivalent and the seed's FLOPs, and
    scores every subnet of the run."""
    cfg = baseline_cfg(tmp_path)
    layout, _ = with_seed(cfg, seed_flops=1.5e9)
    assert run_baseline(cfg, subnets, layout, "solo", n_experts=3) == 0
    r = json.loads((layout.baseline("solo") / RESULT).read_text())
    assert r["name"] == "baseline-solo" and r["kind"] == "solo"
    assert r["train_steps"] == 2 and r["expert_equivalents"] == 1.0
    assert r["seed_flops"] == 1.5e9
    assert set(r["eval_bpb"]) == {"english", "code", "all"}


def test_dense_trains_n_experts_times_the_steps(tmp_path, subnets):
    """dense trains n_experts times an expert's steps (n expert-equivalents); without the seed's result.json it
    counts the seed's FLOPs as zero."""
    cfg = baseline_cfg(tmp_path)
    layout, _ = with_seed(cfg)
    assert run_baseline(cfg, subnets, layout, "dense", n_experts=3) == 0
    r = json.loads((layout.baseline("dense") / RESULT).read_text())
    assert r["kind"] == "dense" and r["train_steps"] == 6 and r["expert_equivalents"] == 3.0
    assert r["seed_flops"] == 0.0
    solo_tokens = cfg.expert_train.steps * cfg.expert_train.batch_size * cfg.expert_train.seq_len
    assert r["tokens"] == 3 * solo_tokens


def test_baseline_starts_from_the_seed(tmp_path, subnets):
    """After one step at a negligible learning rate, the baseline's checkpoint holds the seed's weights."""
    cfg = baseline_cfg(tmp_path, "expert_train.steps=1", "expert_train.lr=1e-12")
    layout, seed = with_seed(cfg)
    assert run_baseline(cfg, subnets, layout, "solo", n_experts=2) == 0
    model = ByteLM(cfg.model)
    load_checkpoint(layout.baseline("solo") / CHECKPOINT, model, expect_config=config_dict(cfg.model))
    for k, v in seed.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)


def test_zero_expert_steps_gives_the_seed_itself(tmp_path, subnets):
    """With expert_train.steps=0 (allowed by TrainConfig; an expert then serves the seed unchanged, see
    test_expert.py) the baseline is the seed itself, trained zero steps, instead of a crash."""
    cfg = baseline_cfg(tmp_path, "expert_train.steps=0")
    layout, _ = with_seed(cfg)
    assert run_baseline(cfg, subnets, layout, "solo", n_experts=2) == 0
    r = json.loads((layout.baseline("solo") / RESULT).read_text())
    assert r["train_steps"] == 0


def test_seed_of_another_architecture_is_refused(tmp_path, subnets):
    """A seed blob made for another model shape is a CheckpointError, not a silently fresh baseline."""
    cfg = baseline_cfg(tmp_path)
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    other = ModelConfig(d_model=48, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
    layout.seed.mkdir(parents=True)
    layout.seed_blob.write_bytes(model_to_bytes(ByteLM(other), config_dict(other)))
    with pytest.raises(CheckpointError, match="another model config"):
        run_baseline(cfg, subnets, layout, "solo", n_experts=2)


def test_a_baseline_takes_the_idle_cores_once_the_rest_of_the_run_is_done(tmp_path):
    """The hook leaves the thread count alone while the router or the other baseline still runs, and raises it to
    every core of the machine once both are done (checked every IDLE_CHECK_STEPS steps)."""
    layout = RunLayout.create(tmp_path, "r")
    hook = take_idle_cores(layout, "dense", [])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        write_json(layout.router / RESULT, {})
        hook(IDLE_CHECK_STEPS, None)
        assert torch.get_num_threads() == 1  # the solo baseline is still training
        write_json(layout.baseline("solo") / RESULT, {})
        hook(IDLE_CHECK_STEPS + 1, None)
        assert torch.get_num_threads() == 1  # not a checking step
        hook(2 * IDLE_CHECK_STEPS, None)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
