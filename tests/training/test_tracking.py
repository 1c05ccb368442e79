"""Tests for moe/training/tracking.py: a disabled tracker costs nothing; offline wandb logs for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe.training.tracking import Tracker, WandbConfig, resolve_mode

ROOT = Path(__file__).resolve().parents[2]


def test_disabled_tracker_never_imports_wandb(tmp_path):
    """A disabled Tracker's init, log, summary and finish run without wandb ever entering sys.modules; only the local
    metrics file is written."""
    code = (
        "import sys, json\n"
        "from moe.training.tracking import Tracker, WandbConfig\n"
        f"t = Tracker(WandbConfig(enabled=False), {str(tmp_path)!r}, 'x', {{}})\n"
        "t.log({'train/loss': 1.0}, step=1); t.summary({'a': 1}); t.finish()\n"
        "print(json.dumps([t.run_path, 'wandb' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [None, False]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["metrics/x.jsonl"]
    row = json.loads((tmp_path / "metrics" / "x.jsonl").read_text())
    assert row["step"] == 1 and row["train/loss"] == 1.0


def test_resolve_mode(monkeypatch):
    """auto is offline without credentials, follows WANDB_MODE when set, and an explicit mode always wins."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(WandbConfig(mode="auto")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(WandbConfig(mode="auto")) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbConfig(mode="auto")) == "disabled"
    assert resolve_mode(WandbConfig(mode="offline")) == "offline"


def test_offline_tracker_writes_run(tmp_path, monkeypatch):
    """An enabled tracker in offline mode logs metrics into a real offline wandb run directory under run_dir."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    t = Tracker(WandbConfig(enabled=True, project="hivemoe-test"), tmp_path, "unit", {"model": {"d_model": 8}})
    try:
        t.log({"train/loss": 1.5}, step=1)
        t.log({"train/loss": 1.25, "eval/bpb/code": 3.0}, step=2)
        t.summary({"final/bpb": 2.5})
        run_path = Path(t.run_path)
        assert t._run.summary["final/bpb"] == 2.5
    finally:
        t.finish()
    assert run_path.parent == tmp_path / "wandb" and run_path.name.startswith("offline-run-")
    records = next(run_path.glob("run-*.wandb")).read_bytes()
    assert b"train/loss" in records and b"eval/bpb/code" in records
    t.finish()  # a second finish is a no-op
    t.log({"train/loss": 0.0})  # and so is logging after it
