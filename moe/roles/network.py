"""The local network: every role of a decentralized run as its own OS process on this machine.

A bootstrap DHT peer (this process), then the seed node (trains and publishes the shared seed), one expert node per
subnet (each fetches the seed over hivemind, trains its specialist while serving it), the solo and dense baselines,
and the router (discovers the experts in the DHT and trains the gate through remote calls). The nodes talk only
over hivemind; this process only starts them, shows their progress, and writes the summary from their results.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from moe.config_loader import to_dict
from moe.corpus import SourceUnavailable, Subnet
from moe.roles.adversary import adversary_dir
from moe.roles.baseline import baseline_dir
from moe.roles.expert import expert_dir
from moe.roles.layout import StatusBoard, subnet_folder, write_json
from moe.roles.router import router_dir
from moe.roles.run_config import RunConfig
from moe.roles.seed import seed_dir, wait_for_stop
from moe.roles.summary import build_summary, print_summary

logger = logging.getLogger(__name__)


class NodeFailed(RuntimeError):
    """A node of the local network exited before finishing its work."""


class Nodes:
    """Child processes of the local network, each logging to `<run_dir>/logs/<name>.out`."""

    def __init__(self, run_dir: Path, entry: Path, config_path: Path, base: list[str]):
        self.run_dir, self.entry, self.config_path, self.base = run_dir, entry, config_path, base
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, str(self.entry), str(self.config_path), *self.base, *args]
        log = open(self.run_dir / "logs" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        logger.info("started %s (pid %d): %s", name, self.procs[name].pid, " ".join(cmd))

    def check(self, names: list[str]) -> None:
        for name in names:
            code = self.procs[name].poll()
            if code is not None and code != 0:
                tail = (self.run_dir / "logs" / f"{name}.out").read_text(errors="replace").strip().splitlines()[-3:]
                raise NodeFailed(f"{name} exited with code {code}: {' | '.join(tail)} (see logs/{name}.out)")

    def wait_for(self, names: list[str], done, timeout: float, display=None) -> None:
        """Wait until `done(name)` holds for every name, raising NodeFailed if one of them dies first."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            self.check(pending)
            pending = [n for n in pending if not done(n)]
            if display is not None:
                display()
            if pending and time.monotonic() > deadline:
                raise NodeFailed(f"{', '.join(pending)} did not finish within {timeout:.0f}s")
            time.sleep(0.5)

    def stop_all(self, timeout: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM; killing it", name)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _child_env(index: int) -> dict[str, str]:
    """One CPU thread per node on CPU (the nodes share the cores); GPUs dealt out round-robin when present."""
    import torch

    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())
    return env


def available_subnets(cfg: RunConfig, subnets: dict[str, Subnet]) -> list[str]:
    """The configured subnets whose data is present or fetchable here; the others are skipped with a warning."""
    ok = []
    for name in cfg.subnets:
        try:
            subnet_folder(subnets[name], cfg.data)
            ok.append(name)
        except SourceUnavailable as e:
            logger.warning("subnet %s skipped: %s", name, e)
            print(f"warning: subnet {name} skipped: {e}", file=sys.stderr)
    return ok


def run_network(cfg: RunConfig, subnets: dict[str, Subnet], run_dir: Path, entry: Path) -> int:
    from rich.console import Console

    from moe.net.join import start_bootstrap_dht, visible_maddrs

    console = Console(stderr=True)
    cfg.subnets = available_subnets(cfg, subnets)
    if len(cfg.subnets) < 2:
        console.print("[red]error:[/red] a mixture needs at least two subnets with data")
        return 2
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    console.print(f"[bold]hivemoe[/bold] local network, run [cyan]{cfg.run_id}[/cyan] in {run_dir}")
    console.print(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None), style="dim", highlight=False)

    t0 = time.time()
    dht = start_bootstrap_dht(host=cfg.network.host, port=cfg.network.port)
    peers = visible_maddrs(dht, cfg.network.host)
    write_json(run_dir / "bootstrap.json", {"initial_peers": peers})
    base = [f"run_id={cfg.run_id}", f"out_dir={cfg.out_dir}", f"initial_peers={','.join(peers)}"]
    feed, validators = _start_ledger(cfg, run_dir, dht, base)
    nodes = Nodes(run_dir, entry, config_path, base)
    display = _Display(run_dir, console)
    try:
        nodes.start("seed", ["role=seed"], _child_env(0))
        nodes.wait_for(["seed"], lambda n: (seed_dir(run_dir) / "published.json").exists(), 3600, display)
        experts = [f"expert-{s}" for s in cfg.subnets]
        for i, s in enumerate(cfg.subnets):
            nodes.start(f"expert-{s}", ["role=expert", f"subnet={s}", "uid=0"], _child_env(i))
        baselines = []
        if cfg.baselines:
            for kind in ("dense", "solo"):
                nodes.start(f"baseline-{kind}", ["role=baseline", f"baseline={kind}"], _child_env(len(experts)))
                baselines.append(f"baseline-{kind}")
        nodes.wait_for(
            experts, lambda n: (expert_dir(run_dir, n.split("-", 1)[1]) / "serving.json").exists(), 7200, display
        )
        adversaries = [f"expert-{cfg.subnets[0]}-{kind}" for kind in cfg.adversaries]
        for kind, name in zip(cfg.adversaries, adversaries, strict=True):  # after the honest experts registered
            nodes.start(name, ["role=expert", f"subnet={cfg.subnets[0]}", f"adversary={kind}"], _child_env(0))
        adversary_done = lambda n: (adversary_dir(run_dir, n.rsplit("-", 1)[1]) / "result.json").exists()  # noqa: E731
        nodes.wait_for(adversaries, adversary_done, 600, display)
        nodes.start("router", ["role=router"], _child_env(0))
        nodes.wait_for(["router"], lambda n: (router_dir(run_dir) / "result.json").exists(), 3600, display)
        for name, (key, stake) in validators.items():
            nodes.start(name, ["role=validator", f"validator.stake={stake}", f"hotkey_path={key}"], _child_env(0))
        nodes.wait_for(list(validators), lambda n: nodes.procs[n].poll() == 0, 3600, display)
        if feed is not None:  # one more ledger epoch, so the last weights are paid out
            tempo = cfg.ledger.tempo
            paid = lambda f: f.height >= (f.last_weights_height // tempo + 1) * tempo  # noqa: E731
            feed.wait(paid, 60 + tempo * cfg.ledger.block_interval)
        nodes.wait_for(
            baselines, lambda n: (baseline_dir(run_dir, n.split("-", 1)[1]) / "result.json").exists(), 7200, display
        )
    except NodeFailed as e:
        display.stop()
        console.print(f"[red]error:[/red] {e}")
        return 1
    finally:
        display.stop()
        nodes.stop_all()
        if feed is not None:
            feed.stop()
        dht.shutdown()
    summary = build_summary(cfg, run_dir, wall_seconds=time.time() - t0)
    write_json(run_dir / "summary.json", summary)
    print_summary(summary, console)
    console.print(f"summary: {run_dir / 'summary.json'}")
    return 0


def _start_ledger(cfg: RunConfig, run_dir: Path, dht, base: list[str]):
    """Host the ledger in this process when the run has validators: their keys, a genesis funding their stakes, and
    the DHT feed; children are told to register. Returns (feed or None, {validator name: (key path, stake TAO)})."""
    if not cfg.validators:
        return None, {}
    from moe.identity import Hotkey
    from moe.ledger import RAO_PER_TAO
    from moe.net.ledger_host import LedgerHost, local_genesis

    lc = cfg.ledger
    validators, balances = {}, {}
    for k, stake in enumerate(cfg.validators):
        key = run_dir / "keys" / f"validator-{k}.key"
        balances[Hotkey.load_or_create(key).address] = int(round(stake * RAO_PER_TAO))
        validators[f"validator-{k}"] = (key, stake)
    host = Hotkey.load_or_create(run_dir / "keys" / "ledger.key")
    genesis = local_genesis(lc.netuid, lc.block_interval, lc.tempo, lc.difficulty, balances)
    feed = LedgerHost(dht, run_dir / "ledger.sqlite", genesis, host, lc.netuid, lc.block_interval).start()
    base += ["ledger.enabled=true", f"ledger.host={host.address}"]
    return feed, validators


class _Display:
    """A live table of every node's phase and progress (a plain line every 30 s when not on a terminal)."""

    def __init__(self, run_dir: Path, console):
        self.run_dir, self.console = run_dir, console
        self.live = None
        self.last_plain = 0.0
        if console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=console, refresh_per_second=2, transient=True)
            self.live.start()

    def _table(self):
        from rich.table import Table

        t = Table(title="nodes", expand=False)
        for col in ("node", "phase", "step", "loss", "eval bpb"):
            t.add_column(col)
        for name, st in StatusBoard.read_all(self.run_dir).items():
            step = f"{st.get('step', '')}/{st.get('steps', '')}" if "steps" in st else str(st.get("step", ""))
            loss = f"{st['loss']:.3f}" if isinstance(st.get("loss"), float) else ""
            bpb = f"{st['eval_bpb']:.3f}" if isinstance(st.get("eval_bpb"), float) else ""
            t.add_row(name, str(st.get("phase", "")), step, loss, bpb)
        return t

    def __call__(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
        elif time.time() - self.last_plain > 30:
            self.last_plain = time.time()
            states = StatusBoard.read_all(self.run_dir)
            line = ", ".join(f"{n}: {s.get('phase')} {s.get('step', '')}" for n, s in states.items())
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {line}", highlight=False)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def run_bootstrap(cfg: RunConfig, run_dir: Path) -> int:
    """A bare DHT peer others join: the first node of a network spread over machines."""
    from moe.net.join import start_bootstrap_dht, visible_maddrs

    dht = start_bootstrap_dht(host=cfg.network.host, port=cfg.network.port)
    peers = visible_maddrs(dht, None)
    write_json(run_dir / "bootstrap.json", {"initial_peers": peers})
    print("bootstrap peer ready; other nodes join with:")
    print(json.dumps(peers))
    sys.stdout.flush()
    wait_for_stop()
    dht.shutdown()
    return 0
