"""Small synthetic run directories for the report's tests: every piece a plot reads, each removable or corruptible,
with hostile strings where peers supply them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe.identity import Hotkey

HOSTILE_HOTKEY = '<script>alert("hk")</script>'
"""An adversary's hotkey as a hostile peer might publish it."""
HOSTILE_REASON = "<img src=x onerror=alert(1)>"
"""A flag reason carrying markup."""
SUBNETS = ["code", "math"]
HONEST = [Hotkey.from_seed(bytes([i + 1]) * 32).address for i in range(2)]
VALIDATOR = Hotkey.from_seed(bytes([9]) * 32).address


def bpb(base: float) -> dict[str, float]:
    scores = {s: base + i * 0.5 for i, s in enumerate(SUBNETS)}
    return {**scores, "all": sum(scores.values()) / len(scores)}


def synthetic_summary() -> dict:
    """A summary.json with two honest experts, one hostile adversary, baselines, a student, validation and checks."""
    experts = [
        {"uid": i, "hotkey": hk, "subnet": s, "adversary": None, "eval_bpb": bpb(3.0 + i), "flags": []}
        for i, (hk, s) in enumerate(zip(HONEST, SUBNETS, strict=True))
    ]
    experts.append({"uid": 2, "hotkey": HOSTILE_HOTKEY, "subnet": "code", "adversary": "noise", "eval_bpb": {}})
    return {
        "run_id": "synthetic",
        "wall_seconds": 12.0,
        "experts": experts,
        "seed": {"eval_bpb": bpb(4.0), "shifted_bpb": bpb(4.5), "worst_window_bpb": 7.0},
        "solo_baseline": {"eval_bpb": bpb(3.5), "shifted_bpb": bpb(4.2), "worst_window_bpb": 6.5},
        "dense_baseline": {"eval_bpb": bpb(2.9), "shifted_bpb": bpb(4.0), "worst_window_bpb": 6.4},
        "students": [{"kind": "dense", "eval_bpb": bpb(3.2), "shifted_bpb": bpb(4.1), "retention": 0.4}],
        "mixture": {
            "eval_bpb": bpb(2.5),
            "shifted_bpb": bpb(3.5),
            "worst_window_bpb": 5.5,
            "calls_per_byte": {"eval": 2.0},
            "routing": {
                "eval": {"code": {HONEST[0]: 0.9, HONEST[1]: 0.1}, "math": {HONEST[0]: 0.2, HONEST[1]: 0.8}},
                "shifted": {"code": {HONEST[0]: 0.7, HONEST[1]: 0.3}, "math": {HONEST[0]: 0.4, HONEST[1]: 0.6}},
            },
        },
        "best_single": {"eval_bpb": bpb(3.0), "subnet": "code", "hotkey": HONEST[0]},
        "contribution": {HONEST[0]: 0.6, HONEST[1]: 0.4, HOSTILE_HOTKEY: 0.0},
        "rewards": {HONEST[0]: 12.5, HONEST[1]: 7.5, HOSTILE_HOTKEY: 0.0},
        "flags": {HOSTILE_HOTKEY: ["copy", HOSTILE_REASON]},
        "validators": [{"hotkey": VALIDATOR, "stake_tao": 100.0, "flags": {HOSTILE_HOTKEY: ["copy", HOSTILE_REASON]}}],
        "ledger": {"height": 5, "total_issuance_tao": 3.0, "miner_emission_tao": 1.0, "verified": "ok: 6 blocks"},
        "checks": {"mixture_beats_every_expert": True, "mixture_beats_dense": False, "gap_to_dense": -0.4},
    }


def write_ledger(path: Path) -> None:
    """A real ledger file: genesis balances for the honest experts and the validator, then a few blocks."""
    from moe.ledger import GenesisConfig, Ledger, LedgerConfig

    genesis = GenesisConfig(
        ledger=LedgerConfig(tempo=2, max_uids=4), balances={hk: 10**9 for hk in [*HONEST, VALIDATOR]}, timestamp=1.0
    )
    with Ledger.open(path, genesis) as ledger:
        for i in range(5):
            ledger.produce_block(timestamp=2.0 + i)


def write_run(run_dir: Path, summary: dict | None = None) -> Path:
    """Write a complete synthetic run into `run_dir` (summary, metric lines, validator epochs, ledger)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary or synthetic_summary()))
    metrics = run_dir / "metrics"
    metrics.mkdir()
    for node in ("seed", "expert-code"):
        lines = [{"time": 1.0 + s, "step": s, f"{node}/loss": 4.0 - 0.1 * s, f"{node}/lr": 0.001} for s in range(1, 6)]
        (metrics / f"{node}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    epochs = [{"epoch": e, "flags": {HOSTILE_HOTKEY: ["copy", HOSTILE_REASON]}} for e in (3, 4)]
    validator = run_dir / "validators" / "validator-0"
    validator.mkdir(parents=True)
    (validator / "result.json").write_text(json.dumps({"hotkey": VALIDATOR, "epochs": epochs}))
    write_ledger(run_dir / "ledger.sqlite")
    return run_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run")
