"""`report.html`: one self-contained page that says in 30 seconds what a run did.

    write_plots(run_dir)            # optional: plots/*.png (moe.report.plots)
    path = write_report(run_dir)    # run_dir/report.html

Top to bottom: the headline (mixture vs the best single expert and the baselines, checks passed, rewards, flags,
students), the result tables (models × subnets bits per byte, in distribution and shifted, as train.py prints),
the checks, the rewards, the students, the flags, then the plots already in `run_dir/plots/`. Everything is inline
(CSS, PNGs as base64 data URIs): no script, no external URL, so the file can be mailed or opened offline. A section
whose data is missing or malformed says so on the page instead of failing the report; only a missing or unreadable
summary.json raises (ReportError).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from moe.report.plots import INDEX, PLOTS, PLOTS_DIR
from moe.report.run_data import ReportError, load_summary, mapping, number
from moe.report.tables import (
    checks_table,
    esc,
    flags_table,
    headline,
    result_tables,
    rewards_table,
    students_table,
)

logger = logging.getLogger(__name__)

REPORT = "report.html"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta { color: #666; } ul.headline li { margin: .25em 0; font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th[scope=row], thead th:first-child, table.checks td:first-child { text-align: left; }
thead th { background: #f3f3f3; } td.best { font-weight: bold; } td.text { text-align: left; }
tr.mixture { background: #eef5ff; font-weight: 600; }
tr.adversary th { color: #b00020; } tr.honest-flagged { background: #fff0f0; }
td.hotkey { font-family: ui-monospace, monospace; font-size: .9em; }
.pass { color: #0a7a2f; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-weight: 600; margin-bottom: .3em; } .note { color: #777; font-style: italic; }
"""


def write_report(run_dir: Path, include_plots: bool = True) -> Path:
    """Write `run_dir/report.html` (atomically) from summary.json and, unless `include_plots` is False, the PNGs
    already in plots/; returns its path. ReportError when the run directory or its summary.json is missing or
    unreadable."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    run_id = summary.get("run_id", run_dir.name)
    wall = number(summary.get("wall_seconds"))
    meta = f"run directory {esc(run_dir)}" + (f", {wall:.0f} s wall time" if wall is not None else "")
    meta += f"; report written {time.strftime('%Y-%m-%d %H:%M')}"
    bullets = _guarded("headline", lambda: "".join(f"<li>{b}</li>" for b in headline(summary)))
    body = [
        f"<h1>hivemoe run {esc(run_id)}</h1><p class=meta>{meta}</p>",
        f"<ul class=headline>{bullets}</ul>" if bullets else "",
        _section("Results", "results", lambda: result_tables(summary), "no model has scores in summary.json"),
        _section("Checks", "checks", lambda: checks_table(summary), "no checks in summary.json"),
        _section("Rewards", "rewards", lambda: rewards_table(summary), "no experts in summary.json"),
        _section("Students", "students", lambda: students_table(summary), "no distilled students in this run"),
        _section("Flags", "flags", lambda: flags_table(summary), _no_flags(summary)),
        _section("Plots", "plots", lambda: plots_html(run_dir), "no plots in plots/") if include_plots else "",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hivemoe run {esc(run_id)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
    path = run_dir / REPORT
    tmp = path.with_name(f".{REPORT}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _no_flags(summary: dict) -> str:
    if "flags" not in summary:
        return "no validator flags recorded in summary.json"
    return "no expert was flagged"


def _guarded(name: str, build: Callable[[], str]) -> str:
    """`build()`, or a note on the page when it fails on malformed data (logged), so one section never costs the
    report."""
    try:
        return build()
    except Exception as e:
        logger.warning("report section %s failed", name, exc_info=True)
        return f"<p class=note>{esc(name)} unavailable: {esc(type(e).__name__)}: {esc(str(e)[:200])}</p>"


def _section(title: str, anchor: str, build: Callable[[], str], empty: str) -> str:
    content = _guarded(title.lower(), build) or f"<p class=note>{esc(empty)}.</p>"
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{content}</section>'


def plots_html(run_dir: Path) -> str:
    """Each PNG in plots/ (in PLOTS order) as an inline figure, then the plots skipped and why (plots/index.json)."""
    folder = run_dir / PLOTS_DIR
    skipped = {}
    index = folder / INDEX
    if index.is_file():
        try:
            skipped = mapping(json.loads(index.read_text()).get("skipped"))
        except (OSError, ValueError, AttributeError) as e:
            logger.warning("ignoring unreadable %s: %s", index, e)
    parts = []
    for name, caption in PLOTS.items():
        path = folder / name
        if name in skipped or not path.is_file():
            continue
        data = path.read_bytes()
        if not data.startswith(PNG_MAGIC):
            logger.warning("not embedding %s: not a PNG", path)
            continue
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<figure><figcaption>{esc(caption)}</figcaption><img alt="{esc(caption)}" src="{src}"></figure>')
    notes = [f"<li>{esc(PLOTS.get(name, name))}: {esc(why)}</li>" for name, why in skipped.items()]
    if notes:
        parts.append(f"<p class=note>Not plotted:</p><ul class=note>{''.join(notes)}</ul>")
    return "".join(parts)


__all__ = ["REPORT", "ReportError", "write_report"]
