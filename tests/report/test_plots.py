"""Tests for moe/report/plots.py: every plot with its data present, and a skipped plot (never a crash) without."""

from __future__ import annotations

import json
import shutil

from moe.report.plots import PLOTS, write_plots

from .conftest import synthetic_summary, write_run

PNG = b"\x89PNG\r\n\x1a\n"


def index(run_dir) -> dict:
    return json.loads((run_dir / "plots" / "index.json").read_text())


def test_every_plot_is_drawn_for_a_complete_run(run_dir):
    """A run with metrics, routing, rewards, a ledger and adversaries gets all six plots, each a PNG."""
    paths = write_plots(run_dir)
    assert [p.name for p in paths] == list(PLOTS)
    assert all(p.read_bytes().startswith(PNG) for p in paths)
    assert index(run_dir)["skipped"] == {}


def test_missing_pieces_skip_only_their_plots(tmp_path):
    """Without metrics, routing, validation, ledger and adversaries, only the bits-per-byte plot is drawn; every
    other plot is skipped with a reason, and stale plots from an earlier report are removed."""
    summary = synthetic_summary()
    summary["experts"] = [e for e in summary["experts"] if not e["adversary"]]
    for key in ("contribution", "rewards", "flags", "validators", "ledger", "solo_baseline", "dense_baseline"):
        summary.pop(key)
    summary["mixture"].pop("routing")
    run = write_run(tmp_path / "run", summary)
    for piece in ("metrics", "validators"):
        shutil.rmtree(run / piece)
    (run / "ledger.sqlite").unlink()
    (run / "plots").mkdir()
    (run / "plots" / "routing.png").write_bytes(PNG)  # left by an earlier report
    assert [p.name for p in write_plots(run)] == ["bpb_per_subnet.png"]
    skipped = index(run)["skipped"]
    assert set(skipped) == set(PLOTS) - {"bpb_per_subnet.png"}
    assert all(skipped.values())
    assert not (run / "plots" / "routing.png").exists()


def test_corrupt_files_cost_their_plot_only(run_dir):
    """A corrupt ledger and garbage metric files are skipped plots; the others are still drawn."""
    (run_dir / "ledger.sqlite").write_bytes(b"\x00garbage" * 512)
    for f in (run_dir / "metrics").glob("*.jsonl"):
        f.write_text("{{{\n[]\n")
    written = {p.name for p in write_plots(run_dir)}
    assert written == set(PLOTS) - {"ledger.png", "training_loss.png"}
    assert set(index(run_dir)["skipped"]) == {"ledger.png", "training_loss.png"}


def test_corrupt_summary_still_plots_training_loss(run_dir):
    """With summary.json unreadable, the training loss (from metric lines) is still drawn; the rest is skipped."""
    (run_dir / "summary.json").write_text('{"experts": [')
    assert [p.name for p in write_plots(run_dir)] == ["training_loss.png"]
    assert all("summary.json" in why for why in index(run_dir)["skipped"].values())


def test_malformed_fields_and_mathtext_do_not_crash(run_dir):
    """Wrong types in summary fields and `$` in peer-supplied names (matplotlib mathtext) never raise."""
    summary = synthetic_summary()
    summary["experts"][0]["subnet"] = "$\\frac{$"
    summary["experts"].append("not an expert")
    summary["rewards"] = {"x": "lots", **summary["rewards"]}
    summary["mixture"]["routing"]["eval"]["code$"] = {"$$": "nan"}
    summary["students"] = "none"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    write_plots(run_dir)
    assert not any(why.startswith("failed") for why in index(run_dir)["skipped"].values())
