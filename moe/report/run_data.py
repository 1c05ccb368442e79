"""What a run's report reads from its directory, as plain data: the summary, metric lines, routing and flags.

Every loader tolerates a run that lacks the piece (older runs, runs without baselines, validators or adversaries)
and a file that is corrupt: it returns None (or leaves the bad part out) and says why, so one broken file costs one
plot, never the report. Strings in these files come from untrusted peers (hotkeys, subnet names, flag reasons):
callers escape them before they reach HTML.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_DIR = "metrics"
"""Per-node metric lines written by moe.training.tracking.Tracker (`<node>.jsonl`)."""


class ReportError(RuntimeError):
    """A run directory the report cannot be written for (missing, or no readable summary.json); one line."""


class Missing(Exception):
    """A piece of the run a plot needs is absent or unreadable; the message is the logged reason."""


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json as a dict; ReportError naming the problem when the directory or file is missing or not
    a JSON object."""
    if not run_dir.is_dir():
        raise ReportError(f"no run directory at {run_dir}")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ReportError(f"no summary.json in {run_dir} (has the run finished?)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReportError(f"unreadable {path}: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path} is not a JSON object")
    return summary


def read_json(path: Path) -> Any:
    """A JSON file's content; Missing with the reason when absent or corrupt."""
    if not path.is_file():
        raise Missing(f"no {path.name}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Missing(f"unreadable {path.name}: {str(e).splitlines()[0][:120]}") from None


def number(x: Any) -> float | None:
    """`x` as a finite float, or None (missing, a string, NaN): what every table cell and plot point goes through."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def mapping(x: Any) -> dict:
    """`x` when it is a dict, else {} (a corrupt or older summary field reads as empty)."""
    return x if isinstance(x, dict) else {}


def items(x: Any) -> list[dict]:
    """The dicts in `x` when it is a list, else []."""
    return [e for e in x if isinstance(e, dict)] if isinstance(x, list) else []


def validator_entries(summary: dict) -> list[dict]:
    """summary["validators"] as a list of dicts each with its "hotkey" ({hotkey: {...}} today; a list before)."""
    v = summary.get("validators")
    if isinstance(v, dict):
        return [{"hotkey": hk, **e} for hk, e in v.items() if isinstance(e, dict)]
    return items(v)


# ---- training metrics -----------------------------------------------------------------------------------------------


def load_loss_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{"<node> <key>": [(step, loss), ...]} from every metrics/<node>.jsonl key ending in `loss`; bad lines are
    skipped (logged once per file). Missing when there are no metric files or no loss in them."""
    files = sorted((run_dir / METRICS_DIR).glob("*.jsonl"))
    if not files:
        raise Missing("no metrics/*.jsonl (run written before metric lines, or every node logged nothing)")
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        bad = 0
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as e:
            logger.warning("skipping %s: %s", path, e)
            continue
        for line in lines:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, TypeError, KeyError, RecursionError):
                bad += 1
                continue
            for key, value in row.items() if isinstance(row, dict) else ():
                v = number(value)
                if isinstance(key, str) and key.endswith("loss") and v is not None:
                    curves.setdefault(f"{path.stem} {key}", []).append((step, v))
        if bad:
            logger.warning("%s: skipped %d unreadable lines", path, bad)
    if not curves:
        raise Missing("no loss values in metrics/*.jsonl")
    return {name: sorted(points) for name, points in curves.items()}


# ---- models and experts ---------------------------------------------------------------------------------------------


def expert_label(expert: dict) -> str:
    """How a report names an expert: its kind (`expert` or the adversary's) and subnet, e.g. `copycat code`; a
    subnet's second miner by its miner name, e.g. `expert english-2`."""
    return f"{expert.get('adversary') or 'expert'} {expert.get('miner') or expert.get('subnet', '?')}"


def hotkey_labels(summary: dict) -> dict[str, str]:
    """Hotkey → report label for every expert in the summary (a label shared by two hotkeys gets its uid)."""
    experts = items(summary.get("experts"))
    labels = [expert_label(e) for e in experts]
    out = {}
    for e, label in zip(experts, labels, strict=True):
        if labels.count(label) > 1:
            label = f"{label} (uid {e.get('uid')})"
        out[str(e.get("hotkey"))] = label
    return out


def label_of(hotkey: str, labels: dict[str, str]) -> str:
    """An expert's label, or its hotkey's first 8 characters when the summary does not list it."""
    return labels.get(hotkey, hotkey[:8])


def adversary_hotkeys(summary: dict) -> set[str]:
    return {str(e.get("hotkey")) for e in items(summary.get("experts")) if e.get("adversary")}


def model_rows(summary: dict) -> list[tuple[str, dict]]:
    """Every scored model as (label, its summary dict), in the order train.py prints them: experts, seed,
    baselines, students, mixture."""
    rows = [(expert_label(e), e) for e in items(summary.get("experts"))]
    if isinstance(summary.get("seed"), dict):
        rows.append(("seed", summary["seed"]))
    rows += [(f"{k} baseline", summary[f"{k}_baseline"]) for k in ("solo", "dense") if summary.get(f"{k}_baseline")]
    rows += [(f"{st.get('kind', '?')} student", st) for st in items(summary.get("students"))]
    rows = [(label, m) for label, m in rows if isinstance(m, dict)]
    if isinstance(summary.get("mixture"), dict):
        rows.append(("mixture", summary["mixture"]))
    return rows


def subnet_names(summary: dict) -> list[str]:
    """The run's subnets: the mixture's keys (without `all`), else every expert's subnet."""
    mix = mapping(mapping(summary.get("mixture")).get("eval_bpb"))
    names = [k for k in mix if k != "all"]
    return names or sorted({str(e.get("subnet")) for e in items(summary.get("experts"))})


# ---- routing --------------------------------------------------------------------------------------------------------


def load_routing(run_dir: Path, summary: dict) -> dict[str, dict[str, dict[str, float]]]:
    """{"eval"|"shifted": {input subnet: {hotkey: share}}} from summary `mixture.routing`, else router/routing.json;
    Missing for runs from before the router recorded it."""
    routing = mapping(mapping(summary.get("mixture")).get("routing"))
    if not routing and (run_dir / "router" / "routing.json").is_file():
        routing = mapping(read_json(run_dir / "router" / "routing.json"))
    clean = {}
    for family, table in routing.items():
        rows = {
            str(subnet): {str(hk): v for hk, share in mapping(row).items() if (v := number(share)) is not None}
            for subnet, row in mapping(table).items()
        }
        if any(rows.values()):
            clean[str(family)] = rows
    if not clean:
        raise Missing("no routing recorded (router/routing.json is absent or empty: a run from before it existed)")
    return clean


# ---- validators' flags ----------------------------------------------------------------------------------------------


@dataclass
class FlagTimeline:
    """Who each validator flagged at each of its epochs."""

    validators: list[str] = field(default_factory=list)
    """Validator names (their directory under validators/)."""
    events: list[tuple[str, int, str, list[str]]] = field(default_factory=list)
    """(validator, epoch, hotkey, reasons) for every flag raised."""
    epochs: dict[str, list[int]] = field(default_factory=dict)
    """Validator → the epochs it evaluated (flags or not)."""


def load_flag_timeline(run_dir: Path) -> FlagTimeline:
    """Flags per epoch from validators/<name>/result.json `epochs`; a corrupt file is skipped (logged); Missing when
    no validator recorded any epoch."""
    timeline = FlagTimeline()
    for path in sorted((run_dir / "validators").glob("*/result.json")):
        name = path.parent.name
        try:
            epochs = items(mapping(read_json(path)).get("epochs"))
        except Missing as e:
            logger.warning("validator %s: %s", name, e)
            continue
        for i, ep in enumerate(epochs):
            epoch = ep.get("epoch")
            epoch = int(epoch) if number(epoch) is not None else i
            timeline.epochs.setdefault(name, []).append(epoch)
            for hk, reasons in mapping(ep.get("flags")).items():
                why = [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
                timeline.events.append((name, epoch, str(hk), why))
        if name in timeline.epochs:
            timeline.validators.append(name)
    if not timeline.validators:
        raise Missing("no validator epochs recorded (validators/*/result.json absent or unreadable)")
    return timeline
