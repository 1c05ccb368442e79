"""The tiny network's offline wandb runs, read back from their files: one run per node, one group, the right job types.

Run: python -m pytest -q tests/training/test_wandb_offline_run.py (the shared `tiny_run` of tests/conftest.py, which
runs with `wandb.enabled=true wandb.mode=offline`).
"""

from __future__ import annotations

import math

import pytest

from moe.training.wandb_offline import read_offline_runs

pytestmark = pytest.mark.slow


def _expected_nodes(summary: dict) -> dict[str, str]:
    """Node name → job_type of every node of the run that logs to wandb, from its resolved config."""
    cfg = summary["config"]
    nodes = {"seed": "seed", "router": "router", "network": "network"}
    nodes |= {f"expert-{e['miner']}": "expert" for e in summary["experts"] if not e.get("adversary")}
    nodes |= {f"validator-{k}": "validator" for k in range(len(cfg["validator_stakes_tao"]))}
    nodes |= {f"distiller-{kind}": "distiller" for kind in cfg["students"]}
    if cfg["validator_stakes_tao"]:
        nodes["ledger"] = "ledger"
    if cfg["baselines"]:
        nodes |= {"baseline-solo": "baseline", "baseline-dense": "baseline"}
    return nodes


@pytest.fixture(scope="module")
def runs(tiny_run) -> dict:
    assert tiny_run.result.returncode == 0, tiny_run.result.stderr[-3000:]
    found = read_offline_runs(tiny_run.run_dir / "wandb")
    names = [r.name for r in found]
    assert len(names) == len(set(names)), f"a node has more than one run: {sorted(names)}"
    return {r.name: r for r in found}


def test_one_run_per_node_in_one_group(tiny_run, runs):
    """Every node of the tiny network has exactly one finished offline run, all in the group named by the run id,
    each with its role as job_type and the resolved config recorded once."""
    expected = _expected_nodes(tiny_run.summary)
    assert sorted(runs) == sorted(expected)
    for name, run in runs.items():
        assert run.group == tiny_run.summary["run_id"], name
        assert run.job_type == expected[name], name
        assert run.exited, name
        assert run.config_records == 1 and run.config["run_id"] == tiny_run.summary["run_id"], name


def test_summary_metrics_match_summary_json(tiny_run, runs):
    """Each model's run ends with the `eval/bpb/<subnet>` summary.json reports for it; training, routing, validator
    and ledger runs carry their namespaced metrics."""
    s = tiny_run.summary
    for e in s["experts"]:
        run = runs[f"expert-{e['miner']}"]
        assert {k: run.summary[f"eval/bpb/{k}"] for k in e["eval_bpb"]} == pytest.approx(e["eval_bpb"])
        assert math.isfinite(run.summary["train/loss"]) and run.summary["train/tokens"] > 0
    assert runs["seed"].summary["eval/bpb/all"] == pytest.approx(s["seed"]["eval_bpb"]["all"])
    assert runs["router"].summary["eval/bpb/all"] == pytest.approx(s["mixture"]["eval_bpb"]["all"])
    load = [v for k, v in runs["router"].summary.items() if k.count("/") == 2 and k.startswith("router/load/")]
    routed = [e for e in s["experts"] if not e["flags"]]  # a redundant miner is never routed to
    assert len(routed) <= len(load) <= len(s["experts"]) and sum(load) == pytest.approx(1.0, abs=1e-3)
    for student in s["students"]:
        run = runs[f"distiller-{student['kind']}"]
        assert run.summary["eval/bpb/all"] == pytest.approx(student["eval_bpb"]["all"])
        assert run.summary["distill/teacher_bytes"] == student["teacher_bytes"]
    for k in range(len(s["config"]["validator_stakes_tao"])):
        v = runs[f"validator-{k}"].summary
        weights = [x for key, x in v.items() if key.startswith("validator/weight/")]
        assert weights and sum(weights) == pytest.approx(1.0)
        assert math.isfinite(v["validator/mixture_bpb"]) and v["validator/epochs"] >= 1
    if "ledger" in runs:
        ledger = runs["ledger"].summary
        assert ledger["ledger/height"] == s["ledger"]["height"]
        assert ledger["ledger/issuance"] == pytest.approx(s["ledger"]["total_issuance_tao"])
    network = runs["network"].summary
    assert network["mixture/eval/bpb/all"] == pytest.approx(s["mixture"]["eval_bpb"]["all"])
    assert network["tables/experts"]["nrows"] == len(s["experts"])
