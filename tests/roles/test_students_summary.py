"""The students' part of the summary: retention as defined, the checks, and traffic shares that add up."""

from __future__ import annotations

import pytest

from moe.fileio import write_json
from moe.roles.layout import RESULT, RunLayout
from moe.roles.students_summary import retention, students_checks, students_summary


def test_retention_is_the_share_of_the_mixtures_gain_kept():
    seed, mixture = {"all": 2.5}, {"all": 2.1}
    assert retention(seed, {"all": 2.14}, mixture) == pytest.approx(0.9)
    assert retention(seed, {"all": 2.5}, mixture) == 0.0
    assert retention(seed, {"all": 2.7}, mixture) == pytest.approx(-0.5)  # worse than the seed
    assert retention(seed, {"all": 2.0}, {"all": 2.6}) is None  # the mixture did not gain: no share to keep
    assert retention({}, {"all": 2.0}, mixture) is None


def test_summary_reads_each_student_and_adds_up_their_credit(tmp_path):
    layout = RunLayout(tmp_path)
    a, b = "a" * 64, "b" * 64
    common = {"params": 10, "active_params": 10, "train_steps": 5, "teacher_bytes": 640}
    write_json(
        layout.student("dense") / RESULT,
        {
            **common,
            "kind": "dense",
            "eval_bpb": {"all": 2.3},
            "distill_credit": {a: 100.0},
        },
    )
    write_json(
        layout.student("btx") / RESULT,
        {
            **common,
            "kind": "btx",
            "eval_bpb": {"all": 2.14},
            "distill_credit": {a: 50.0, b: 50.0},
        },
    )
    summary = {"seed": {"eval_bpb": {"all": 2.5}}, "mixture": {"eval_bpb": {"all": 2.1}}}
    part = students_summary(layout, ["dense", "btx"], summary)
    by_kind = {s["kind"]: s for s in part["students"]}
    assert by_kind["btx"]["retention"] == pytest.approx(0.9)
    assert by_kind["dense"]["retention"] == pytest.approx(0.5)
    assert part["distill_traffic"] == pytest.approx({a: 0.75, b: 0.25})
    summary |= part | {"solo_baseline": {"eval_bpb": {"all": 2.35}}, "ledger": {"distill_traffic": {a: 0.75, b: 0.25}}}
    assert students_checks(summary) == {
        "btx_retention_at_least_0.9": True,
        "dense_student_beats_solo": True,
        "distill_traffic_on_ledger": True,
    }
    summary["ledger"]["distill_traffic"] = {a: 1.0}
    assert students_checks(summary)["distill_traffic_on_ledger"] is False
