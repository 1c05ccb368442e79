"""`summary.json` of a local network run, and the table printed at its end.

Schema: run_id, config, experts [{uid, netuid, miner, hotkey, subnet, peer_id, params, train_steps, eval_bpb,
shifted_bpb, worst_window_bpb}], mixture {eval_bpb, shifted_bpb, worst_window_bpb, calls_per_byte, routing},
best_single {eval_bpb, subnet, hotkey}, seed, solo_baseline and dense_baseline {eval_bpb, shifted_bpb,
worst_window_bpb, params, train_flops}, students and distill_traffic (moe.roles.students_summary), subnets and
validators (moe.roles.market_summary), checks. `eval_bpb` is in distribution (each subnet's validation split),
`shifted_bpb` on each subnet's shifted set (same domain, another source; never trained on), `worst_window_bpb` the
highest single window on the shifted sets. `all` is the plain mean over subnets, so every domain weighs the same.
`mixture.routing` is the router's routing.json: {"eval"|"shifted": {input subnet: {hotkey: share of the gate's top-k
selections}}} ({} for runs from before it existed). An expert's `uid` is its uid on its own ledger subnet `netuid`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe.config_loader import to_dict
from moe.roles.layout import RESULT, ROUTING, RunLayout
from moe.roles.ledger_facts import facts_for
from moe.roles.market_summary import market_checks, market_summary, print_market
from moe.roles.miners import parse_miners
from moe.roles.payments_summary import payments_summary
from moe.roles.students_summary import students_checks, students_summary
from moe.roles.validation_summary import validation_checks, validation_summary

if TYPE_CHECKING:
    from moe.roles.run_config import RunConfig


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_summary(cfg: RunConfig, layout: RunLayout, wall_seconds: float) -> dict[str, Any]:
    seed = _read(layout.seed / RESULT) or {}
    seed_flops = float(seed.get("train_flops", 0.0))
    experts = []
    for m in parse_miners(cfg.miners, cfg.subnets):
        r = _read(layout.expert(m.name) / RESULT)
        if r is None:
            continue
        experts.append(
            {
                "uid": r["uid"],
                "netuid": r.get("netuid"),
                "miner": r.get("miner", m.name),
                "hotkey": r["hotkey"],
                "subnet": r["subnet"],
                "peer_id": r["peer_id"],
                "params": r["params"],
                "train_steps": r["train_steps"],
                "train_flops": r["train_flops"],
                "eval_bpb": r["eval_bpb"],
                **_generalisation(r),
                "adversary": r.get("adversary"),
                "price_tao_per_mbyte": r.get("price_tao_per_mbyte"),
            }
        )
    adversaries = (_read(p) for p in layout.adversaries.glob(f"*/{RESULT}"))
    for r in sorted(adversaries, key=lambda r: r["adversary"]):
        keep = (
            "uid",
            "netuid",
            "hotkey",
            "subnet",
            "peer_id",
            "params",
            "train_steps",
            "train_flops",
            "eval_bpb",
            "adversary",
        )
        experts.append({k: r.get(k) for k in keep})
    router = _read(layout.router / RESULT) or {}
    mixture = {"eval_bpb": router.get("eval_bpb", {}), **_generalisation(router)}
    mixture["calls_per_byte"] = router.get("calls_per_byte", {})
    mixture["routing"] = _read(layout.router / ROUTING) or {}
    honest = [e for e in experts if not e.get("adversary")]
    best = min(honest, key=lambda e: e["eval_bpb"]["all"]) if honest else None
    summary: dict[str, Any] = {
        "run_id": cfg.run_id,
        "config": to_dict(cfg),
        "wall_seconds": round(wall_seconds, 1),
        "seed": {
            "eval_bpb": seed.get("eval_bpb", {}),
            **_generalisation(seed),
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
            {
                "eval_bpb": b["eval_bpb"],
                **_generalisation(b),
                "params": b["params"],
                "train_flops": seed_flops + b["train_flops"],
            }
            if b
            else None
        )
    facts = facts_for(layout)
    summary.update(validation_summary(layout, experts, facts))
    summary.update(market_summary(layout, _netuids(cfg, experts), experts, facts))
    summary.update(payments_summary(layout, experts, summary.get("rewards") or {}, facts))
    summary.update(students_summary(layout, cfg.students, summary))
    for e in experts:
        e["flags"] = summary.get("flags", {}).get(e["hotkey"], [])
    summary["checks"] = _checks(summary)
    summary["checks"].update(validation_checks(summary))
    summary["checks"].update(students_checks(summary))
    summary["checks"].update(market_checks(summary))
    return summary


def _netuids(cfg: RunConfig, experts: list[dict]) -> dict[str, int]:
    """Subnet name → netuid, as the experts' results record it (the run's subnets, in order)."""
    known = {e["subnet"]: e["netuid"] for e in experts if e.get("netuid") is not None}
    return {s: known[s] for s in cfg.subnets if s in known}


def _generalisation(result: dict) -> dict[str, Any]:
    """A node's scores on the shifted sets, as its result.json holds them (empty where it has none)."""
    return {"shifted_bpb": result.get("shifted_bpb", {}), "worst_window_bpb": result.get("worst_window_bpb")}


MAX_SHIFTED_WINDOW_BPB = 6.0
"""No window of the shifted sets may cost the mixture more than this (uniform bytes cost 8)."""


def _shifted_checks(s: dict[str, Any]) -> dict[str, Any]:
    """The mixture against what one participant builds alone, on text from other sources than the training corpora."""
    mix = s["mixture"].get("shifted_bpb") or {}
    if "all" not in mix:
        return {}
    out: dict[str, Any] = {}
    for name, other in (("seed", s["seed"]), ("solo", s.get("solo_baseline")), ("dense", s.get("dense_baseline"))):
        theirs = (other or {}).get("shifted_bpb") or {}
        if "all" in theirs:
            out[f"shifted_mixture_beats_{name}"] = mix["all"] < theirs["all"]
            out[f"shifted_gap_to_{name}"] = round(mix["all"] - theirs["all"], 4)
    worst = s["mixture"].get("worst_window_bpb")
    if worst is not None:
        out["shifted_no_window_above_6"] = worst <= MAX_SHIFTED_WINDOW_BPB
    return out


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
    if s.get("dense_baseline"):
        out["mixture_beats_dense"] = mix["all"] < s["dense_baseline"]["eval_bpb"]["all"]
    out.update(_shifted_checks(s))
    return out


def print_summary(s: dict[str, Any], console) -> None:
    """Two tables, in distribution and on the shifted sets (with each model's worst window), then the checks."""
    from rich.table import Table

    mix = s["mixture"]
    subnets = [k for k in mix["eval_bpb"] if k != "all"] or sorted({e["subnet"] for e in s["experts"]})
    models = [(f"{e.get('adversary') or 'expert'} {e.get('miner') or e['subnet']}", e) for e in s["experts"]]
    models.append(("seed", s["seed"]))
    models += [(f"{k} baseline", s[f"{k}_baseline"]) for k in ("solo", "dense") if s.get(f"{k}_baseline")]
    models += [(f"{st['kind']} student", st) for st in s.get("students", [])]
    models.append(("[bold]mixture[/bold]", mix))
    for key, what in (("eval_bpb", "held-out data"), ("shifted_bpb", "shifted text (other sources)")):
        if not any(m.get(key) for _, m in models):
            continue
        t = Table(title=f"bits per byte on {what} (run {s['run_id']}, {s['wall_seconds']:.0f}s)")
        t.add_column("model")
        for name in [*subnets, "all"]:
            t.add_column(name, justify="right")
        worst = key == "shifted_bpb"
        if worst:
            t.add_column("worst window", justify="right")
        for label, m in models:
            bpb = m.get(key) or {}
            cells = [f"{bpb[k]:.3f}" if k in bpb else "" for k in [*subnets, "all"]]
            if worst:
                cells.append("" if m.get("worst_window_bpb") is None else f"{m['worst_window_bpb']:.2f}")
            t.add_row(label, *cells)
        console.print(t)
    if mix.get("calls_per_byte"):
        calls = ", ".join(f"{k} {v:.2f}" for k, v in mix["calls_per_byte"].items())
        console.print(f"  mixture expert calls per byte: {calls}")
    print_market(s, console)
    for k, v in s.get("checks", {}).items():
        console.print(f"  {k}: {v}")
