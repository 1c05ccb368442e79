"""Tests for moe/roles/layout.py: the run directory's paths and run ids."""

from __future__ import annotations

import re
import time
from pathlib import Path

from moe.roles.layout import CHECKPOINT, PUBLISHED, RESULT, SERVING, RunLayout, new_run_id


def all_paths(layout: RunLayout) -> dict[str, Path]:
    """Every path the layout names, for one node of each kind."""
    return {
        "config": layout.config,
        "bootstrap": layout.bootstrap,
        "ledger": layout.ledger,
        "summary": layout.summary,
        "logs": layout.logs,
        "status": layout.status,
        "key": layout.key("expert-code"),
        "node_output": layout.node_output("expert-code"),
        "seed": layout.seed,
        "seed_blob": layout.seed_blob,
        "expert": layout.expert("code"),
        "adversary": layout.adversary("noise"),
        "adversaries": layout.adversaries,
        "baseline": layout.baseline("solo"),
        "router": layout.router,
        "validator": layout.validator("validator-0"),
        "validators": layout.validators,
    }


def test_create_makes_run_and_logs_dirs(tmp_path):
    """create() makes `<out_dir>/<run_id>` and its logs folder, and is safe to call again on the same run."""
    layout = RunLayout.create(tmp_path / "runs", "r1")
    assert layout.root == tmp_path / "runs" / "r1"
    assert layout.root.is_dir() and layout.logs.is_dir()
    (layout.logs / "seed.log").write_text("kept")
    again = RunLayout.create(str(tmp_path / "runs"), "r1")
    assert again == layout and (again.logs / "seed.log").read_text() == "kept"


def test_paths_are_distinct_and_under_root(tmp_path):
    """Every named path lies under the run's root and no two coincide."""
    layout = RunLayout(tmp_path / "run")
    paths = all_paths(layout)
    for name, p in paths.items():
        assert p.is_relative_to(layout.root) and p != layout.root, name
    assert len(set(paths.values())) == len(paths)


def test_per_node_paths_differ_by_name(tmp_path):
    """Per-node paths of two different nodes (or subnets, kinds) never collide, and each lands in its own folder."""
    layout = RunLayout(tmp_path)
    for fn in (layout.key, layout.node_output, layout.expert, layout.adversary, layout.baseline, layout.validator):
        assert fn("a") != fn("b")
    assert layout.expert("code").parent == layout.root / "experts"
    assert layout.adversary("noise").parent == layout.adversaries
    assert layout.validator("v").parent == layout.validators
    assert layout.seed_blob.parent == layout.seed
    assert layout.node_output("x").parent == layout.logs


def test_marker_names_are_distinct():
    """The marker and result file names a node writes into its folder are all different."""
    assert len({RESULT, SERVING, PUBLISHED, CHECKPOINT}) == 4


def test_new_run_id_format():
    """new_run_id is the current local time as YYYYmmdd-HHMMSS, which sorts in time order as text."""
    before = time.strftime("%Y%m%d-%H%M%S")
    rid = new_run_id()
    after = time.strftime("%Y%m%d-%H%M%S")
    assert re.fullmatch(r"\d{8}-\d{6}", rid)
    time.strptime(rid, "%Y%m%d-%H%M%S")  # a real date and time
    assert before <= rid <= after
