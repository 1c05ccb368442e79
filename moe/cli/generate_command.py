"""`hivemoe generate PROMPT --run RUN_DIR | --peers MADDR ...`: sample text from a mixture, streamed as it comes.

    hivemoe generate "To be, or " --run runs/<id>                 # offline, from the run's checkpoints and gate
    hivemoe generate "To be, or " --peers /ip4/.../p2p/12D3Koo...  # live, from the network's experts

Both route once per `--reroute-every` bytes (probe, gate, top-k on the last `--context` bytes) and then step each
chosen expert's KV cache one byte at a time (moe.routing.generation): offline the experts and the seed (the
generalist) run in this process, live each chosen expert keeps an inference session on its server. `--stateless`
re-routes and re-runs the whole context for every byte instead (the old path, for comparison).
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

from moe.cli.subnet_plugin import declared_subnets


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="hivemoe generate", description="Sample text from a run's or the network's mixture."
    )
    p.add_argument("prompt")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", default="", help="a finished run's directory (offline, from its checkpoints)")
    source.add_argument("--peers", nargs="+", help="multiaddrs of peers in a live network")
    p.add_argument("--subnets", default="", help="comma-separated subnet names (default: all declared)")
    p.add_argument("--max-new-bytes", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--context", type=int, default=128, help="bytes of context (<= the experts' max_seq_len)")
    p.add_argument("--reroute-every", type=int, default=64, help="bytes generated between two routing decisions")
    p.add_argument("--stateless", action="store_true", help="re-route and re-run the whole context every byte")
    p.add_argument("--gate", default="", help="a router's saved gate directory (default with --run: RUN_DIR/router)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the experts to be discovered")
    args = p.parse_args(argv)
    if args.max_new_bytes < 0 or args.context < 1 or args.reroute_every < 1:
        print("error: --max-new-bytes must be >= 0, --context and --reroute-every >= 1", file=sys.stderr)
        return 2

    declared = declared_subnets()
    names = [s for s in args.subnets.split(",") if s] or list(declared)
    unknown = [n for n in names if n not in declared]
    if unknown:
        print(f"error: unknown subnet(s) {', '.join(unknown)}; known: {', '.join(declared)}", file=sys.stderr)
        return 2
    if args.run:
        return _offline(args, names)
    return _live(args, [declared[n].netuid for n in names])


def _stream(prompt: str, byte_iter) -> None:
    """Write the prompt, then each byte as it is sampled (UTF-8 sequences are printed once complete)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for b in byte_iter:
        text = utf8.decode(bytes([b]))
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write(utf8.decode(b"", final=True) + "\n")
    sys.stdout.flush()


def _live(args: argparse.Namespace, netuids: list[int]) -> int:
    from moe.net.join import BadMultiaddr, JoinError
    from moe.routing.remote import Mixture

    try:
        mixture = Mixture.from_dht(args.peers, netuids)
    except (BadMultiaddr, JoinError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.gate:
            mixture.load(args.gate)
        mixture.wait_for_experts(1, args.timeout)
        stream = mixture.stream(
            args.prompt,
            args.max_new_bytes,
            temperature=args.temperature,
            seed=args.seed,
            context_bytes=args.context,
            reroute_every=args.reroute_every,
            sessions=not args.stateless,
        )
        _stream(args.prompt, stream)
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        mixture.shutdown()
    return 0


def _offline(args: argparse.Namespace, names: list[str]) -> int:
    """Generate in-process from RUN_DIR's experts (of `names`), its seed as the generalist and its router's gate."""
    import torch

    from moe.evaluation.saved_run import load_saved_run
    from moe.roles.run_models import RunModelError
    from moe.routing.generation import GENERALIST, LocalSessions, generate_bytes, generate_stateless
    from moe.routing.mixing import local_caller
    from moe.routing.remote import serve_mix

    run = Path(args.run)
    gate_dir = Path(args.gate) if args.gate else run / "router"
    if not run.is_dir():
        print(f"error: no run directory at {run}", file=sys.stderr)
        return 1
    if not (gate_dir / "gate.json").is_file():
        print(f"error: {gate_dir} holds no saved gate (gate.json); the run's router never finished", file=sys.stderr)
        return 1
    try:
        saved = load_saved_run(run, gate_dir, baselines_and_students=False)
    except RunModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rc, gate = saved.router, saved.gate
    entries = [e for e in saved.entries if e.subnet in names]
    routed = {e.key for e in entries}
    models = {x.hotkey: x.model for x in saved.experts if x.hotkey in routed}
    seed = saved.seed if saved.generalist else None
    if not entries:
        print(f"error: the gate in {gate_dir} routes to no expert of {', '.join(names)}", file=sys.stderr)
        return 1
    context = min([args.context] + [m.config.max_seq_len for m in models.values()])
    call = local_caller(models)

    def generalist_logp(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(seed(x)[..., :256].float(), -1)

    def mix(x: torch.Tensor):
        return serve_mix(gate, x, entries, call, rc, generalist_logp if seed is not None else None)

    ids = list(args.prompt.encode())
    with torch.no_grad():
        if args.stateless:
            stream = generate_stateless(
                lambda x: mix(x).logp,
                ids,
                args.max_new_bytes,
                context_bytes=context,
                temperature=args.temperature,
                seed=args.seed,
            )
        else:
            local = LocalSessions(models | ({GENERALIST: seed} if seed is not None else {}), capacity=context)
            stream = generate_bytes(
                mix,
                local,
                ids,
                args.max_new_bytes,
                context_bytes=context,
                reroute_every=args.reroute_every,
                temperature=args.temperature,
                seed=args.seed,
                switch_alpha=rc.switch_alpha,
                gate_weight=rc.switch_gate_weight,
                generalist_share=rc.generalist_share if seed is not None else None,
            )
        _stream(args.prompt, stream)
    return 0
