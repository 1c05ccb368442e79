"""Tests for moe/report/html.py: one self-contained page, every peer-supplied string escaped, robust to bad data."""

from __future__ import annotations

import json
import re

import pytest

from moe.report.html import write_report
from moe.report.plots import write_plots
from moe.report.run_data import ReportError

from .conftest import synthetic_summary


def test_report_is_self_contained_with_tables_and_plots(run_dir):
    """The page holds the result tables (mixture row included), checks, rewards, students, flags and all six plots
    as data URIs, and refers to nothing outside itself: no script, no external URL."""
    write_plots(run_dir)
    page = write_report(run_dir).read_text()
    for section in ("results", "checks", "rewards", "students", "flags", "plots"):
        assert f'<section id="{section}">' in page
    assert page.count("<tr class=mixture>") == 2  # in distribution and shifted
    assert page.count('src="data:image/png;base64,') == 6
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page
    assert "FAIL" in page and "PASS" in page  # mixture_beats_dense is false, mixture_beats_every_expert true


def test_hostile_strings_are_escaped(run_dir):
    """A hotkey `<script>...` and a flag reason `<img onerror=...>` appear as text, never as markup."""
    page = write_report(run_dir).read_text()
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;hk&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_malformed_summary_fields_still_give_a_page(run_dir):
    """Fields of the wrong type leave their sections empty or noted; the page is still written."""
    summary = synthetic_summary()
    summary.update(experts="oops", checks=[1, 2], mixture=None, students={"a": 1}, rewards=None, flags=7)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = write_report(run_dir, include_plots=False).read_text()
    assert "hivemoe run synthetic" in page
    assert '<section id="plots">' not in page
    assert "seed" in page  # the models that are well-formed still make the table


def test_missing_summary_raises(tmp_path):
    """No summary.json is a ReportError (the command turns it into one error line)."""
    with pytest.raises(ReportError):
        write_report(tmp_path)
