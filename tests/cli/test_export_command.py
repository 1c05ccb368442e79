"""Tests for moe/cli/export_command.py: `hivemoe export` writes a loadable checkpoint or fails in one line."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM  # noqa: E402

from moe.cli.main import main  # noqa: E402
from moe.model.transformer import ByteLM, ModelConfig  # noqa: E402
from moe.training.checkpoint import save_checkpoint  # noqa: E402

CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16)


@pytest.fixture
def run_dir(tmp_path):
    """A fake finished run with a dense student and an English expert (seeded differently)."""
    run = tmp_path / "run"
    for seed, rel in enumerate(["students/dense/checkpoint", "experts/english/checkpoint"]):
        torch.manual_seed(seed)
        save_checkpoint(run / rel, ByteLM(CFG), step=1, config=asdict(CFG))
    return run


def test_export_expert_writes_a_loadable_checkpoint(run_dir, tmp_path, capsys):
    """export of expert:english exits 0 and the directory loads as the same model (same logits)."""
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--model", "expert:english", "--out", str(out)]) == 0
    assert "exported expert:english" in capsys.readouterr().out
    torch.manual_seed(1)
    ours = ByteLM(CFG).eval()
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4


def test_missing_model_is_one_line_error(run_dir, tmp_path, capsys):
    """Asking for a model the run does not have exits 1 with one `error:` line on stderr and writes nothing."""
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--model", "btx", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "btx" in err and "\n" not in err
    assert not out.exists()


def test_corrupt_checkpoint_is_one_line_error(run_dir, tmp_path, capsys):
    """A checkpoint whose weights no longer match their sha256 exits 1 with one `error:` line."""
    weights = run_dir / "students/dense/checkpoint/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert main(["export", str(run_dir), "--model", "dense", "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sha256" in err and "\n" not in err


def test_unknown_model_name_is_one_line_error(run_dir, tmp_path, capsys):
    """An unknown model name exits 1 with one line listing the valid names."""
    assert main(["export", str(run_dir), "--model", "student", "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip()
    assert "expected one of dense, btx, seed" in err and "\n" not in err


def test_unwritable_output_is_one_line_error(run_dir, tmp_path, capsys):
    """An --out path that is an existing file exits 1 with one `error:` line naming it."""
    out = tmp_path / "taken"
    out.write_text("not a directory")
    assert main(["export", str(run_dir), "--model", "dense", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot export dense") and "\n" not in err
