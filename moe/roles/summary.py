"""`summary.json` of a local network run, and the table printed at its end.

Schema: run_id, config, experts [{uid, hotkey, subnet, peer_id, params, train_steps, eval_bpb}], mixture {eval_bpb},
best_single {eval_bpb, subnet, hotkey}, solo_baseline and dense_baseline {eval_bpb, params, train_flops}, checks.
`all` is the plain mean over subnets, so every domain weighs the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe.config_loader import to_dict
from moe.roles.layout import RESULT, RunLayout
from moe.roles.validation_summary import validation_checks, validation_summary

if TYPE_CHECKING:
    from moe.roles.run_config import RunConfig


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_summary(cfg: RunConfig, layout: RunLayout, wall_seconds: float) -> dict[str, Any]:
    seed = _read(layout.seed / RESULT) or {}
    seed_flops = float(seed.get("train_flops", 0.0))
    experts = []
    for s in cfg.subnets:
        r = _read(layout.expert(s) / RESULT)
        if r is None:
            continue
        experts.append(
            {
                "uid": r["uid"],
                "hotkey": r["hotkey"],
                "subnet": r["subnet"],
                "peer_id": r["peer_id"],
                "params": r["params"],
                "train_steps": r["train_steps"],
                "train_flops": r["train_flops"],
                "eval_bpb": r["eval_bpb"],
                "adversary": r.get("adversary"),
            }
        )
    adversaries = (_read(p) for p in layout.adversaries.glob(f"*/{RESULT}"))
    for r in sorted(adversaries, key=lambda r: r["adversary"]):
        keep = ("uid", "hotkey", "subnet", "peer_id", "params", "train_steps", "train_flops", "eval_bpb", "adversary")
        experts.append({k: r.get(k) for k in keep})
    router = _read(layout.router / RESULT) or {}
    mixture = {"eval_bpb": router.get("eval_bpb", {})}
    honest = [e for e in experts if not e.get("adversary")]
    best = min(honest, key=lambda e: e["eval_bpb"]["all"]) if honest else None
    summary: dict[str, Any] = {
        "run_id": cfg.run_id,
        "config": to_dict(cfg),
        "wall_seconds": round(wall_seconds, 1),
        "seed": {
            "eval_bpb": seed.get("eval_bpb", {}),
            "train_steps": seed.get("train_steps"),
            "train_flops": seed_flops,
        },
        "experts": experts,
        "mixture": mixture,
        "best_single": (
            {"eval_bpb": best["eval_bpb"], "subnet": best["subnet"], "hotkey": best["hotkey"]} if best else None
        ),
    }
    for kind in ("solo", "dense"):
        b = _read(layout.baseline(kind) / RESULT)
        summary[f"{kind}_baseline"] = (
            {"eval_bpb": b["eval_bpb"], "params": b["params"], "train_flops": seed_flops + b["train_flops"]}
            if b
            else None
        )
    summary.update(validation_summary(layout, experts))
    summary["checks"] = _checks(summary)
    summary["checks"].update(validation_checks(summary))
    return summary


def _checks(s: dict[str, Any]) -> dict[str, Any]:
    """The properties a run must show, computed rather than asserted, so a regression is visible in the file."""
    mix = s["mixture"]["eval_bpb"]
    if not mix:
        return {}
    honest = [e for e in s["experts"] if not e.get("adversary")]
    out: dict[str, Any] = {
        "mixture_beats_every_expert": all(mix["all"] < e["eval_bpb"]["all"] for e in honest),
    }
    gaps = {}
    for e in honest:
        own = e["eval_bpb"].get(e["subnet"])
        if own is not None and e["subnet"] in mix:
            gaps[e["subnet"]] = round(mix[e["subnet"]] / own - 1, 4)
    out["gap_to_specialist"] = gaps
    out["within_2pct_of_specialists"] = all(g <= 0.02 for g in gaps.values())
    for kind in ("solo", "dense"):
        b = s.get(f"{kind}_baseline")
        if b:
            out[f"gap_to_{kind}"] = round(mix["all"] - b["eval_bpb"]["all"], 4)
    if s.get("solo_baseline"):
        out["mixture_beats_solo"] = mix["all"] < s["solo_baseline"]["eval_bpb"]["all"]
    return out


def print_summary(s: dict[str, Any], console) -> None:
    from rich.table import Table

    mix = s["mixture"]["eval_bpb"]
    subnets = [k for k in mix if k != "all"] or sorted({e["subnet"] for e in s["experts"]})
    t = Table(title=f"bits per byte on held-out data (run {s['run_id']}, {s['wall_seconds']:.0f}s)")
    t.add_column("model")
    for name in [*subnets, "all"]:
        t.add_column(name, justify="right")
    rows = [(f"{e.get('adversary') or 'expert'} {e['subnet']}", e["eval_bpb"]) for e in s["experts"]]
    rows.append(("seed", s["seed"]["eval_bpb"]))
    for kind in ("solo", "dense"):
        if s.get(f"{kind}_baseline"):
            rows.append((f"{kind} baseline", s[f"{kind}_baseline"]["eval_bpb"]))
    rows.append(("[bold]mixture[/bold]", mix))
    for label, bpb in rows:
        t.add_row(label, *[f"{bpb[k]:.3f}" if k in bpb else "" for k in [*subnets, "all"]])
    console.print(t)
    for k, v in s.get("checks", {}).items():
        console.print(f"  {k}: {v}")
