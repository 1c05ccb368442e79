"""The router node: finds the experts in the DHT, trains the gate on the routing split, scores the mixture.

The gate learns from the mixture's own loss on held-out routing data (never the experts' training data, never the
validation data), through remote calls only: experts stay frozen and are reached over hivemind like any client
would reach them. The final gate, its expert slots and the mixture's bits per byte land in `<run_dir>/router/`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moe.corpus.batches import blended_batches_at_step, eval_windows
from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.ledger.emission import RAO_PER_TAO
from moe.metrics import score_sets
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import RESULT, ROUTING, TRAFFIC, RunLayout
from moe.roles.lm_job import shifted_sets
from moe.roles.miners import parse_miners
from moe.roles.node import StatusBoard, Stream
from moe.routing.remote import Mixture
from moe.routing.traffic import publish_traffic
from moe.routing.usage import RoutingTally
from moe.training.checkpoint import load_model_bytes
from moe.training.network_metrics import routing_metrics
from moe.training.tracking import Tracker

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)

TRAFFIC_TTL_SECONDS = 600.0
"""How long the router's published traffic sample lives in the DHT (re-published while it waits)."""


@dataclass
class MixtureScores:
    """The mixture on one family of window sets (each subnet's validation or shifted text)."""

    bpb: dict[str, float]
    """Bits per byte per subnet and `all`."""
    worst_window_bpb: float
    """The highest single-window score."""
    calls_per_byte: float
    """Remote expert distributions requested per byte scored."""
    routing: dict[str, dict[str, float]]
    """Input subnet → {expert hotkey: share of the gate's top-k selections} (moe.routing.usage)."""
    positions: int = 0
    """Bytes scored."""


def evaluate_mixture(mixture: Mixture, windows_by_subnet) -> MixtureScores:
    """The mixture as it serves, on each subnet's windows (the same windows every model of the run is scored on)."""
    answered, wanted, positions, calls = 0, 0, 0, 0
    tally = RoutingTally()

    def predict(x: torch.Tensor) -> torch.Tensor:
        nonlocal answered, wanted, positions, calls
        mix = tally.add(mixture.mix(x))
        answered += int(mix.answered[:, -1].sum())
        wanted += int(mix.chosen.sum())
        positions += x.numel()
        calls += mix.expert_positions
        return mix.logp

    bpb, worst = score_sets(predict, tally.track(windows_by_subnet))
    logger.info("chosen experts that answered: %d of %d", answered, wanted)
    calls_per_byte = calls / max(1, positions)
    return MixtureScores(
        bpb=bpb, worst_window_bpb=worst, calls_per_byte=calls_per_byte, routing=tally.shares(), positions=positions
    )


def price_trade(mixture: Mixture, windows: Callable[[], object], weights: list[float]) -> list[dict[str, float]]:
    """The quality/cost trade of price-aware routing: the mixture's bits per byte and the TAO it paid per million
    bytes scored, on the same windows (`windows()` gives them afresh), routing at each `router.price_weight` in
    `weights`; [] for a mixture that pays nobody."""
    if mixture.client.client.payer is None:
        return []
    base, out = mixture.rc, []
    try:
        for w in weights:
            mixture.rc = dataclasses.replace(base, price_weight=w)
            before = sum(mixture.spent().values())
            scores = evaluate_mixture(mixture, windows())
            tao = (sum(mixture.spent().values()) - before) / RAO_PER_TAO
            per_mbyte = tao / (scores.positions / 1e6) if scores.positions else 0.0
            out.append({"price_weight": w, "bpb": scores.bpb["all"], "tao_per_mbyte": per_mbyte})
    finally:
        mixture.rc = base
    return out


def load_generalist(cfg: RunConfig, dht) -> ByteLM:
    """The network's seed, fetched by hash over the DHT and verified (the ledger host's pinned seed in a ledger
    network): the generalist the mixture always includes."""
    from moe.net.ledger_client import pinned_seed_sha256
    from moe.net.seed_transfer import fetch_seed

    model = ByteLM(cfg.model)
    timeout = cfg.network.discovery_timeout_seconds
    blob = fetch_seed(dht, expected_sha256=pinned_seed_sha256(dht, cfg.ledger, timeout), timeout=timeout)
    load_model_bytes(model, blob, config_dict(cfg.model), source="the network's seed")
    return model


def run_router(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    rc = cfg.router
    status = StatusBoard(layout.status, "router")
    status.update(phase="joining", step=0, steps=rc.steps)
    netuids = [subnets[s].netuid for s in cfg.subnets]
    mixture = Mixture.from_dht(cfg.initial_peers, netuids, rc, cfg.network)
    try:
        status.update(phase="discovering")
        mixture.wait_for_experts(
            len(parse_miners(cfg.miners, cfg.subnets)), timeout=cfg.network.discovery_timeout_seconds
        )
        hotkey = Hotkey.load_or_create(cfg.hotkey_path or layout.key("router"))
        if rc.escrow_tao > 0 and cfg.ledger.enabled:
            from moe.roles.settlement import pay_as_consumer

            status.update(phase="funding escrow")
            pay_as_consumer(mixture, hotkey, cfg.ledger.host, rc.escrow_tao, cfg.ledger.register_timeout_seconds)
        if rc.generalist:
            mixture.set_generalist(load_generalist(cfg, mixture.dht))
        if rc.follow_validators and cfg.ledger.enabled:
            mixture.follow_ledger(cfg.ledger.host)
        seq_len = cfg.expert_train.seq_len
        route_tokens = [subnet_tokens(subnets[s], "route", cfg.data) for s in cfg.subnets]
        blend = blended_batches_at_step(route_tokens, seq_len, rc.batch_size, cfg.seed + Stream.ROUTER)(0)
        if rc.audit_twins:
            status.update(phase="auditing")
            audit = blended_batches_at_step(route_tokens, seq_len, rc.batch_size, cfg.seed + Stream.ROUTER_AUDIT)(0)
            (x, _), (donors, _) = next(audit), next(audit)
            mixture.audit_causality(x, donors, seed=cfg.seed + Stream.ROUTER_AUDIT)

        def publish(wait: bool = False) -> bool:
            return publish_traffic(mixture.dht, hotkey, mixture.traffic.records(), TRAFFIC_TTL_SECONDS, wait=wait)

        if cfg.router_awaits_validators:
            status.update(phase="serving traffic")
            stream = cfg.seed + Stream.ROUTER_TRAFFIC
            traffic = blended_batches_at_step(route_tokens, seq_len, rc.batch_size, stream)(0)
            t0 = time.perf_counter()
            for _ in range(rc.traffic_batches):
                mixture.mix(next(traffic)[0])
            t1 = time.perf_counter()
            publish(wait=True)  # validators start once it is in the DHT
            logger.info(
                "traffic: %d batches in %.1f s, published in %.1f s",
                rc.traffic_batches,
                t1 - t0,
                time.perf_counter() - t1,
            )
            write_json(layout.router / TRAFFIC, {"samples": len(mixture.traffic.records())})
            status.update(phase="waiting for validators")
            _wait_for(layout.validated, publish)
            if rc.follow_validators and cfg.ledger.enabled:
                mixture.follow_ledger(cfg.ledger.host)
        tracker = Tracker.for_node(cfg, layout.root, "router")
        status.update(phase="training gate")
        t0 = time.perf_counter()
        losses = mixture.train_gate(
            blend, rc.steps, on_step=lambda s, loss: _log_step(s, loss, status, tracker, rc.steps)
        )
        train_seconds = time.perf_counter() - t0
        mixture.save(layout.router)  # distillers start from the trained gate while the mixture is evaluated
        publish()
        status.update(phase="evaluating")
        val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets}
        t = cfg.expert_train
        in_dist = evaluate_mixture(mixture, eval_windows(val, t.seq_len, t.batch_size, t.eval_batches))
        shifted = evaluate_mixture(mixture, shifted_sets(cfg, subnets, t.seq_len, t.batch_size))
        eval_bpb = in_dist.bpb
        tracker.log(routing_metrics(in_dist.routing), step=rc.steps)  # router/load/<hotkey>, once gate is trained
        tracker.summary({f"eval/bpb/{k}": v for k, v in eval_bpb.items()})  # the same keys as every model's run
        tracker.summary({f"shifted/bpb/{k}": v for k, v in shifted.bpb.items()})
        tracker.summary({"router/calls_per_byte": in_dist.calls_per_byte, "router/train_seconds": train_seconds})
        tracker.finish()
        w = rc.price_weight or 1.0
        trade = price_trade(
            mixture, lambda: eval_windows(val, t.seq_len, t.batch_size, t.eval_batches), [0.0, w, 10 * w]
        )
        write_json(layout.router / ROUTING, {"eval": in_dist.routing, "shifted": shifted.routing})
        write_json(
            layout.router / RESULT,
            {
                "eval_bpb": eval_bpb,
                "shifted_bpb": shifted.bpb,
                "worst_window_bpb": shifted.worst_window_bpb,
                "calls_per_byte": {"eval": in_dist.calls_per_byte, "shifted": shifted.calls_per_byte},
                "generalist": mixture.generalist is not None,
                "switch_alpha": rc.switch_alpha,
                "gate_steps": rc.steps,
                "gate_final_loss": losses[-1] if losses else None,
                "train_seconds": train_seconds,
                "experts": [e.key for e in mixture.entries()],
                "distrusted": sorted(mixture.distrusted()),
                "flagged": mixture.flagged,
                "noncausal": sorted(mixture.noncausal),
                "trust": mixture.trust,
                "faults": [f"{f.peer_id}: {f.reason}" for f in mixture.faults()],
                "unreceipted": sorted(mixture.unreceipted),
                "traffic_samples": len(mixture.traffic.records()),
                "wire_format": rc.client.wire_format,
                "price_trade": trade,
            },
        )
        status.update(phase="done", eval_bpb=eval_bpb["all"])
        logger.info("mixture eval bpb %s", " ".join(f"{k}={v:.3f}" for k, v in eval_bpb.items()))
    finally:
        mixture.shutdown()
    return 0


def _wait_for(path, every_minute) -> None:
    """Block until `path` exists, calling `every_minute` each minute meanwhile (keeping DHT entries alive)."""
    last = time.monotonic()
    while not path.exists():
        time.sleep(0.5)
        if time.monotonic() - last > 60:
            every_minute()
            last = time.monotonic()


def _log_step(step: int, loss: float, status: StatusBoard, tracker: Tracker, steps: int) -> None:
    if step % 10 == 0 or step == steps:
        status.update(step=step, loss=loss)
        tracker.log({"router/loss": loss}, step=step)
