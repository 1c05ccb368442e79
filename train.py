"""hivemoe's main entry: a whole local network by default, or one node of a network spread over machines.

    python train.py                                     # the full local network on the default data (CPU demo)
    python train.py configs/tiny.yaml                   # the same in seconds (what the tests run)
    python train.py role=expert subnet=english          # train one specialist alone
    python train.py role=expert subnet=code initial_peers=/ip4/10.0.0.1/tcp/31337/p2p/12D3Koo...
    python train.py configs/gpu.yaml                    # a real run on CUDA GPUs

Arguments are YAML files and `key=value` overrides (nested keys dotted: `router.k_best=4`); a wrong key or type is a
one-line error before any work starts. Every run writes under `<out_dir>/<run_id>/` (see moe/roles/layout.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # data comes from the local cache; nothing is downloaded here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from moe.config_loader import ConfigError, parse_args  # noqa: E402
from moe.roles.layout import RunLayout, new_run_id  # noqa: E402
from moe.roles.node import Stopped, exit_now, exit_on_sigterm, exit_with_parent, setup_logging  # noqa: E402
from moe.roles.run_config import RunConfig  # noqa: E402
from subnets import all_subnets  # noqa: E402


def main(argv: list[str]) -> int:
    # config: configs/default.yaml unless a file is given, then overrides; all validated before any work
    if not any(a.endswith((".yaml", ".yml")) for a in argv):
        argv = [str(Path(__file__).resolve().parent / "configs" / "default.yaml"), *argv]
    try:
        cfg = parse_args(RunConfig, argv)
        subnets = all_subnets()
        unknown = [s for s in [*cfg.subnets, *([cfg.subnet] if cfg.subnet else [])] if s not in subnets]
        if unknown:
            raise ConfigError(f"unknown subnet(s) {', '.join(unknown)}; known: {', '.join(subnets)}")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    cfg.run_id = cfg.run_id or new_run_id()
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    setup_logging(layout.logs, node_name(cfg))
    exit_on_sigterm()  # SIGTERM unwinds like Ctrl-C: each role's `finally` closes its DHT process and p2pd
    exit_with_parent()  # a node of the local network does not outlive it
    try:
        return run_role(cfg, subnets, layout)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, after the role's `finally` blocks ran
        print(f"{node_name(cfg)} stopped", file=sys.stderr)
        exit_now(128 + (signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT))
    except Exception as e:
        if not isinstance(e, _one_line_errors()):
            raise
        logging.getLogger("train").info("%s failed", node_name(cfg), exc_info=True)  # the traceback: log file only
        print(f"error: {e}", file=sys.stderr)
        return 1


def node_name(cfg: RunConfig) -> str:
    """The name a node logs under: its role, with its subnet and attack where it has them."""
    if cfg.role == "expert":
        return f"expert-{cfg.subnet}"
    if cfg.role == "adversary":
        return f"expert-{cfg.subnet}-{cfg.adversary}"
    if cfg.role == "distiller":
        return f"distiller-{cfg.student}"
    if cfg.role == "validator" and cfg.hotkey_path:
        return Path(cfg.hotkey_path).stem  # several validators of one run log apart
    return cfg.role


def _one_line_errors() -> tuple[type[Exception], ...]:
    """Failures a user causes or can fix (bad address, unreachable peers, bad checkpoint, seed or key file, data that
    cannot be fetched or fails its pin): no traceback.

    Imported only when something failed, so a run that never touches the network never imports hivemind here.
    """
    from moe.corpus.archives import CorpusError
    from moe.identity import IdentityError
    from moe.net.join import BadMultiaddr, JoinError
    from moe.net.seed_transfer import SeedError
    from moe.roles.run_models import RunModelError
    from moe.training.checkpoint import CheckpointError

    return (JoinError, BadMultiaddr, CheckpointError, SeedError, IdentityError, CorpusError, RunModelError)


def run_role(cfg: RunConfig, subnets: dict, layout: RunLayout) -> int:
    if cfg.role == "network":
        from moe.roles.network import run_network

        return run_network(cfg, subnets, layout, entry=Path(__file__).resolve())
    if cfg.role == "bootstrap":
        from moe.roles.network import run_bootstrap

        return run_bootstrap(cfg, layout)
    if cfg.role == "seed":
        from moe.roles.seed import run_seed

        return run_seed(cfg, subnets, layout)
    if cfg.role == "expert":
        from moe.roles.expert import run_expert

        return run_expert(cfg, subnets, layout)
    if cfg.role == "adversary":
        from moe.roles.adversary import run_adversary

        return run_adversary(cfg, subnets, layout)
    if cfg.role == "baseline":
        from moe.roles.baseline import run_baseline

        return run_baseline(cfg, subnets, layout, cfg.baseline, n_experts=len(cfg.subnets))
    if cfg.role == "router":
        from moe.roles.router import run_router

        return run_router(cfg, subnets, layout)
    if cfg.role == "validator":
        from moe.roles.validator import run_validator

        return run_validator(cfg, subnets, layout)
    if cfg.role == "distiller":
        from moe.roles.distiller import run_distiller

        return run_distiller(cfg, subnets, layout)
    raise AssertionError(cfg.role)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
