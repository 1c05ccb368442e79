"""The `hivemoe` command line: a subcommand for each thing a user does with a network or a run.

    hivemoe train [configs/tiny.yaml] [key=value ...]   # same as `python train.py ...`: the whole local network
    hivemoe fetch [--slice]                            # download the subnets' pinned corpora once
    hivemoe status --initial-peers MADDR [--watch]     # a live table of a running network, read from its DHT
    hivemoe eval RUN_DIR --data FILE [--json]          # score a finished run's models on your own text, offline
    hivemoe generate "To be, or " --run RUN_DIR        # sample from a run's mixture (or live: --peers MADDR)
    hivemoe report RUN_DIR                             # plots and a self-contained report.html for a run
    hivemoe export RUN_DIR --model dense --out DIR     # a run's model as a Hugging Face checkpoint (extra: hf)
    hivemoe ledger verify PATH | hivemoe ledger show PATH

`hivemoe COMMAND --help` explains each. A failure is one `error:` line and a non-zero exit; `hivemoe --debug COMMAND
...` shows the traceback instead. Subnet declarations are a plugin package (`subnets` by default, `$HIVEMOE_SUBNETS`
to use another), looked up by name at run time so the library itself never depends on which domains exist.
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("moe.cli.train_command", "run train.py: the whole local network, or one node of a network"),
    "fetch": ("moe.cli.fetch_command", "download the subnets' pinned corpora once (then everything runs offline)"),
    "status": ("moe.cli.status_command", "live table of a running network: experts, validators, ledger head"),
    "eval": ("moe.cli.eval_command", "score a finished run's experts, mixture, baselines and students on a file"),
    "generate": ("moe.cli.generate_command", "sample text from a run's mixture, offline or live from the network"),
    "report": ("moe.cli.report_command", "write a run's plots and a self-contained report.html"),
    "export": ("moe.cli.export_command", "export a run's model as a Hugging Face checkpoint"),
    "ledger": ("moe.cli.ledger_commands", "show or verify a reward ledger"),
}
USAGE = f"usage: hivemoe [--debug] {{{','.join(COMMANDS)}}} ..."


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip().splitlines()[0], "", USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:", "  --debug   show the traceback of an unexpected error", "  -h, --help  this help"]
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    """An exception as the one line a user reads: its first non-empty line, or its type when it has no message."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return first or type(e).__name__


def run_command(name: str, argv: list[str], debug: bool) -> int:
    """Run one subcommand; an unexpected exception is one `error:` line and exit 1 unless `debug`."""
    module, _ = COMMANDS[name]
    try:
        return importlib.import_module(module).main(argv) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:
        if debug:
            raise
        logging.getLogger("hivemoe").debug("hivemoe %s failed", name, exc_info=True)
        print(f"error: hivemoe {name}: {one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    if argv[:1] in (["-h"], ["--help"]):
        print(help_text())
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print(USAGE, file=sys.stderr)
        if argv:
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:], debug)


if __name__ == "__main__":
    sys.exit(main())
