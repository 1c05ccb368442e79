"""Tests for moe/training/run_tables.py: the network's closing wandb run holds summary.json's tables and the plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe.config_loader import parse_args
from moe.roles.layout import RunLayout
from moe.roles.run_config import RunConfig
from moe.training.run_tables import log_network_summary, summary_tables
from moe.training.wandb_offline import read_offline_runs

ROOT = Path(__file__).resolve().parents[2]
A, B = "aa" * 32, "bb" * 32
V = "cc" * 32

SUMMARY = {
    "run_id": "n1",
    "wall_seconds": 12.5,
    "experts": [
        {"uid": 0, "netuid": 2, "hotkey": A, "subnet": "code", "params": 10, "train_steps": 3, "flags": []}
        | {"eval_bpb": {"all": 5.0, "code": 4.0, "math": 6.0}, "shifted_bpb": {"all": 5.5}, "worst_window_bpb": 7.0},
        {"uid": 1, "netuid": 3, "hotkey": B, "subnet": "math", "params": 10, "train_steps": 3, "flags": ["noise"]}
        | {"eval_bpb": {"all": 5.2, "code": 6.2, "math": 4.2}, "shifted_bpb": {"all": 5.6}, "worst_window_bpb": 7.1},
    ],
    "mixture": {"eval_bpb": {"all": 4.5, "code": 4.1, "math": 4.9}, "routing": {"code": {A: 0.8, B: 0.2}}},
    "seed": {"eval_bpb": {"all": 6.0}},
    "students": [{"kind": "dense", "params": 10, "eval_bpb": {"all": 5.4}, "retention": 0.5}],
    "contribution": {A: 0.6, B: 0.4},
    "weights": {V: {A: 65535, B: 0}},
    "validators": {V: {"stake_tao": 1000.0, "flags": {}}},
    "rewards": {A: 12.0, B: 0.0},
    "checks": {"mixture_beats_solo": True, "gap_to_solo": -0.3, "note": "text is left out"},
}


def _cfg(tmp_path: Path, *extra: str) -> RunConfig:
    args = [str(ROOT / "configs" / "tiny.yaml"), "run_id=n1", f"out_dir={tmp_path}", *extra]
    return parse_args(RunConfig, args)


def test_tables_hold_the_summary_rows():
    """Each table has one row per expert (experts, rewards), per validator and expert (weights), per student and per
    routing share, with the summary's values in the named columns."""
    tables = summary_tables(SUMMARY)
    assert set(tables) == {"experts", "weights", "rewards", "students", "routing"}
    cols, rows = tables["experts"]
    assert [dict(zip(cols, r, strict=True))["eval_bpb_math"] for r in rows] == [6.0, 4.2]
    assert [dict(zip(cols, r, strict=True))["flags"] for r in rows] == ["", "noise"]
    cols, rows = tables["weights"]
    assert [dict(zip(cols, r, strict=True)) for r in rows] == [
        {
            "validator": V,
            "stake_tao": 1000.0,
            "netuid": 2,
            "uid": 0,
            "hotkey": A,
            "subnet": "code",
            "weight_u16": 65535,
        },
        {"validator": V, "stake_tao": 1000.0, "netuid": 3, "uid": 1, "hotkey": B, "subnet": "math", "weight_u16": 0},
    ]
    cols, rows = tables["rewards"]
    assert [(r[cols.index("contribution")], r[cols.index("reward_tao")]) for r in rows] == [(0.6, 12.0), (0.4, 0.0)]
    assert tables["routing"][1] == [["code", A, "code", 0.8], ["code", B, "math", 0.2]]
    assert set(summary_tables({"experts": []})) == {"experts"}


def test_network_run_offline(tmp_path, monkeypatch):
    """The closing run is one offline wandb run in the run's group with job_type network, config recorded once, the
    headline figures in its summary, every table with its row count, and each existing plot as an image."""
    pytest.importorskip("wandb")
    from PIL import Image

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _cfg(tmp_path, "wandb.enabled=true", "wandb.mode=offline")
    layout = RunLayout.create(tmp_path, "n1")
    plot = layout.root / "plots" / "bpb_by_subnet.png"
    plot.parent.mkdir()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(plot)
    log_network_summary(cfg, layout, SUMMARY, [plot, layout.root / "plots" / "never_rendered.png"])
    [run] = read_offline_runs(layout.root / "wandb")
    assert (run.name, run.group, run.job_type, run.config_records) == ("network", "n1", "network", 1)
    s = run.summary
    assert s["mixture/eval/bpb/all"] == 4.5 and s["seed/eval/bpb/all"] == 6.0 and s["students/dense/eval/bpb/all"]
    assert s["checks/mixture_beats_solo"] is True and "checks/note" not in s and s["wall_seconds"] == 12.5
    for name, (cols, rows) in summary_tables(SUMMARY).items():
        table = s[f"tables/{name}"]
        assert table["_type"] == "table-file" and (table["nrows"], table["ncols"]) == (len(rows), len(cols))
        written = json.loads((run.path / "files" / table["path"]).read_text())
        assert written["columns"] == cols and len(written["data"]) == len(rows)
    image = s["plots/bpb_by_subnet"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (16, 8)
    assert (run.path / "files" / image["path"]).is_file()
    assert not any(k.startswith("plots/never") for k in s)


def test_disabled_wandb_costs_nothing(tmp_path):
    """With wandb disabled, log_network_summary reads nothing, writes nothing and never imports wandb."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from moe.config_loader import parse_args\n"
        "from moe.roles.layout import RunLayout\n"
        "from moe.roles.run_config import RunConfig\n"
        "from moe.training.run_tables import log_network_summary\n"
        f"cfg = parse_args(RunConfig, [{str(ROOT / 'configs' / 'tiny.yaml')!r}, 'wandb.enabled=false'])\n"
        f"log_network_summary(cfg, RunLayout(Path({str(tmp_path)!r})), {{'experts': []}}, ['missing.png'])\n"
        "print(json.dumps('wandb' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False
    assert list(tmp_path.iterdir()) == []
