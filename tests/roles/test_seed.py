"""Tests for moe/roles/seed.py: the seed node trained offline (no initial peers), without publishing."""

from __future__ import annotations

import json

import pytest
import torch

from moe.config_loader import parse_args
from moe.model.transformer import ByteLM, ModelConfig, config_dict
from moe.roles.layout import CHECKPOINT, PUBLISHED, RESULT, RunLayout
from moe.roles.run_config import RunConfig
from moe.roles.seed import run_seed
from moe.training.checkpoint import CheckpointError, load_checkpoint, load_model_bytes


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


@pytest.fixture
def seeded(tmp_path, subnets):
    """A tiny seed trained 3 steps offline: (config, layout, run_seed's return code)."""
    cfg = parse_args(
        RunConfig,
        ["configs/tiny.yaml", f"out_dir={tmp_path}", "run_id=r", "subnets=english,code", "seed_train.steps=3"],
    )
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    return cfg, layout, run_seed(cfg, subnets, layout)


def test_offline_seed_writes_blob_and_result(seeded):
    """Offline, run_seed returns 0 after writing seed/result.json (3 steps, every subnet scored) and seed/model.bin,
    and publishes nothing."""
    cfg, layout, code = seeded
    assert code == 0
    result = json.loads((layout.seed / RESULT).read_text())
    assert result["name"] == "seed" and result["train_steps"] == 3
    assert set(result["eval_bpb"]) == {"english", "code", "all"}
    assert layout.seed_blob.is_file() and not (layout.seed / PUBLISHED).exists()


def test_blob_is_the_trained_seed(seeded):
    """seed/model.bin loads into a ByteLM of the run's model config and holds exactly the final checkpoint."""
    cfg, layout, _ = seeded
    expected = config_dict(cfg.model)
    from_blob, from_ckpt = ByteLM(cfg.model), ByteLM(cfg.model)
    load_model_bytes(from_blob, layout.seed_blob.read_bytes(), expected, source="seed")
    assert load_checkpoint(layout.seed / CHECKPOINT, from_ckpt, expect_config=expected)["step"] == 3
    torch.manual_seed(cfg.seed)
    init = ByteLM(cfg.model).state_dict()  # the weights the seed starts from
    blob_state = from_blob.state_dict()
    assert any(not torch.equal(blob_state[k], init[k]) for k in init)  # trained, not the initial weights
    for k, v in from_ckpt.state_dict().items():
        torch.testing.assert_close(blob_state[k], v, rtol=0, atol=0)


def test_blob_refuses_another_architecture(seeded):
    """The blob carries its model config: loading it into a model of another shape is a CheckpointError."""
    cfg, layout, _ = seeded
    other = ModelConfig(d_model=48, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)
    with pytest.raises(CheckpointError, match="another model config"):
        load_model_bytes(ByteLM(other), layout.seed_blob.read_bytes(), config_dict(other), source="seed")


def test_rerun_resumes_and_rewrites_the_same_seed(seeded, subnets):
    """Running the seed again on the same run resumes its finished checkpoint: same blob bytes, same result."""
    cfg, layout, _ = seeded
    blob = layout.seed_blob.read_bytes()
    before = json.loads((layout.seed / RESULT).read_text())
    assert run_seed(cfg, subnets, layout) == 0
    after = json.loads((layout.seed / RESULT).read_text())
    assert layout.seed_blob.read_bytes() == blob
    assert after["eval_bpb"] == before["eval_bpb"] and after["train_steps"] == 3
