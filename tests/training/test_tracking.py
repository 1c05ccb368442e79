"""Tests for moe/training/tracking.py: a disabled tracker costs nothing; offline wandb logs for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe.config_loader import parse_args
from moe.roles.run_config import RunConfig
from moe.training.tracking import Tracker, WandbConfig, close_wandb, resolve_mode
from moe.training.wandb_offline import read_offline_runs

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


def test_resolve_mode(monkeypatch, tmp_path):
    """auto is offline without credentials, online with an API key or a `wandb login` netrc entry, follows WANDB_MODE
    when set, and an explicit mode always wins."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))  # absent: not logged in
    assert resolve_mode(WandbConfig(mode="auto")) == "offline"
    netrc.write_text("machine example.com login user password p\n")
    assert resolve_mode(WandbConfig(mode="auto")) == "offline"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert resolve_mode(WandbConfig(mode="auto")) == "online"
    netrc.unlink()
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
        close_wandb()  # the offline file is complete once the service flushed it
    assert run_path.parent == tmp_path / "wandb" and run_path.name.startswith("offline-run-")
    records = next(run_path.glob("run-*.wandb")).read_bytes()
    assert b"train/loss" in records and b"eval/bpb/code" in records
    t.finish()  # a second finish is a no-op
    t.log({"train/loss": 0.0})  # and so is logging after it


def test_node_tracker_groups_by_run_id_with_role_as_job_type(tmp_path, monkeypatch):
    """A node's tracker makes one offline run named after the node, grouped by the run id, with the node's role as
    job_type and the whole resolved config recorded exactly once."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = [str(ROOT / "configs" / "tiny.yaml"), "run_id=g1", "role=validator", "wandb.enabled=true"]
    cfg = parse_args(RunConfig, [*args, "wandb.mode=offline", f"out_dir={tmp_path}"])
    t = Tracker.for_node(cfg, tmp_path, "validator-0")
    t.log({"validator/weight/abcd0123": 0.5}, step=3)
    t.summary({"validator/epochs": 1})
    t.finish()
    close_wandb()  # the offline file is complete once the service flushed it
    [run] = read_offline_runs(tmp_path / "wandb")
    assert (run.name, run.group, run.job_type, run.exited) == ("validator-0", "g1", "validator", True)
    assert run.config_records == 1
    assert run.config["run_id"] == "g1" and run.config["model"]["d_model"] == cfg.model.d_model
    assert run.summary["validator/weight/abcd0123"] == 0.5 and run.summary["validator/epochs"] == 1
