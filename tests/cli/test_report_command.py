"""Tests for moe/cli/report_command.py: `hivemoe report RUN_DIR` writes plots and report.html or fails in one line,
and on the real tiny run the page renders in headless Chromium with the result table and no console error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report.conftest import write_run

from moe.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_report_writes_plots_and_page(tmp_path, capsys):
    """Exit 0, the report's path printed, plots beside it."""
    run = write_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()
    assert len(list((run / "plots").glob("*.png"))) == 6


def test_no_plots_writes_tables_only(tmp_path, capsys):
    """--no-plots draws nothing and embeds nothing."""
    run = write_run(tmp_path / "run")
    assert main(["report", str(run), "--no-plots"]) == 0
    assert not (run / "plots").exists()
    assert "data:image/png" not in (run / "report.html").read_text()


@pytest.mark.parametrize("summary", [None, '{"run_id": ', "[]"])
def test_missing_or_unreadable_summary_is_one_error_line(tmp_path, capsys, summary):
    """A run without summary.json, or with a corrupt one, exits 1 with one `error:` line and writes nothing."""
    run = tmp_path / "run"
    run.mkdir()
    if summary is not None:
        (run / "summary.json").write_text(summary)
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (run / "report.html").exists() and not (run / "plots").exists()


def test_missing_run_dir_is_one_error_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run directory")


@pytest.mark.slow
def test_report_of_the_tiny_run_renders_in_chromium(tiny_run, tmp_path):
    """`hivemoe report` on the real tiny run writes a page that headless Chromium renders without a console error,
    showing the result table with the mixture's row; its screenshot is a non-blank PNG."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it with apt-get)")
    from PIL import Image
    from report.headless_browser import render

    assert tiny_run.result.returncode == 0, tiny_run.result.stderr[-3000:]
    run = tmp_path / "run"  # a copy: the session's run is shared read-only, and the report writes into its run
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("checkpoint", "teacher_cache", "wandb"))
    cmd = [sys.executable, "-m", "moe.cli.main", "report", str(run)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(run / "report.html")
    probe = """JSON.stringify({
        tables: document.querySelectorAll("table.results").length,
        mixture: [...document.querySelectorAll("table.results tr.mixture th")].map(th => th.textContent),
        cells: document.querySelectorAll("table.results tr.mixture td").length,
        images: [...document.images].filter(img => img.complete && img.naturalWidth > 0).length,
    })"""
    page = render(run / "report.html", probe, chromium=chromium, width=1280, height=1600)
    assert page.errors == []
    dom = json.loads(page.value)
    assert dom["tables"] == 2 and dom["mixture"] == ["mixture", "mixture"] and dom["cells"] >= 5
    assert dom["images"] == len(list((run / "plots").glob("*.png"))) >= 4
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    image = Image.open(shot).convert("L")
    assert image.size[0] >= 1200
    lo, hi = image.getextrema()
    assert hi - lo > 100  # text and plots, not a blank page
