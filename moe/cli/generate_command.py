"""`hivemoe generate PROMPT --peers MADDR ...`: sample text from the live network's mixture."""

from __future__ import annotations

import argparse
import sys

from moe.cli.subnet_plugin import declared_subnets


def main(argv: list[str]) -> int:
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

    declared = declared_subnets()
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
