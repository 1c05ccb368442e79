"""`hivemoe eval RUN_DIR --data FILE [--json]`: a finished run's models scored on your own text, offline.

    hivemoe eval runs/<id> --data notes.txt
    hivemoe eval runs/<id> --data dump.bin --max-bytes 200000 --json | tail -n 1 | jq .mixture_bpb

Reads the run's saved experts, gate, seed, baselines and students (whichever it kept) and scores them in the run's
own windows on the first --max-bytes bytes of FILE (any bytes: UTF-8 or binary). Prints bits per byte of every
expert, the gated mixture, the best single expert, the seed, the baselines and the students, the mixture's worst
window, and each expert's Shapley contribution and share of the gate's weight on this text. With --json the last
line of stdout is one JSON object:

    {"mixture_bpb", "best_single_bpb", "worst_window_bpb", "seed_bpb", "baselines": {kind: bpb},
     "experts": {hotkey: {"subnet", "bpb", "contribution", "gate_share"}}, "students": {kind: {"bpb"}}}

Exit status 0 on success; 1 with one `error:` line on stderr for a missing, unfinished or corrupt run or an empty,
too short or unreadable file; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from moe.cli.console import table_console
from moe.evaluation.text_windows import DEFAULT_MAX_BYTES


def _table(scores, run_dir: str, data: str):
    """The human-readable summary: one row per model, experts with their contribution and gate share."""
    from rich.table import Table

    t = Table(title=f"bits per byte on {data} ({scores.scored_bytes:,} bytes, run {run_dir})")
    for name, justify in (("model", "left"), ("bpb", "right"), ("contribution", "right"), ("gate share", "right")):
        t.add_column(name, justify=justify)
    t.add_row("[bold]mixture[/bold]", f"{scores.mixture_bpb:.3f}", "", "")
    best = scores.experts[scores.best_single]
    t.add_row(f"best single ({best.subnet})", f"{scores.best_single_bpb:.3f}", "", "")
    for hk, e in scores.experts.items():
        t.add_row(f"expert {e.subnet} {hk[:8]}", f"{e.bpb:.3f}", f"{e.contribution:.1%}", f"{e.gate_share:.1%}")
    t.add_row("seed", f"{scores.seed_bpb:.3f}", "", "")
    for kind, bpb in scores.baselines.items():
        t.add_row(f"{kind} baseline", f"{bpb:.3f}", "", "")
    for kind, bpb in scores.students.items():
        t.add_row(f"{kind} student", f"{bpb:.3f}", "", "")
    return t


def main(argv: list[str]) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="hivemoe eval", description="Score a finished run's models on your own text.")
    p.add_argument("run_dir", help="a finished run directory (runs/<id>)")
    p.add_argument("--data", required=True, help="the text to score: any file, UTF-8 or binary")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object (and show no progress)")
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help=f"bytes of FILE scored (default {DEFAULT_MAX_BYTES})"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the run's own setting)")
    args = p.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from moe.evaluation.saved_run import load_saved_run
    from moe.evaluation.text_scores import score_text
    from moe.evaluation.text_windows import EvalTextError, read_text_tokens, window_count
    from moe.roles.run_models import RunModelError

    try:
        tokens = read_text_tokens(args.data, args.max_bytes)
        run = load_saved_run(args.run_dir)
        threads = run.train.cpu_threads if args.threads is None else args.threads
        if threads > 0:  # note: tiny models on a busy machine run many times faster on one thread than on several
            torch.set_num_threads(threads)
        err = Console(stderr=True)
        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"))
        quiet = args.json or not err.is_terminal
        with Progress(*columns, TimeRemainingColumn(), console=err, disable=quiet, transient=True) as bar:
            task = bar.add_task("scoring", total=window_count(len(tokens), run.train.seq_len))
            scores = score_text(run, tokens, on_batch=lambda n: bar.advance(task, n))
    except (RunModelError, EvalTextError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(scores.to_json(), allow_nan=False))
    else:
        table_console().print(_table(scores, args.run_dir, args.data))
        print(f"  mixture's worst window: {scores.worst_window_bpb:.2f} bits per byte ({scores.windows} windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
