"""The `hivemoe` command line.

    hivemoe fetch [--slice]                          # download the subnets' pinned corpora once
    hivemoe generate "To be, or " --peers MADDR      # sample from the live network's mixture
    hivemoe ledger verify PATH | hivemoe ledger show PATH
    hivemoe export RUN_DIR --model dense --out DIR   # a run's model as a Hugging Face checkpoint (extra: hf)

Subnet declarations are a plugin package (`subnets` by default, `$HIVEMOE_SUBNETS` to use another), looked up by
name at run time so the library itself never depends on which domains exist.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _subnets_package():
    return importlib.import_module(os.environ.get("HIVEMOE_SUBNETS", "subnets"))


def cmd_fetch(argv: list[str]) -> int:
    return importlib.import_module(f"{_subnets_package().__name__}.fetch").main(argv)


def cmd_ledger(argv: list[str]) -> int:
    from moe.cli.ledger_commands import main as ledger_main

    return ledger_main(argv)


def cmd_export(argv: list[str]) -> int:
    from moe.cli.export_command import main as export_main

    return export_main(argv)


def cmd_generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hivemoe generate", description="Sample text from the live network's mixture.")
    p.add_argument("prompt")
    p.add_argument("--peers", required=True, nargs="+", help="multiaddrs of peers in the network")
    p.add_argument("--subnets", default="", help="comma-separated subnet names (default: all declared)")
    p.add_argument("--max-new-bytes", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--context", type=int, default=128, help="bytes of context per step (<= the experts' max_seq_len)")
    p.add_argument("--gate", default="", help="a router's saved gate directory (e.g. runs/<id>/router)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the experts to be discovered")
    args = p.parse_args(argv)

    from moe.net.join import BadMultiaddr, JoinError
    from moe.routing.remote import Mixture

    declared = _subnets_package().all_subnets()
    names = [s for s in args.subnets.split(",") if s] or list(declared)
    unknown = [n for n in names if n not in declared]
    if unknown:
        print(f"error: unknown subnet(s) {', '.join(unknown)}; known: {', '.join(declared)}", file=sys.stderr)
        return 2
    try:
        mixture = Mixture.from_dht(args.peers, [declared[n].netuid for n in names])
    except (BadMultiaddr, JoinError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.gate:
            mixture.load(args.gate)
        mixture.wait_for_experts(1, args.timeout)
        out = mixture.generate(
            args.prompt, args.max_new_bytes, temperature=args.temperature, context_bytes=args.context
        )
        sys.stdout.write(args.prompt + out.decode("utf-8", errors="replace") + "\n")
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        mixture.shutdown()
    return 0


COMMANDS = {"fetch": cmd_fetch, "generate": cmd_generate, "ledger": cmd_ledger, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print(f"usage: hivemoe {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
