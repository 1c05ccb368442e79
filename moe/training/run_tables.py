"""The network coordinator's own wandb runs, made once at the end from what the nodes left: the ledger and the summary.

    log_network_summary(cfg, layout, summary, plot_paths)   # after summary.json and the plots are written

- `ledger` (job_type `ledger`): the chain the coordinator hosted, replayed from `<run_dir>/ledger.sqlite`, one row per
  ledger epoch at its block height: `ledger/height`, `ledger/issuance`, `ledger/emission`, payouts, incentive per
  hotkey (moe.training.network_metrics). Replayed rather than logged live because the host is a thread of the
  coordinator that the chain, not wandb, is the record of; the figures are the chain's exactly.
- `network` (job_type `network`): summary.json's headline figures as summary metrics (`mixture/eval/bpb/<subnet>`,
  `checks/<name>`, ...), the tables `tables/experts`, `tables/weights`, `tables/rewards`, `tables/students` (and
  `tables/routing` where the summary has the router's routing shares), and every plot as `plots/<file stem>`.

Both share the nodes' group (the run id). With wandb disabled nothing is read or imported.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe.training.network_metrics import ledger_epoch_metrics
from moe.training.tracking import Tracker, close_wandb

if TYPE_CHECKING:
    from moe.roles.layout import RunLayout
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


def log_network_summary(
    cfg: RunConfig, layout: RunLayout, summary: dict[str, Any], plot_paths: Sequence[str | Path] = ()
) -> None:
    """Log the `ledger` run (when the run hosted a ledger) and the `network` run, and flush them to disk. Never
    raises: a failure here is logged and costs only the wandb record, never the finished run."""
    if not cfg.wandb.enabled:
        return
    try:
        if layout.ledger.is_file():
            log_ledger(cfg, layout)
        network = Tracker.for_node(cfg, layout.root, "network", job_type="network")
        try:
            network.summary(headline_metrics(summary))
            for name, (columns, rows) in summary_tables(summary).items():
                network.table(f"tables/{name}", columns, rows)
            network.images({f"plots/{Path(p).stem}": p for p in plot_paths})
        finally:
            network.finish()
        close_wandb()  # on return the runs' files are complete, ready for `wandb sync`
    except Exception:  # noqa: BLE001 -- the run is done; its wandb record is a convenience
        logger.exception("could not log the network's wandb runs")


def log_ledger(cfg: RunConfig, layout: RunLayout) -> None:
    """One `ledger` run row per epoch record of the chain, at the block height that holds it."""
    from moe.ledger import RAO_PER_TAO, Ledger

    tracker = Tracker.for_node(cfg, layout.root, "ledger", job_type="ledger")
    try:
        with Ledger.open(layout.ledger) as ledger:
            blocks = list(ledger.blocks())
            final_issuance = ledger.total_issuance
        minted = [sum(r["minted"] for r in b.records if r.get("kind") == "emission") for b in blocks]
        issuance = final_issuance - sum(minted)  # the genesis balances
        for blk, m in zip(blocks, minted, strict=True):
            issuance += m
            for rec in blk.records:
                if rec.get("kind") == "epoch":
                    tracker.log(ledger_epoch_metrics(rec, blk.height, issuance, RAO_PER_TAO), step=blk.height)
        if blocks:  # the head, past the last epoch: the run ends on the chain's final figures
            height = blocks[-1].height
            tracker.log({"ledger/height": height, "ledger/issuance": issuance / RAO_PER_TAO}, step=height)
    finally:
        tracker.finish()


def headline_metrics(summary: dict[str, Any]) -> dict[str, float | bool]:
    """The numbers of summary.json worth a column in wandb's runs table, namespaced: `<model>/eval/bpb/<subnet>`,
    `<model>/shifted/bpb/<subnet>` for the mixture, seed, best single expert, baselines and students; `checks/*`;
    `ledger/*`; `wall_seconds`."""
    out: dict[str, float | bool] = {}
    models = {k: summary.get(k) for k in ("mixture", "seed", "best_single")}
    models.update({"solo": summary.get("solo_baseline"), "dense": summary.get("dense_baseline")})
    models.update({f"students/{s['kind']}": s for s in summary.get("students") or []})
    for name, m in models.items():
        for field in ("eval_bpb", "shifted_bpb"):
            for subnet, v in ((m or {}).get(field) or {}).items():
                out[f"{name}/{field.replace('_bpb', '')}/bpb/{subnet}"] = v
        if (m or {}).get("worst_window_bpb") is not None:
            out[f"{name}/worst_window_bpb"] = m["worst_window_bpb"]
    for k, v in (summary.get("checks") or {}).items():
        if isinstance(v, bool | numbers.Number):
            out[f"checks/{k}"] = v
    ledger = summary.get("ledger") or {}
    for k in ("height", "total_issuance_tao", "miner_emission_tao"):
        if k in ledger:
            out[f"ledger/{k.removesuffix('_tao').replace('total_', '')}"] = ledger[k]
    if "wall_seconds" in summary:
        out["wall_seconds"] = summary["wall_seconds"]
    return out


def summary_tables(summary: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Table name → (columns, rows) from summary.json: experts, weights, rewards, students, routing (those it has)."""
    experts = summary.get("experts") or []
    subnets = sorted({k for e in experts for k in e.get("eval_bpb") or {}} - {"all"})
    contribution, rewards = summary.get("contribution") or {}, summary.get("rewards") or {}
    distill = summary.get("distill_traffic") or {}
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    columns = ["uid", "hotkey", "subnet", "adversary", "params", "train_steps", "eval_bpb_all"]
    columns += [f"eval_bpb_{s}" for s in subnets] + ["shifted_bpb_all", "worst_window_bpb", "flags"]
    tables["experts"] = (
        columns,
        [
            [e.get("uid"), e["hotkey"], e.get("subnet"), e.get("adversary") or "", e.get("params")]
            + [e.get("train_steps"), (e.get("eval_bpb") or {}).get("all")]
            + [(e.get("eval_bpb") or {}).get(s) for s in subnets]
            + [(e.get("shifted_bpb") or {}).get("all"), e.get("worst_window_bpb"), ",".join(e.get("flags") or [])]
            for e in experts
        ],
    )
    from moe.report.run_data import validator_entries

    stake = {v["hotkey"]: v.get("stake_tao") for v in validator_entries(summary)}
    weights = summary.get("weights") or {}
    rows = []
    by_hotkey = {e["hotkey"]: e for e in experts}
    for validator, row in weights.items():  # {expert hotkey: u16}, each subnet's vector scaled to its own maximum
        for hk, w in sorted(row.items()):
            e = by_hotkey.get(hk, {})
            rows.append([validator, stake.get(validator), e.get("netuid"), e.get("uid"), hk, e.get("subnet"), w])
    if weights:
        columns = ["validator", "stake_tao", "netuid", "uid", "hotkey", "subnet", "weight_u16"]
        tables["weights"] = (columns, rows)
    if rewards or contribution:
        columns = ["hotkey", "subnet", "adversary", "contribution", "reward_tao", "distill_traffic", "flags"]
        tables["rewards"] = (
            columns,
            [
                [e["hotkey"], e.get("subnet"), e.get("adversary") or "", contribution.get(e["hotkey"])]
                + [rewards.get(e["hotkey"]), distill.get(e["hotkey"]), ",".join(e.get("flags") or [])]
                for e in experts
            ],
        )
    students = summary.get("students") or []
    if students:
        columns = ["kind", "params", "active_params", "train_steps", "teacher_bytes", "eval_bpb_all"]
        columns += ["shifted_bpb_all", "retention", "shifted_retention"]
        keys = ("kind", "params", "active_params", "train_steps", "teacher_bytes")
        tables["students"] = (
            columns,
            [
                [s.get(k) for k in keys]
                + [(s.get("eval_bpb") or {}).get("all"), (s.get("shifted_bpb") or {}).get("all")]
                + [s.get("retention"), s.get("shifted_retention")]
                for s in students
            ],
        )
    routing = (summary.get("mixture") or {}).get("routing") or {}
    routing = routing.get("eval", routing) if isinstance(routing.get("eval"), dict) else routing
    subnet_of = {e["hotkey"]: e.get("subnet") for e in experts}
    rows = [[inp, hk, subnet_of.get(hk), share] for inp, shares in routing.items() for hk, share in shares.items()]
    if rows:
        tables["routing"] = (["input_subnet", "hotkey", "expert_subnet", "share"], rows)
    return tables
