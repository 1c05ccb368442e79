"""Tests of moe/cli/eval_command.py: `hivemoe eval RUN_DIR --data FILE [--json]`."""

from __future__ import annotations

import json
import shutil

import pytest

from moe.cli.eval_command import main

MIXED = "To be, or not to be — بودن یا نبودن\n".encode() * 20 + bytes(range(256))
"""UTF-8 in two scripts, then every byte value (invalid UTF-8 included)."""


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_run_dir_is_one_error_line(tmp_path, capsys):
    """A run directory that does not exist: exit 1, one `error:` line naming it."""
    data = tmp_path / "text.txt"
    data.write_bytes(MIXED)
    assert main([str(tmp_path / "nope"), "--data", str(data)]) == 1
    assert "nope" in _one_error_line(capsys)


def test_directory_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    """A directory without the run's config.yaml: exit 1, one `error:` line."""
    data = tmp_path / "text.txt"
    data.write_bytes(MIXED)
    assert main([str(tmp_path), "--data", str(data)]) == 1
    assert "not a run directory" in _one_error_line(capsys)


@pytest.mark.parametrize("content", [b"", b"a"])
def test_empty_or_too_short_file_is_one_error_line(tmp_path, capsys, content):
    """An empty or one-byte data file: exit 1, one `error:` line naming the file."""
    data = tmp_path / "short.txt"
    data.write_bytes(content)
    assert main([str(tmp_path), "--data", str(data)]) == 1
    assert str(data) in _one_error_line(capsys)


def test_missing_data_argument_is_a_usage_error():
    """Without --data, argparse exits with status 2."""
    with pytest.raises(SystemExit) as e:
        main(["somewhere"])
    assert e.value.code == 2


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A writable copy of the tiny run's models and results (logs, wandb and the teacher cache left behind)."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, dst, ignore=shutil.ignore_patterns("wandb", "logs", "teacher_cache", "*.sqlite"))
    return dst


@pytest.mark.slow
def test_json_last_line_has_the_schema_and_a_kept_baseline_is_scored(run_copy, tmp_path, capsys):
    """--json ends stdout with one JSON object of exactly the documented schema, for mixed UTF-8 and binary text;
    experts and students are the run's, a baseline appears only once its checkpoint exists (here the seed's,
    copied as a stand-in, so it scores exactly as the seed)."""
    data = tmp_path / "mixed.bin"
    data.write_bytes(MIXED)
    shutil.copytree(run_copy / "seed" / "checkpoint", run_copy / "baselines" / "solo" / "checkpoint")
    assert main([str(run_copy), "--data", str(data), "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = {"mixture_bpb", "best_single_bpb", "worst_window_bpb", "seed_bpb", "baselines", "experts", "students"}
    assert set(out) == keys
    summary = json.loads((run_copy / "summary.json").read_text())
    honest = {e["hotkey"]: e["subnet"] for e in summary["experts"] if not e.get("adversary")}
    assert {hk: e["subnet"] for hk, e in out["experts"].items()} == honest
    assert all(set(e) == {"subnet", "bpb", "contribution", "gate_share"} for e in out["experts"].values())
    assert set(out["students"]) == {st["kind"] for st in summary["students"]}
    assert out["baselines"] == {"solo": out["seed_bpb"]}
    assert out["best_single_bpb"] == min(e["bpb"] for e in out["experts"].values())
    assert out["worst_window_bpb"] >= out["mixture_bpb"]


@pytest.mark.slow
def test_human_output_is_a_table_of_every_model(run_copy, tmp_path, capsys):
    """Without --json the output is a table naming the mixture, the seed, every expert's subnet and the students."""
    data = tmp_path / "text.txt"
    data.write_bytes(MIXED[:300])
    assert main([str(run_copy), "--data", str(data), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run_copy / "summary.json").read_text())
    names = ["mixture", "seed", "worst window", *(f"expert {e['subnet']}" for e in summary["experts"])]
    names += [f"{st['kind']} student" for st in summary["students"]]
    assert all(name in out for name in names), out


@pytest.mark.slow
def test_corrupt_gate_is_one_error_line(run_copy, tmp_path, capsys):
    """A truncated gate checkpoint: exit 1, one `error:` line naming the gate."""
    data = tmp_path / "text.txt"
    data.write_bytes(MIXED)
    gate = run_copy / "router" / "gate.safetensors"
    gate.write_bytes(gate.read_bytes()[:100])
    assert main([str(run_copy), "--data", str(data)]) == 1
    assert "gate" in _one_error_line(capsys)


@pytest.mark.slow
def test_corrupt_expert_checkpoint_is_one_error_line(run_copy, tmp_path, capsys):
    """A tampered expert checkpoint is refused by its hash check: exit 1, one `error:` line."""
    data = tmp_path / "text.txt"
    data.write_bytes(MIXED)
    weights = next((run_copy / "experts").glob("*/checkpoint/model.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert main([str(run_copy), "--data", str(data)]) == 1
    _one_error_line(capsys)
