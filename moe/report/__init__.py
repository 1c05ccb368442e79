"""A finished run's plots and its self-contained `report.html` (`hivemoe report RUN_DIR`).

from moe.report import write_plots, write_report
write_plots(run_dir)     # run_dir/plots/*.png, each skipped with a logged reason when its data is absent
write_report(run_dir)    # run_dir/report.html, images inlined
"""

from __future__ import annotations

from moe.report.html import write_report
from moe.report.plots import write_plots
from moe.report.run_data import ReportError

__all__ = ["ReportError", "write_plots", "write_report"]
