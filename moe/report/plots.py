"""A run's plots as PNG files under `<run_dir>/plots/`, drawn with matplotlib's Agg backend (no display needed).

    paths = write_plots(Path("runs/20261130-051136"))   # [.../plots/training_loss.png, ...]

Each plot is drawn from its own data (moe.report.run_data, moe.report.ledger_history): when that data is absent (no
metric lines, no baselines, no ledger, no adversaries) or unreadable, the plot is skipped with a logged reason and the
others are still drawn; `plots/index.json` records what was written and why the rest was not, for the HTML report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: plots are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from moe.fileio import write_json  # noqa: E402
from moe.report.ledger_history import read_ledger_history  # noqa: E402
from moe.report.run_data import (  # noqa: E402
    Missing,
    ReportError,
    adversary_hotkeys,
    hotkey_labels,
    items,
    label_of,
    load_flag_timeline,
    load_loss_curves,
    load_routing,
    load_summary,
    mapping,
    model_rows,
    number,
    subnet_names,
    validator_entries,
)

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
INDEX = "index.json"
"""{"written": [file names], "skipped": {file name: reason}} beside the PNGs."""

PLOTS: dict[str, str] = {
    "training_loss.png": "Training loss per node",
    "bpb_per_subnet.png": "Bits per byte per subnet, every model",
    "routing.png": "Which experts the gate chose for each input subnet",
    "contribution_reward.png": "Contribution vs reward per expert",
    "ledger.png": "TAO issuance and holdings over blocks",
    "flags.png": "Who the validators flagged, epoch by epoch",
}
"""File name → caption, in the order the report shows them."""

DPI = 100
ADVERSARY_COLOR = "tab:red"
HONEST_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
"""Line colours for honest experts and validators: never the adversaries' red."""


def text(s: object, limit: int = 40) -> str:
    """A peer-supplied string made safe for a matplotlib label: `$` would start mathtext (and can fail to parse),
    and a long name would swamp the axes."""
    s = str(s)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def write_plots(run_dir: Path) -> list[Path]:
    """Draw every plot the run has data for into `run_dir/plots/`; returns the PNGs written. Never raises for a
    missing or corrupt piece of the run: that plot is skipped, its reason logged and kept in plots/index.json."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary: dict[str, Any] | None = load_summary(run_dir)
        no_summary = ""
    except ReportError as e:
        summary, no_summary = None, str(e)
    drawers: dict[str, Callable[[], Figure]] = {
        "training_loss.png": lambda: plot_training_loss(run_dir),
        "bpb_per_subnet.png": lambda: plot_bpb(_need(summary, no_summary)),
        "routing.png": lambda: plot_routing(run_dir, _need(summary, no_summary)),
        "contribution_reward.png": lambda: plot_contribution_reward(_need(summary, no_summary)),
        "ledger.png": lambda: plot_ledger(run_dir, _need(summary, no_summary)),
        "flags.png": lambda: plot_flags(run_dir, _need(summary, no_summary)),
    }
    written, skipped = [], {}
    for name, draw in drawers.items():
        path = out / name
        try:
            fig = draw()
            try:
                fig.savefig(path, dpi=DPI, bbox_inches="tight")
            finally:
                plt.close(fig)
            written.append(path)
        except Missing as e:
            skipped[name] = str(e)
            logger.info("plot %s skipped: %s", name, e)
        except Exception as e:  # a corrupt file costs its plot, never the report
            skipped[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            logger.warning("plot %s failed", name, exc_info=True)
        if name in skipped:
            path.unlink(missing_ok=True)  # never leave a stale plot from an earlier report beside the new ones
    write_json(out / INDEX, {"written": [p.name for p in written], "skipped": skipped})
    return written


def _need(summary: dict | None, why: str) -> dict:
    if summary is None:
        raise Missing(why)
    return summary


def plot_training_loss(run_dir: Path) -> Figure:
    curves = load_loss_curves(run_dir)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, points in curves.items():
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, marker="." if len(points) < 20 else None, label=text(name))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per byte)")
    ax.set_title("training loss per node")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1, loc="upper right")
    return fig


def plot_bpb(summary: dict) -> Figure:
    """Two panels (in distribution, shifted): one row per model, a dot per subnet and a bar for `all`."""
    rows = [(label, m) for label, m in model_rows(summary) if _any([(label, m)], "eval_bpb", "shifted_bpb")]
    subnets = subnet_names(summary)
    families = [(k, t) for k, t in (("eval_bpb", "held-out data"), ("shifted_bpb", "shifted text")) if _any(rows, k)]
    if not families:
        raise Missing("no model has bits per byte in summary.json")
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 0.35 * len(rows) + 1.8), squeeze=False)
    y = np.arange(len(rows))
    colors = plt.get_cmap("tab10")
    for ax, (key, title) in zip(axes[0], families, strict=True):
        alls = [number(mapping(m.get(key)).get("all")) for _, m in rows]
        ax.barh(y, [a or 0.0 for a in alls], color="lightgray", label="all (mean over subnets)")
        for i, s in enumerate(subnets):
            xs = [number(mapping(m.get(key)).get(s)) for _, m in rows]
            keep = [j for j, x in enumerate(xs) if x is not None]
            ax.scatter([xs[j] for j in keep], y[keep], s=18, color=colors(i % 10), label=text(s), zorder=3)
        ax.set_yticks(y, [text(label) for label, _ in rows], fontsize=8)
        for tick, (label, _) in zip(ax.get_yticklabels(), rows, strict=True):
            if label == "mixture":
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set_xlabel("bits per byte (lower is better)")
        ax.set_title(f"bits per byte on {title}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _any(rows: list[tuple[str, dict]], *keys: str) -> bool:
    """Whether any of `rows` has scores under any of `keys` (adversaries of older runs have none)."""
    return any(mapping(m.get(k)) for _, m in rows for k in keys)


def plot_routing(run_dir: Path, summary: dict) -> Figure:
    """A heatmap per evaluation family: input subnet (rows) × expert (columns), the share of the gate's top-k
    selections."""
    routing = load_routing(run_dir, summary)
    labels = hotkey_labels(summary)
    families = list(routing.items())
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for ax, (family, table) in zip(axes[0], families, strict=True):
        subnets = list(table)
        hotkeys = sorted({hk for row in table.values() for hk in row}, key=lambda hk: label_of(hk, labels))
        grid = np.array([[table[s].get(hk, 0.0) for hk in hotkeys] for s in subnets])
        im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(grid.max())), aspect="auto")
        ax.set_xticks(range(len(hotkeys)), [text(label_of(hk, labels), 24) for hk in hotkeys], rotation=40, ha="right")
        ax.set_yticks(range(len(subnets)), [text(s, 24) for s in subnets])
        for i in range(len(subnets)):
            for j in range(len(hotkeys)):
                color = "white" if grid[i, j] < 0.6 * grid.max() else "black"  # readable on viridis' both ends
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xlabel("expert chosen")
        ax.set_ylabel("input subnet")
        ax.set_title(f"gate's top-k share ({text(family, 20)})")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_contribution_reward(summary: dict) -> Figure:
    contribution, rewards = mapping(summary.get("contribution")), mapping(summary.get("rewards"))
    if not contribution or not rewards:
        raise Missing("no contribution or rewards in summary.json (a run without validators or ledger)")
    labels, adversaries = hotkey_labels(summary), adversary_hotkeys(summary)
    hotkeys = sorted(set(contribution) | set(rewards))
    fig, ax = plt.subplots(figsize=(7, 5))
    for hk in hotkeys:
        c, r = number(contribution.get(hk)) or 0.0, number(rewards.get(hk)) or 0.0
        color = ADVERSARY_COLOR if hk in adversaries else "tab:blue"
        ax.scatter(c, r, color=color, s=36, zorder=3)
        ax.annotate(text(label_of(hk, labels), 24), (c, r), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("contribution (validators' Shapley share, stake-weighted)")
    ax.set_ylabel("reward (TAO)")
    ax.set_title("contribution vs reward per expert" + (" (red: adversaries)" if adversaries else ""))
    ax.grid(alpha=0.3)
    return fig


def plot_ledger(run_dir: Path, summary: dict) -> Figure:
    """Total issuance, and each expert's and validator's holdings (balance plus stake), block by block."""
    labels, adversaries = hotkey_labels(summary), adversary_hotkeys(summary)
    experts = [str(e.get("hotkey")) for e in items(summary.get("experts"))]
    validators = [str(v.get("hotkey")) for v in validator_entries(summary)]
    history = read_ledger_history(run_dir / "ledger.sqlite", experts + validators)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(history.heights, history.issuance_tao, color="black")
    top.set_ylabel("total issuance (TAO)")
    top.set_title("TAO issuance" + (f" (replay stopped: {text(history.stopped, 60)})" if history.stopped else ""))
    top.grid(alpha=0.3)
    honest = [hk for hk in experts if hk not in adversaries]
    color = {hk: HONEST_COLORS[i % len(HONEST_COLORS)] for i, hk in enumerate(honest + validators)}
    for hk in experts:
        style = {"color": ADVERSARY_COLOR, "linestyle": "--"} if hk in adversaries else {"color": color[hk]}
        bottom.plot(history.heights, history.holdings_tao[hk], label=text(label_of(hk, labels), 24), **style)
    for i, hk in enumerate(validators):
        label = f"validator {i} ({text(hk, 8)})"
        bottom.plot(history.heights, history.holdings_tao[hk], linestyle=":", color=color[hk], label=label)
    bottom.set_yscale("symlog", linthresh=1.0)
    bottom.set_xlabel("block")
    bottom.set_ylabel("balance + stake (TAO)")
    bottom.set_title("holdings")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def plot_flags(run_dir: Path, summary: dict) -> Figure:
    """One row per expert (flagged ones and every listed expert), a marker per validator at each epoch it flagged
    that expert; the row's label lists the reasons."""
    adversaries = adversary_hotkeys(summary)
    timeline = load_flag_timeline(run_dir)
    if not adversaries and not timeline.events:
        raise Missing("no adversaries and nobody flagged")
    labels = hotkey_labels(summary)
    hotkeys = list(labels) + sorted({hk for _, _, hk, _ in timeline.events} - set(labels))
    reasons: dict[str, set[str]] = {hk: set() for hk in hotkeys}
    for _, _, hk, why in timeline.events:
        reasons[hk].update(why)
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(hotkeys) + 1.8))
    markers = "os^Dv<>p"
    for i, name in enumerate(timeline.validators):
        pts = [(epoch, hotkeys.index(hk)) for v, epoch, hk, _ in timeline.events if v == name]
        offset = (i - (len(timeline.validators) - 1) / 2) * 0.15
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, np.array(ys) + offset, marker=markers[i % len(markers)], s=40, label=text(name, 24))
        else:
            ax.scatter([], [], marker=markers[i % len(markers)], label=f"{text(name, 24)} (flagged nobody)")
    ticks = []
    for hk in hotkeys:
        why = ", ".join(sorted(reasons[hk])) or "never flagged"
        ticks.append(f"{text(label_of(hk, labels), 24)}: {text(why, 48)}")
    ax.set_yticks(range(len(hotkeys)), ticks, fontsize=8)
    for tick, hk in zip(ax.get_yticklabels(), hotkeys, strict=True):
        if hk in adversaries:
            tick.set_color(ADVERSARY_COLOR)
    epochs = sorted({e for eps in timeline.epochs.values() for e in eps})
    if len(epochs) <= 30:
        ax.set_xticks(epochs)
    ax.set_xlim(min(epochs) - 1, max(epochs) + 1)
    ax.set_ylim(len(hotkeys) - 0.5, -0.5)
    ax.set_xlabel("validator epoch")
    ax.set_title("flags per validator epoch (red labels: adversaries)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
