"""Tests for moe/report/run_data.py: loaders read what is there and name what is not, never crash on a bad file."""

from __future__ import annotations

import json

import pytest

from moe.report.run_data import (
    Missing,
    ReportError,
    load_flag_timeline,
    load_loss_curves,
    load_routing,
    load_summary,
    model_rows,
)

from .conftest import HOSTILE_HOTKEY, HOSTILE_REASON, synthetic_summary


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no run directory"),
        (lambda d: d.mkdir(), "no summary.json"),
        (lambda d: (d.mkdir(), (d / "summary.json").write_text('{"run_id": ')), "unreadable"),
        (lambda d: (d.mkdir(), (d / "summary.json").write_text("[1, 2]")), "not a JSON object"),
        (lambda d: (d.mkdir(), (d / "summary.json").write_bytes(b"\xff\xfe\x00")), "unreadable"),
    ],
)
def test_load_summary_names_the_problem(tmp_path, setup, message):
    """A missing directory, a missing, truncated, non-object or undecodable summary is one ReportError line."""
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(ReportError, match=message):
        load_summary(run)


def test_loss_curves_skip_bad_lines(run_dir):
    """Unreadable metric lines are skipped; the good ones of the same file still make the curve."""
    path = run_dir / "metrics" / "seed.jsonl"
    path.write_text(path.read_text() + "{not json\n" + '{"step": "x"}\n' + json.dumps({"step": 9, "seed/loss": 1.0}))
    curves = load_loss_curves(run_dir)
    assert [s for s, _ in curves["seed seed/loss"]] == [1, 2, 3, 4, 5, 9]
    assert "expert-code expert-code/loss" in curves


def test_loss_curves_missing(tmp_path):
    """A run without metric files is Missing, with the reason."""
    with pytest.raises(Missing, match="metrics"):
        load_loss_curves(tmp_path)


def test_flag_timeline_reads_epochs_and_skips_corrupt_validators(run_dir):
    """Every (validator, epoch, hotkey, reasons) is read; a second validator's corrupt file is left out."""
    bad = run_dir / "validators" / "validator-1"
    bad.mkdir()
    (bad / "result.json").write_text("{")
    timeline = load_flag_timeline(run_dir)
    assert timeline.validators == ["validator-0"]
    assert timeline.events == [("validator-0", e, HOSTILE_HOTKEY, ["copy", HOSTILE_REASON]) for e in (3, 4)]


def test_routing_prefers_summary_then_file(tmp_path):
    """Routing comes from summary mixture.routing, else router/routing.json, else Missing."""
    summary = synthetic_summary()
    assert load_routing(tmp_path, summary)["eval"]["code"]
    routing = summary["mixture"].pop("routing")
    with pytest.raises(Missing, match="no routing"):
        load_routing(tmp_path, summary)
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "routing.json").write_text(json.dumps(routing))
    assert load_routing(tmp_path, summary) == routing


def test_model_rows_in_print_order():
    """Models come as train.py prints them: experts, seed, baselines, students, then the mixture."""
    labels = [label for label, _ in model_rows(synthetic_summary())]
    assert labels == [
        "expert code",
        "expert math",
        "noise code",
        "seed",
        "solo baseline",
        "dense baseline",
        "dense student",
        "mixture",
    ]
