"""The students' part of `summary.json`: what each distilled student kept of the mixture, and who taught it.

`students`: [{kind, params, active_params, train_steps, teacher_bytes, eval_bpb, shifted_bpb, worst_window_bpb,
retention, shifted_retention}], retention = (seed's `all` - student's `all`) / (seed's `all` - mixture's `all`): the
share of what branching and mixing gained over the shared seed that the student keeps (1: all of it, 0: none, below
0: worse than the seed). `distill_traffic`: {expert hotkey: share of the gate-weighted positions the distillers were
served, all distillers together}, shown beside each expert's contribution (the ledger holds the same from the
distillers' signed records).
"""

from __future__ import annotations

import json
from typing import Any

from moe.roles.layout import RESULT, RunLayout

RETENTION_TARGET = 0.9
"""The btx student must keep this share of the mixture's gain over the seed (BTX matches its experts)."""


def retention(seed: dict, student: dict, mixture: dict) -> float | None:
    """(seed - student) / (seed - mixture) on `all`; None without all three or when the mixture did not gain."""
    if not all("all" in d for d in (seed, student, mixture)):
        return None
    gain = seed["all"] - mixture["all"]
    return round((seed["all"] - student["all"]) / gain, 4) if gain > 0 else None


def students_summary(layout: RunLayout, kinds: list[str], summary: dict[str, Any]) -> dict[str, Any]:
    seed, mix = summary["seed"], summary["mixture"]
    students, traffic = [], {}
    for kind in kinds:
        path = layout.student(kind) / RESULT
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        students.append(
            {
                **{k: r.get(k) for k in ("kind", "params", "active_params", "train_steps", "teacher_bytes")},
                "eval_bpb": r["eval_bpb"],
                "shifted_bpb": r.get("shifted_bpb", {}),
                "worst_window_bpb": r.get("worst_window_bpb"),
                "retention": retention(seed.get("eval_bpb", {}), r["eval_bpb"], mix.get("eval_bpb", {})),
                "shifted_retention": retention(
                    seed.get("shifted_bpb", {}), r.get("shifted_bpb", {}), mix.get("shifted_bpb", {})
                ),
            }
        )
        for hotkey, credit in r.get("distill_credit", {}).items():
            traffic[hotkey] = traffic.get(hotkey, 0.0) + credit
    total = sum(traffic.values())
    shares = {k: round(v / total, 4) for k, v in sorted(traffic.items())} if total > 0 else {}
    return {"students": students, "distill_traffic": shares}


def students_checks(summary: dict[str, Any]) -> dict[str, Any]:
    """The btx student keeps at least RETENTION_TARGET of the gain; the dense student beats the solo baseline."""
    out: dict[str, Any] = {}
    by_kind = {s["kind"]: s for s in summary.get("students", [])}
    btx = by_kind.get("btx")
    if btx and btx["retention"] is not None:
        out["btx_retention_at_least_0.9"] = btx["retention"] >= RETENTION_TARGET
    dense, solo = by_kind.get("dense"), summary.get("solo_baseline")
    if dense and solo:
        out["dense_student_beats_solo"] = dense["eval_bpb"]["all"] < solo["eval_bpb"]["all"]
    on_ledger = (summary.get("ledger") or {}).get("distill_traffic")
    if summary.get("distill_traffic") and on_ledger is not None:
        mine, theirs = summary["distill_traffic"], on_ledger
        keys = set(mine) | set(theirs)
        out["distill_traffic_on_ledger"] = all(abs(mine.get(k, 0) - theirs.get(k, 0)) < 1e-3 for k in keys)
    return out
