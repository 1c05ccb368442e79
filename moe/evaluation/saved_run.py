"""A finished run read back from its directory: the models, the trained gate and the settings it was scored with.

Everything comes from files the run wrote (config.yaml, each node's result.json, the checkpoints, router/gate.*);
nothing touches the network. The mixture's expert set, slots, centroids and trust are the router's at its own
evaluation (router/result.json lists the experts it routed to and the validators' trust it followed), so the
offline mixture makes the same choices the live one did.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from moe.config_loader import ConfigError, build, load_yaml
from moe.distill.config import STUDENTS
from moe.model.transformer import ByteLM
from moe.roles.baseline import BASELINES
from moe.roles.layout import CHECKPOINT, GATE, RESULT, RunLayout
from moe.roles.run_models import RunModelError, load_run_model
from moe.routing.gate import Gate
from moe.routing.mixing import ExpertEntry
from moe.routing.remote import RouterConfig, relative_log_trust
from moe.training.loop import TrainConfig

logger = logging.getLogger(__name__)

GATE_WEIGHTS = "gate.safetensors"
"""The router's gate parameters, beside GATE (its slots and the expert records it knew)."""


@dataclass
class SavedExpert:
    hotkey: str
    subnet: str
    model: ByteLM


@dataclass
class SavedRun:
    """What `moe.evaluation.text_scores` needs of a run; `load_saved_run` fills it."""

    root: Path
    router: RouterConfig
    """The router's settings (k_best, probe_len, switching, wire format)."""
    train: TrainConfig
    """The experts' training settings: every model of the run was scored on windows of `train.seq_len` bytes,
    `train.batch_size` at a time, `train.eval_batches` batches a subnet."""
    experts: list[SavedExpert]
    """Every expert whose checkpoint the run kept (adversaries keep none)."""
    seed: ByteLM
    gate: Gate
    entries: list[ExpertEntry]
    """The experts the router routed to when it scored the mixture, in its order, with their slots and trust."""
    generalist: bool
    """Whether the router mixed the seed in as its generalist."""
    baselines: dict[str, ByteLM] = field(default_factory=dict)
    students: dict[str, ByteLM] = field(default_factory=dict)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunModelError(f"run {path.parents[1]} has no {what} ({path} missing)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunModelError(f"{path} is unreadable: {e}") from None


def _configs(layout: RunLayout) -> tuple[RouterConfig, TrainConfig]:
    """The router's and the experts' training settings from the run's resolved config.yaml."""
    try:
        tree = load_yaml(layout.config)
        router = build(RouterConfig, tree.get("router") or {}, "router.")
        train = build(TrainConfig, tree.get("expert_train") or {}, "expert_train.")
    except ConfigError as e:
        raise RunModelError(f"run {layout.root} has an unusable config: {e}") from None
    return router, train


def _experts(layout: RunLayout) -> list[SavedExpert]:
    out = []
    for folder in sorted(p for p in (layout.root / "experts").glob("*") if (p / CHECKPOINT).is_dir()):
        result = _read_json(folder / RESULT, f"result for expert {folder.name}")
        model = load_run_model(layout.root, f"expert:{folder.name}")
        out.append(SavedExpert(hotkey=result["hotkey"], subnet=result.get("subnet", folder.name), model=model))
    if not out:
        raise RunModelError(f"run {layout.root} has no expert checkpoints (experts/<subnet>/{CHECKPOINT})")
    return out


def _gate(layout: RunLayout, experts: list[SavedExpert], gate_dir: Path) -> tuple[Gate, list[ExpertEntry], bool]:
    """The trained gate (from `gate_dir`) and the router's expert entries at its evaluation (routed experts whose
    checkpoints the run lacks, e.g. an adversary nobody flagged, are left out with a warning: the mixture then differs
    from the run's)."""
    meta = _read_json(gate_dir / GATE, "trained gate")
    result = _read_json(layout.router / RESULT, "router result (the router did not finish)")
    try:
        gate = Gate(int(meta["d_gate"]))
        gate.load_state_dict(load_file(gate_dir / GATE_WEIGHTS))
        slots = {str(k): int(v) for k, v in meta["slots"].items()}
        centroids = {r["hotkey"]: r["signature_centroid"] for r in meta.get("records", [])}
        routed = [str(k) for k in result["experts"]]
    except Exception as e:  # safetensors, shape and key errors alike mean a damaged gate
        raise RunModelError(f"gate in {gate_dir} is unreadable: {type(e).__name__}: {e}") from None
    log_trust = relative_log_trust(result.get("trust") or {}, set(routed))
    subnet_of = {e.hotkey: e.subnet for e in experts}
    entries = []
    for hk in routed:
        if hk not in subnet_of or hk not in slots or hk not in centroids:
            logger.warning("router routed to %s, which the run kept no checkpoint or gate slot of; left out", hk[:16])
            continue
        entries.append(ExpertEntry(hk, slots[hk], centroids[hk], subnet_of[hk], log_trust.get(hk, 0.0)))
    if not entries:
        raise RunModelError(f"none of the experts the router of {layout.root} routed to has a checkpoint")
    return gate.eval(), entries, bool(result.get("generalist", True))


def load_saved_run(
    run_dir: str | Path, gate_dir: str | Path | None = None, baselines_and_students: bool = True
) -> SavedRun:
    """Read a finished run (CPU, eval mode); RunModelError (one line) when it is missing, unfinished or corrupt.

    `gate_dir` takes the gate from another router directory than the run's own; without `baselines_and_students`
    only the mixture's models are loaded (what generation needs)."""
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise RunModelError(f"no run directory at {layout.root}")
    if not layout.config.is_file():
        raise RunModelError(f"{layout.root} is not a run directory ({layout.config.name} missing)")
    router, train = _configs(layout)
    experts = _experts(layout)
    gate, entries, generalist = _gate(layout, experts, Path(gate_dir) if gate_dir else layout.router)
    baselines, students = {}, {}
    if baselines_and_students:
        kept_baselines = [k for k in BASELINES if (layout.baseline(k) / CHECKPOINT).is_dir()]
        baselines = {k: load_run_model(layout.root, f"baseline:{k}") for k in kept_baselines}
        students = {k: load_run_model(layout.root, k) for k in STUDENTS if (layout.student(k) / CHECKPOINT).is_dir()}
    return SavedRun(
        root=layout.root,
        router=router,
        train=train,
        experts=experts,
        seed=load_run_model(layout.root, "seed"),
        gate=gate,
        entries=entries,
        generalist=generalist,
        baselines=baselines,
        students=students,
    )
