"""The router node: finds the experts in the DHT, trains the gate on the routing split, scores the mixture.

The gate learns from the mixture's own loss on held-out routing data (never the experts' training data, never the
validation data), through remote calls only: experts stay frozen and are reached over hivemind like any client
would reach them. The final gate, its expert slots and the mixture's bits per byte land in `<run_dir>/router/`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from moe.corpus.batches import blended_batches_at_step, eval_windows
from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.metrics import bits_per_byte, macro_bpb
from moe.roles.layout import RESULT, RunLayout
from moe.roles.node import StatusBoard, Stream
from moe.routing.mixing import route_and_mix
from moe.routing.remote import Mixture
from moe.training.tracking import Tracker

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


def evaluate_mixture(mixture: Mixture, windows_by_subnet, k_best: int, probe_len: int) -> dict[str, float]:
    """Bits per byte of the mixture on each subnet's validation windows (the same windows the experts saw)."""
    out, answered, wanted = {}, 0, 0
    for name, windows in windows_by_subnet.items():
        bits, count = 0.0, 0
        for x, y in windows():
            with torch.no_grad():
                mix = route_and_mix(mixture.gate, x, mixture.entries(), mixture.call, k_best, probe_len)
            b, n = bits_per_byte(mix.logp, y)
            bits, count = bits + b, count + n
            answered += int(mix.answered[:, -1].sum())
            wanted += int(mix.chosen.sum())
        out[name] = bits / max(1, count)
    logger.info("chosen experts that answered: %d of %d", answered, wanted)
    return macro_bpb(out)


def run_router(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    rc = cfg.router
    status = StatusBoard(layout.status, "router")
    status.update(phase="joining", step=0, steps=rc.steps)
    netuids = [subnets[s].netuid for s in cfg.subnets]
    mixture = Mixture.from_dht(cfg.initial_peers, netuids, rc, cfg.network)
    try:
        status.update(phase="discovering")
        mixture.wait_for_experts(len(cfg.subnets), timeout=cfg.network.discovery_timeout_seconds)
        seq_len = cfg.expert_train.seq_len
        route_tokens = [subnet_tokens(subnets[s], "route", cfg.data) for s in cfg.subnets]
        blend = blended_batches_at_step(route_tokens, seq_len, rc.batch_size, cfg.seed + Stream.ROUTER)(0)
        tracker = Tracker(cfg.wandb, layout.root, "router", {"router": asdict(rc)}, group=cfg.run_id)
        status.update(phase="training gate")
        t0 = time.perf_counter()
        losses = mixture.train_gate(
            blend, rc.steps, on_step=lambda s, loss: _log_step(s, loss, status, tracker, rc.steps)
        )
        train_seconds = time.perf_counter() - t0
        status.update(phase="evaluating")
        val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets}
        t = cfg.expert_train
        windows = eval_windows(val, t.seq_len, t.batch_size, t.eval_batches)
        eval_bpb = evaluate_mixture(mixture, windows, rc.k_best, rc.probe_len)
        tracker.summary({f"eval/bpb/mixture/{k}": v for k, v in eval_bpb.items()})
        tracker.finish()
        mixture.save(layout.router)
        write_json(
            layout.router / RESULT,
            {
                "eval_bpb": eval_bpb,
                "gate_steps": rc.steps,
                "gate_final_loss": losses[-1] if losses else None,
                "train_seconds": train_seconds,
                "experts": [e.key for e in mixture.entries()],
                "faults": [f"{f.peer_id}: {f.reason}" for f in mixture.faults()],
                "wire_format": rc.client.wire_format,
            },
        )
        status.update(phase="done", eval_bpb=eval_bpb["all"])
        logger.info("mixture eval bpb %s", " ".join(f"{k}={v:.3f}" for k, v in eval_bpb.items()))
    finally:
        mixture.shutdown()
    return 0


def _log_step(step: int, loss: float, status: StatusBoard, tracker: Tracker, steps: int) -> None:
    if step % 10 == 0 or step == steps:
        status.update(step=step, loss=loss)
        tracker.log({"router/loss": loss}, step=step)
