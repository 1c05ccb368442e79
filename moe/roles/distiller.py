"""The distiller node: a consumer of the mixture that trains one student from it (`role=distiller student=...`).

It joins the network like any router (experts found in the DHT, identities proven, the validators' verdicts
followed), loads a trained gate, and asks the mixture for next-byte distributions on windows of the subnets' text,
blended as configured; each window is paid for once (moe.distill.teacher_cache). The student:
- `dense`: one expert's shape, initialised from the network's seed;
- `btx`: Branch-Train-MiX, the specialists' FFNs as the experts of a sparse MoE layer (moe.distill.btx), built from
  the run's expert checkpoints.
Who taught it is published, signed, for validators and payment (moe.distill.attribution). The student, its result
and its cache land in `<run_dir>/students/<kind>/`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import TYPE_CHECKING

import torch

from moe.corpus.batches import blended_batches_at_step
from moe.corpus.tokens import subnet_tokens
from moe.distill.attribution import DistillTraffic
from moe.distill.loop import train_student, window_batches
from moe.distill.teacher import CachedTeacher
from moe.distill.teacher_cache import TeacherCache
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.ledger.records import distill_record
from moe.model.transformer import ByteLM
from moe.net.ledger_client import submit_records
from moe.roles.layout import CHECKPOINT, RESULT, RunLayout
from moe.roles.lm_job import score_model
from moe.roles.miners import parse_miners
from moe.roles.node import StatusBoard, Stream
from moe.routing.remote import Mixture
from moe.training.tracking import Tracker

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)

DISTILL_TTL_SECONDS = 600.0
"""How long a published distillation-traffic record lives in the DHT (re-published while training)."""


def build_student(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout, seed: ByteLM) -> ByteLM:
    """The untrained student of `cfg.student`: the seed's copy, or the BTX merge of the run's experts."""
    if cfg.student == "dense":
        return copy.deepcopy(seed).train()
    from moe.distill.btx import build_btx
    from moe.roles.run_models import load_run_model

    dc = cfg.distill
    experts = [load_run_model(layout.root, f"expert:{s}") for s in cfg.subnets]
    domains = []
    for i, name in enumerate(cfg.subnets):
        stream = blended_batches_at_step([subnet_tokens(subnets[name], "train", cfg.data)], dc.seq_len, 16, i)
        domains.append(next(stream(0))[0])
    generalist = seed if dc.btx_generalist else None
    return build_btx(experts, domains, top_k=dc.btx_top_k, generalist=generalist).train()


def run_distiller(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    from moe.roles.router import load_generalist

    kind = cfg.student
    dc = cfg.distill.for_student(kind)
    name = f"distiller-{kind}"
    out = layout.student(kind)
    out.mkdir(parents=True, exist_ok=True)
    status = StatusBoard(layout.status, name)
    status.update(phase="joining", step=0, steps=dc.steps)
    if dc.cpu_threads > 0:
        torch.set_num_threads(dc.cpu_threads)
    client = dataclasses.replace(cfg.router.client, wire_format=dc.wire_format, topk=dc.wire_topk)
    rc = dataclasses.replace(cfg.router, client=client)
    netuids = [subnets[s].netuid for s in cfg.subnets]
    mixture = Mixture.from_dht(cfg.initial_peers, netuids, rc, cfg.network)
    try:
        status.update(phase="discovering")
        mixture.wait_for_experts(
            len(parse_miners(cfg.miners, cfg.subnets)), timeout=cfg.network.discovery_timeout_seconds
        )
        gate = dc.gate_path or (str(layout.router) if (layout.router / "gate.json").is_file() else "")
        if gate:
            mixture.load(gate)
        else:
            logger.warning("no trained gate given (distill.gate_path): the teacher routes with an untrained gate")
        seed = load_generalist(cfg, mixture.dht)
        mixture.set_generalist(seed if rc.generalist else None)
        if rc.follow_validators and cfg.ledger.enabled:
            mixture.follow_ledger(cfg.ledger.host)
        status.update(phase="building student")
        torch.manual_seed(cfg.seed)
        student = build_student(cfg, subnets, layout, seed)
        model_config = dataclasses.asdict(student.config)
        hotkey = Hotkey.load_or_create(cfg.hotkey_path or layout.key(name))
        if rc.escrow_tao > 0 and cfg.ledger.enabled:
            from moe.roles.settlement import pay_as_consumer

            status.update(phase="funding escrow")
            pay_as_consumer(mixture, hotkey, cfg.ledger.host, rc.escrow_tao, cfg.ledger.register_timeout_seconds)
        traffic = DistillTraffic()
        cache = TeacherCache(dc.cache_dir or layout.teacher_cache, dc.wire_format, dc.wire_topk)
        teacher = CachedTeacher(mixture.mix, cache, traffic)
        tokens = [subnet_tokens(subnets[s], "train", cfg.data) for s in cfg.subnets]
        stream = blended_batches_at_step(
            tokens, dc.seq_len, dc.batch_size, cfg.seed + Stream.DISTILL, weights=dc.blend or None
        )

        tracker = Tracker.for_node(cfg, layout.root, name)

        def report(wait: bool) -> None:
            """Publish who taught the student so far: signed in the DHT and, with a ledger, as a ledger record."""
            traffic.publish(mixture.dht, hotkey, DISTILL_TTL_SECONDS, wait=wait)
            if cfg.ledger.enabled and traffic.positions:
                record = distill_record(hotkey, traffic.epoch, traffic.positions, traffic.credit)
                submit_records(mixture.dht, hotkey, [record])

        def on_step(step: int, kl: float) -> None:
            status.update(phase="distilling", step=step, loss=kl)
            if step % 10 == 0 or step == dc.steps:
                tracker.log({"distill/kl": kl, "distill/teacher_bytes": teacher.positions_paid}, step=step)
            if dc.publish_interval_steps and step % dc.publish_interval_steps == 0:
                report(wait=False)

        def on_resume(extra: dict) -> None:
            if "traffic" in extra:
                traffic.restore(extra["traffic"])
            teacher.positions_paid = int(extra.get("positions_paid", 0))

        status.update(phase="distilling")
        result = train_student(
            student,
            window_batches(stream, dc.teacher_batches),
            teacher,
            dc,
            out / CHECKPOINT,
            model_config,
            state_extra=lambda: {"traffic": traffic.state(), "positions_paid": teacher.positions_paid},
            on_resume=on_resume,
            on_step=on_step,
        )
        report(wait=True)
        status.update(phase="evaluating")
        scores = score_model(cfg, subnets, student)
        write_json(
            out / RESULT,
            {
                "kind": kind,
                "params": student.num_params(),
                "active_params": student.active_params(),
                "train_steps": result.steps,
                "resumed_from": result.resumed_from,
                "seconds": result.seconds,
                "teacher_bytes": teacher.positions_paid,
                "cache": {"hits": teacher.cache.hits, "misses": teacher.cache.misses},
                "wire_format": dc.wire_format,
                "final_kl": result.final_kl,
                "final_hard": result.final_hard,
                "distill_traffic": traffic.shares(),
                "distill_positions": dict(sorted(traffic.positions.items())),
                "distill_credit": dict(sorted(traffic.credit.items())),
                "distiller": hotkey.address,
                "distill_epoch": traffic.epoch,
                "spent_rao": mixture.spent(),
                **scores,
            },
        )
        tracker.summary({f"eval/bpb/{k}": v for k, v in scores["eval_bpb"].items()})
        tracker.summary({f"shifted/bpb/{k}": v for k, v in scores["shifted_bpb"].items()})
        tracker.summary({"distill/final_kl": result.final_kl, "distill/teacher_bytes": teacher.positions_paid})
        tracker.summary({"params": student.num_params(), "active_params": student.active_params()})
        tracker.finish()
        status.update(phase="done", eval_bpb=scores["eval_bpb"]["all"])
        logger.info("%s student: %s", kind, " ".join(f"{k}={v:.3f}" for k, v in scores["eval_bpb"].items()))
    finally:
        mixture.shutdown()
    return 0
