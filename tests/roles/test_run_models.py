"""Tests for moe/roles/run_models.py: model names resolve inside a run; missing or damaged ones are refused."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from moe.model.transformer import ByteLM, ModelConfig
from moe.roles.run_models import RunModelError, checkpoint_dir, load_run_model
from moe.training.checkpoint import save_checkpoint

CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16)


def saved(run: Path, rel: str, cfg: ModelConfig = CFG, seed: int = 0) -> ByteLM:
    """Save a seeded model's checkpoint at `run/rel` and return the model."""
    torch.manual_seed(seed)
    model = ByteLM(cfg)
    save_checkpoint(run / rel, model, step=1, config=asdict(cfg))
    return model


@pytest.mark.parametrize(
    "name, rel",
    [
        ("dense", "students/dense/checkpoint"),
        ("btx", "students/btx/checkpoint"),
        ("seed", "seed/checkpoint"),
        ("expert:english", "experts/english/checkpoint"),
        ("baseline:solo", "baselines/solo/checkpoint"),
    ],
)
def test_names_resolve_to_run_layout(tmp_path, name, rel):
    """Each model name maps to its checkpoint folder inside the run directory."""
    assert checkpoint_dir(tmp_path, name) == tmp_path / rel


@pytest.mark.parametrize("name", ["bogus", "expert:", "expert:../seed", "expert:a/b", "seed:x", "dense:1", ":"])
def test_bad_names_are_refused(tmp_path, name):
    """Unknown kinds, empty or path-like subnet names are a RunModelError listing the valid names."""
    with pytest.raises(RunModelError, match="expected one of dense, btx, seed"):
        checkpoint_dir(tmp_path, name)


def test_load_restores_the_saved_model(tmp_path):
    """A saved expert loads back, rebuilt from its own config, with identical weights, in eval mode."""
    moe_cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16, moe_experts=2, moe_top_k=1)
    original = saved(tmp_path, "experts/code/checkpoint", moe_cfg, seed=3)
    loaded = load_run_model(tmp_path, "expert:code")
    assert loaded.config == moe_cfg and not loaded.training
    for (n, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_missing_run_or_model_is_one_line_error(tmp_path):
    """A missing run directory or a model the run never trained is a one-line RunModelError naming it."""
    with pytest.raises(RunModelError, match="no run directory"):
        load_run_model(tmp_path / "nope", "dense")
    saved(tmp_path, "students/dense/checkpoint")
    with pytest.raises(RunModelError, match="has no btx model") as e:
        load_run_model(tmp_path, "btx")
    assert "\n" not in str(e.value)


def test_corrupt_weights_are_refused(tmp_path):
    """Flipped bytes in model.safetensors fail the recorded sha256 and are refused, never exported."""
    saved(tmp_path, "seed/checkpoint")
    path = tmp_path / "seed/checkpoint/model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(RunModelError, match="sha256"):
        load_run_model(tmp_path, "seed")


@pytest.mark.parametrize("config", [None, {"d_model": 16, "wings": 2}, {**asdict(CFG), "n_heads": 3}])
def test_unusable_config_is_refused(tmp_path, config):
    """A state.json whose config is absent, has unknown fields or is no valid ModelConfig is a RunModelError."""
    saved(tmp_path, "seed/checkpoint")
    state_path = tmp_path / "seed/checkpoint/state.json"
    state = json.loads(state_path.read_text())
    state["config"] = config
    state_path.write_text(json.dumps(state))
    with pytest.raises(RunModelError, match="config"):
        load_run_model(tmp_path, "seed")


def test_unreadable_state_is_refused(tmp_path):
    """A state.json that is not JSON is a RunModelError, not a JSONDecodeError."""
    saved(tmp_path, "seed/checkpoint")
    (tmp_path / "seed/checkpoint/state.json").write_text("{oops")
    with pytest.raises(RunModelError, match="corrupt"):
        load_run_model(tmp_path, "seed")
