"""The local network: every role of a decentralized run as its own OS process on this machine.

A bootstrap DHT peer (this process), then the seed node (trains and publishes the shared seed), the miners (one
expert node per subnet, or the `miners` list: several on one subnet compete for its emission; each fetches the seed
over hivemind, trains its specialist while serving it), the solo and dense baselines, the router (discovers the
experts in the DHT and mixes a first sample of traffic, whose signed receipts it publishes), the validators, who
score the experts and re-check that traffic, and whose weights (committed, then revealed) the ledger hosted here
turns into consensus and pays out, each domain on its own ledger subnet; then the router drops the experts the
validators flagged and trains the gate through remote calls, and once it is trained one distiller per student learns
from the mixture. The nodes talk only over hivemind; this process only starts them, shows their progress, and writes
the summary from their results.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from moe.config_checks import require_positive
from moe.config_loader import to_dict
from moe.corpus import SourceUnavailable
from moe.corpus.tokens import subnet_folder
from moe.fileio import write_json
from moe.roles.layout import GATE, PUBLISHED, RESULT, SERVING, TRAFFIC, RunLayout
from moe.roles.miners import entry_subnet, parse_miners
from moe.roles.node import PARENT_PID_VAR, StatusBoard, wait_for_stop
from moe.roles.summary import build_summary, print_summary

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class PhaseTimeouts:
    """How long the local network waits for each phase before it calls the run failed (generous: a slow machine
    must not fail a healthy run; a dead node fails it at once, whatever these say)."""

    seed_seconds: float = 3600.0
    """Training and publishing the seed."""
    experts_seconds: float = 7200.0
    """Every expert trained and serving."""
    adversaries_seconds: float = 600.0
    """Every adversary registered and serving."""
    router_seconds: float = 3600.0
    """Training and scoring the gate."""
    validators_seconds: float = 3600.0
    """Every validator through its epochs."""
    payout_seconds: float = 60.0
    """The ledger epoch that pays out the last weights, on top of its own blocks."""
    baselines_seconds: float = 7200.0
    """The baselines, which train alongside everything else."""
    students_seconds: float = 3600.0
    """The distillers, from the router's trained gate to their students' results."""
    stop_seconds: float = 20.0
    """A node's grace between SIGTERM and SIGKILL at the end."""
    interrupted_stop_seconds: float = 3.0
    """The same grace when the run is interrupted (Ctrl-C, SIGTERM): short, as whoever stops it expects every process
    gone within seconds."""

    def __post_init__(self):
        require_positive(self, vars(self))


class NodeFailed(RuntimeError):
    """A node of the local network exited before finishing its work."""


class Nodes:
    """Child processes of the local network, each logging to `<run_dir>/logs/<name>.out`.

    Each node leads its own session, so a terminal's Ctrl-C reaches only this process, which stops them in order
    (`stop_all`); a node whose parent dies without doing so exits by itself (`moe.roles.node.exit_with_parent`).
    """

    def __init__(self, layout: RunLayout, entry: Path, base: list[str]):
        self.layout, self.entry, self.base = layout, entry, base
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, str(self.entry), str(self.layout.config), *self.base, *args]
        log = open(self.layout.node_output(name), "w")
        env = {**os.environ, **(env or {}), PARENT_PID_VAR: str(os.getpid())}  # it exits when this process dies
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        logger.info("started %s (pid %d): %s", name, self.procs[name].pid, " ".join(cmd))

    def check(self, names: list[str]) -> None:
        for name in names:
            code = self.procs[name].poll()
            if code is not None and code != 0:
                tail = self.layout.node_output(name).read_text(errors="replace").strip().splitlines()[-3:]
                raise NodeFailed(f"{name} exited with code {code}: {' | '.join(tail)} (see logs/{name}.out)")

    def wait_for(self, names: list[str], done: Callable[[str], bool], timeout: float, display=None) -> None:
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

    def stop_all(self, grace_seconds: float) -> None:
        """Stop every node: SIGTERM, up to `grace_seconds` to close its DHT, server and p2pd, then SIGKILL to all that
        is left in its process group, which its DHT process and p2pd daemons share; so nothing outlives the network.
        Interrupted meanwhile (a second Ctrl-C), it kills at once rather than leave orphans."""
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for p in running.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        try:
            while time.monotonic() < deadline and not all(map(_exited, running.values())):
                time.sleep(0.1)
        finally:
            for name, p in running.items():
                if not _exited(p):
                    logger.warning("%s still running %.0fs after SIGTERM; killing it", name, grace_seconds)
                _kill_group(p)


def _exited(p: subprocess.Popen) -> bool:
    """Whether `p` has exited, without reaping it: while it is unreaped its pid, which is also the id of its process
    group, cannot be reused, so killing that group later cannot hit a stranger's processes."""
    return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group a node leads (it was started in a new session), then reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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


def run_network(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout, entry: Path) -> int:
    from rich.console import Console

    from moe.net.join import start_bootstrap_dht, visible_maddrs

    console = Console(stderr=True)
    cfg.subnets = available_subnets(cfg, subnets)
    cfg.miners = [m for m in cfg.miners if entry_subnet(m) in cfg.subnets]
    if len(cfg.subnets) < 2:
        console.print("[red]error:[/red] a mixture needs at least two subnets with data")
        return 2
    resolved = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    layout.config.write_text(resolved)
    console.print(f"[bold]hivemoe[/bold] local network, run [cyan]{cfg.run_id}[/cyan] in {layout.root}")
    console.print(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None), style="dim", highlight=False)

    t0 = time.time()
    tm = cfg.timeouts
    dht = start_bootstrap_dht(host=cfg.network.host, port=cfg.network.port)
    peers = visible_maddrs(dht, cfg.network.host)
    write_json(layout.bootstrap, {"initial_peers": peers})
    base = [f"run_id={cfg.run_id}", f"out_dir={cfg.out_dir}", f"initial_peers={','.join(peers)}"]
    host, validators = _start_ledger(cfg, subnets, layout, dht, base)
    nodes = Nodes(layout, entry, base)
    display = _Display(layout, console)
    interrupted = False
    try:
        nodes.start("seed", ["role=seed"], _child_env(0))
        nodes.wait_for(["seed"], lambda n: (layout.seed / PUBLISHED).exists(), tm.seed_seconds, display)
        miners = parse_miners(cfg.miners, cfg.subnets)
        experts = {f"expert-{m.name}": m.name for m in miners}
        for i, m in enumerate(miners):
            nodes.start(f"expert-{m.name}", ["role=expert", f"subnet={m.subnet}", f"miner={m.name}"], _child_env(i))
        baselines = {}
        if cfg.baselines:
            for kind in ("dense", "solo"):
                baselines[f"baseline-{kind}"] = kind
                nodes.start(f"baseline-{kind}", ["role=baseline", f"baseline={kind}"], _child_env(len(experts)))
        serving = lambda n: (layout.expert(experts[n]) / SERVING).exists()
        nodes.wait_for(list(experts), serving, tm.experts_seconds, display)
        adversaries = {f"expert-{cfg.subnets[0]}-{kind}": kind for kind in cfg.adversaries}
        for name, kind in adversaries.items():  # after the honest experts registered
            nodes.start(name, ["role=adversary", f"subnet={cfg.subnets[0]}", f"adversary={kind}"], _child_env(0))
        adversary_done = lambda n: (layout.adversary(adversaries[n]) / RESULT).exists()
        nodes.wait_for(list(adversaries), adversary_done, tm.adversaries_seconds, display)
        # the router first mixes some traffic, which the validators then check (moe.poi.traffic_check)
        nodes.start("router", ["role=router", "router_awaits_validators=true"], _child_env(0))
        nodes.wait_for(["router"], lambda n: (layout.router / TRAFFIC).exists(), tm.router_seconds, display)
        for name, (key, stake) in validators.items():
            args = ["role=validator", f"validator.stake_tao={stake}", f"hotkey_path={key}"]
            nodes.start(name, args, _child_env(0))
        nodes.wait_for(list(validators), lambda n: nodes.procs[n].poll() == 0, tm.validators_seconds, display)
        if host is not None:  # one more ledger epoch: the last weights are paid out and the router reads them
            tempo = cfg.ledger_host.tempo
            paid = lambda f: f.height >= (f.last_weights_height // tempo + 1) * tempo
            host.wait(paid, tm.payout_seconds + tempo * cfg.ledger_host.block_interval_seconds)
        write_json(layout.validated, {"validators": sorted(validators)})
        students = _start_distillers(cfg, nodes, layout, display)
        nodes.wait_for(["router"], lambda n: (layout.router / RESULT).exists(), tm.router_seconds, display)
        baseline_done = lambda n: (layout.baseline(baselines[n]) / RESULT).exists()
        nodes.wait_for(list(baselines), baseline_done, tm.baselines_seconds, display)
        student_done = lambda n: (layout.student(students[n]) / RESULT).exists()
        nodes.wait_for(list(students), student_done, tm.students_seconds, display)
        if students and host is not None:
            _wait_for_distill_credits(layout, host, list(students.values()), tm.payout_seconds)
            _wait_for_settlements(layout, host, list(students.values()), tm.payout_seconds)
    except NodeFailed as e:
        display.stop()
        console.print(f"[red]error:[/red] {e}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (moe.roles.node.Stopped)
        interrupted = True
        display.stop()
        console.print("[yellow]interrupted:[/yellow] stopping every node")
        raise
    finally:
        display.stop()
        _stop_network(nodes, host, dht, tm, interrupted)
        if host is not None:
            write_json(layout.ledger_rejections, [list(r) for r in host.rejected])
    summary = build_summary(cfg, layout, wall_seconds=time.time() - t0)
    write_json(layout.summary, summary)
    _write_report_and_wandb(cfg, layout, summary)
    print_summary(summary, console)
    console.print(f"summary: {layout.summary}")
    return 0


def _start_distillers(cfg: RunConfig, nodes: Nodes, layout: RunLayout, display) -> dict[str, str]:
    """Once the router's gate is trained, one distiller per student kind (they learn from the mixture as the router
    serves it, trained gate included). Returns {node name: student kind}."""
    students = {f"distiller-{kind}": kind for kind in cfg.students}
    if students:
        gate_ready = lambda n: (layout.router / GATE).exists()
        nodes.wait_for(["router"], gate_ready, cfg.timeouts.router_seconds, display)
        for name, kind in students.items():
            nodes.start(name, ["role=distiller", f"student={kind}"], _child_env(0))
    return students


def _wait_for_distill_credits(layout: RunLayout, host, kinds: list[str], timeout: float) -> None:
    """Wait until the ledger holds each distiller's last signed credits (its result names their epoch)."""
    last = awaited_distill_epochs([json.loads((layout.student(k) / RESULT).read_text()) for k in kinds])
    if not last:
        return

    def recorded(h) -> bool:
        return h.ledger is not None and all(h.ledger.state.distill.get(k, (-1, {}))[0] >= e for k, e in last.items())

    if not host.wait(recorded, timeout):
        logger.warning("the ledger did not record every distiller's last credits within %.0f s", timeout)


def awaited_distill_epochs(results: list[dict]) -> dict[str, int]:
    """Distiller hotkey → the last epoch of credits it sent the ledger, for the distillers that sent any: one whose
    teacher windows were all paid by another (a shared cache) credits nobody and sends no record."""
    return {r["distiller"]: r["distill_epoch"] for r in results if r.get("distill_positions")}


def _wait_for_settlements(layout: RunLayout, host, kinds: list[str], timeout: float) -> None:
    """Wait until the ledger has settled what each paying distiller owes each expert (its result names the amounts:
    the experts' settlers claim them once the distillers' closing tickets arrive)."""
    owed = {}
    for k in kinds:
        r = json.loads((layout.student(k) / RESULT).read_text())
        owed.update({(r["distiller"], e): a for e, a in (r.get("spent_rao") or {}).items() if a > 0})
    if not owed:
        return

    def settled(h) -> bool:
        return h.ledger is not None and all(h.ledger.state.settled.get(p, (0, 0, 0))[2] >= a for p, a in owed.items())

    if not host.wait(settled, timeout):
        logger.warning("the ledger did not settle every distiller's payments within %.0f s", timeout)


def _write_report_and_wandb(cfg: RunConfig, layout: RunLayout, summary: dict) -> None:
    """The run's plots and report.html, then the network's own wandb runs (ledger history, tables, plot images).
    A problem here is logged and never fails a run whose results are already written."""
    from moe.training.run_tables import log_network_summary

    plots: list[Path] = []
    try:
        from moe.report import write_plots, write_report  # matplotlib: a broken install costs the report only

        plots = write_plots(layout.root)
        logger.info("report: %s", write_report(layout.root))
    except Exception:
        logger.warning("report not written", exc_info=True)
    log_network_summary(cfg, layout, summary, plots)


def _stop_network(nodes: Nodes, host, dht, tm: PhaseTimeouts, interrupted: bool) -> None:
    """Stop the nodes, then the ledger feed and the bootstrap DHT.

    Interrupted, the nodes get a short grace, and the last two are left to this process's exit
    (`moe.roles.node.exit_now`): a terminal's Ctrl-C kills the bootstrap's p2pd too, so their orderly stops would
    wait out DHT timeouts (6 s measured). The exit terminates the DHT process, which takes its p2pd along, and ends
    the ledger thread, whose SQLite file survives that by design.
    """
    if interrupted:
        nodes.stop_all(tm.interrupted_stop_seconds)
        return
    nodes.stop_all(tm.stop_seconds)
    if host is not None:
        host.stop()
    dht.shutdown()


def _start_ledger(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout, dht, base: list[str]):
    """Host the ledger in this process when the run has validators: their keys, a genesis with one ledger subnet per
    domain (each owned by its own key, which takes the owner's cut) funding their stakes, and the DHT host; children
    are told to register. Returns (host or None, {validator name: (key path, stake TAO)})."""
    if not cfg.validator_stakes_tao:
        return None, {}
    from moe.identity import Hotkey
    from moe.ledger import RAO_PER_TAO
    from moe.net.ledger_host import LedgerHost, local_genesis

    lh = cfg.ledger_host
    validators, balances = {}, {}
    for k, stake in enumerate(cfg.validator_stakes_tao):
        key = layout.key(f"validator-{k}")
        balances[Hotkey.load_or_create(key).address] = int(round(stake * RAO_PER_TAO))
        validators[f"validator-{k}"] = (key, stake)
    if cfg.router.escrow_tao > 0:  # the mixture's consumers start with what they deposit in escrow
        for name in ["router", *(f"distiller-{kind}" for kind in cfg.students)]:
            balances[Hotkey.load_or_create(layout.key(name)).address] = int(round(cfg.router.escrow_tao * RAO_PER_TAO))
    hotkey = Hotkey.load_or_create(layout.key("ledger"))
    owners = {subnets[s].netuid: Hotkey.load_or_create(layout.key(f"owner-{s}")).address for s in cfg.subnets}
    genesis = local_genesis(lh, sorted(owners), balances, owners)
    seed_publisher = Hotkey.load_or_create(cfg.hotkey_path or layout.key("seed")).address  # the seed node's key
    host = LedgerHost(
        dht, layout.ledger, genesis, hotkey, lh.block_interval_seconds, seed_publisher=seed_publisher
    ).start()
    base += ["ledger.enabled=true", f"ledger.host={hotkey.address}"]
    return host, validators


class _Display:
    """A live table of every node's phase and progress (a plain line every 30 s when not on a terminal)."""

    def __init__(self, layout: RunLayout, console):
        self.layout, self.console = layout, console
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
        for name, st in StatusBoard.read_all(self.layout.status).items():
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
            states = StatusBoard.read_all(self.layout.status)
            line = ", ".join(f"{n}: {s.get('phase')} {s.get('step', '')}" for n, s in states.items())
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {line}", highlight=False)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def run_bootstrap(cfg: RunConfig, layout: RunLayout) -> int:
    """A bare DHT peer others join: the first node of a network spread over machines."""
    from moe.net.join import start_bootstrap_dht, visible_maddrs

    dht = start_bootstrap_dht(host=cfg.network.host, port=cfg.network.port)
    peers = visible_maddrs(dht, None)
    write_json(layout.bootstrap, {"initial_peers": peers})
    print("bootstrap peer ready; other nodes join with:")
    print(json.dumps(peers))
    sys.stdout.flush()
    wait_for_stop()
    dht.shutdown()
    return 0
