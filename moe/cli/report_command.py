"""`hivemoe report RUN_DIR [--no-plots]`: a finished run's plots and one self-contained report.html.

    hivemoe report runs/20261130-051136
    xdg-open runs/20261130-051136/report.html

Writes `RUN_DIR/plots/*.png` (each skipped, with the reason logged and shown in the report, when the run lacks its
data) and `RUN_DIR/report.html` (CSS and images inline, no script, no external URL), then prints the report's path;
`--no-plots` writes the report's tables only.
Exit status 0 on success, 1 with one `error:` line on stderr when RUN_DIR or its summary.json is missing or
unreadable or the report cannot be written, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe.report.run_data import ReportError, load_summary


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="hivemoe report", description="Write a run's plots and a self-contained report.")
    p.add_argument("run_dir", type=Path, help="a finished run directory (runs/<id>)")
    p.add_argument("--no-plots", action="store_true", help="tables only: draw no plots and embed none")
    args = p.parse_args(argv)

    try:
        load_summary(args.run_dir)  # fail in one line before drawing anything
        from moe.report.html import write_report

        if not args.no_plots:
            from moe.report.plots import write_plots

            write_plots(args.run_dir)
        path = write_report(args.run_dir, include_plots=not args.no_plots)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write the report into {args.run_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
