"""Distillation of a finished run's mixture: teacher throughput, wire cost per format, and what the student learns.

    python benchmarks/distill.py runs/<run_id> [--steps 100] [--formats fp32,q8,topk] [--student dense|btx]

The teacher is the run's own mixture computed in this process through the live router's code path (probe, the run's
trained gate, top-k, byte-level switching with the seed; moe.routing.mixing.route_and_mix over the run's expert
checkpoints), so no network is needed. It prints:
- teacher throughput in bytes (positions) per second;
- wire bytes per position of the teacher's distributions in fp32, q8 and topk (moe.net.wire);
- the student's bits per byte on the validation windows after `--steps` steps on the same windows, with the teacher's
  distributions passed through each wire format, against the same student trained as long on plain LM loss;
- student training tokens per second, distilling against plain LM (the overhead of distillation).
Last line: one JSON object with those figures; `ratio_vs_plain_lm` is the q8 student's bits per byte over the
plain-LM student's (below 1: distillation teaches more per step than the text alone).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generalisation import load_run  # noqa: E402

from moe.config_loader import parse_args  # noqa: E402
from moe.corpus.batches import blended_batches_at_step, eval_windows  # noqa: E402
from moe.corpus.tokens import subnet_tokens  # noqa: E402
from moe.distill.config import DistillConfig  # noqa: E402
from moe.distill.loss import distill_loss  # noqa: E402
from moe.metrics import byte_log_probs, evaluate_model_bpb, macro_bpb  # noqa: E402
from moe.net.wire import decode_logp, encode_logp  # noqa: E402
from moe.roles.layout import RunLayout  # noqa: E402
from moe.roles.run_config import RunConfig  # noqa: E402
from moe.routing.mixing import local_caller  # noqa: E402
from moe.routing.remote import serve_mix  # noqa: E402
from moe.training.loop import lr_at, make_optimizer  # noqa: E402
from subnets import all_subnets  # noqa: E402


def teacher_fn(cfg: RunConfig, experts, seed, entries, gate):
    """(B, T) -> (B, T, 256): the live router's mixture, in process."""
    rc = cfg.router
    call = local_caller({k: m for k, (_, m, _) in experts.items()})

    @torch.no_grad()
    def teach(x: torch.Tensor) -> torch.Tensor:
        return serve_mix(gate, x, entries, call, rc, lambda z: byte_log_probs(seed(z))).logp

    return teach


def through_wire(logp: torch.Tensor, fmt: str, topk: int) -> torch.Tensor:
    B, T, _ = logp.shape
    return decode_logp(encode_logp(logp, fmt, topk), fmt, (B, T), topk)


def train(student, batches, targets, dc: DistillConfig, plain: bool) -> float:
    """Train on the precomputed batches; returns training tokens per second."""
    from moe.distill.loop import schedule

    sched = schedule(dc)
    opt = make_optimizer(student, sched)
    student.train()
    t0, tokens = time.perf_counter(), 0
    for step, ((x, y), target) in enumerate(zip(batches, targets, strict=True)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, sched)
        logits, aux = student(x, return_aux=True)
        if plain:
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        else:
            loss = distill_loss(logits, target, y, dc.temperature, dc.hard_weight).total
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), dc.grad_clip)
        opt.step()
        tokens += x.numel()
    student.eval()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--formats", default="fp32,q8,topk")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.0, help="student learning rate (default: the run's distill.lr)")
    p.add_argument("--hard-weight", type=float, default=-1.0)
    p.add_argument("--student", choices=["dense", "btx"], default="dense")
    p.add_argument("--btx-shared", choices=["average", "seed"], default="average")
    p.add_argument("--temperature", type=float, default=0.0, help="default: the run's distill.temperature")
    p.add_argument("--cycle", type=int, default=0, help="distinct teacher batches, cycled (0: fresh ones)")
    p.add_argument("--skip-plain", action="store_true", help="do not train the plain-LM reference")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layout = RunLayout(Path(args.run_dir))
    cfg = parse_args(RunConfig, [str(layout.config)])
    dc = cfg.distill
    if args.lr > 0:
        dc.lr = args.lr
    if args.hard_weight >= 0:
        dc.hard_weight = args.hard_weight
    dc.steps = args.steps
    if args.temperature > 0:
        dc.temperature = args.temperature
    subnets = all_subnets()
    experts, seed, _, entries, gate = load_run(layout, cfg)
    teach = teacher_fn(cfg, experts, seed, entries, gate)
    tokens = [subnet_tokens(subnets[s], "train", cfg.data) for s in cfg.subnets]
    stream = blended_batches_at_step(tokens, dc.seq_len, dc.batch_size, cfg.seed + 4000)(0)
    distinct = [next(stream) for _ in range(args.cycle or args.steps)]
    t0 = time.perf_counter()
    answers = [teach(x) for x, _ in distinct]
    batches = [distinct[s % len(distinct)] for s in range(args.steps)]
    teacher = [answers[s % len(distinct)] for s in range(args.steps)]
    teacher_bytes_per_s = sum(x.numel() for x, _ in distinct) / (time.perf_counter() - t0)
    val = {s: subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets}
    evals = eval_windows(val, cfg.expert_train.seq_len, cfg.expert_train.batch_size, cfg.expert_train.eval_batches)

    def score(model) -> dict[str, float]:
        with torch.no_grad():
            return macro_bpb({s: evaluate_model_bpb(model, w()) for s, w in evals.items()})

    out: dict = {"steps": args.steps, "teacher_bytes_per_s": round(teacher_bytes_per_s, 1)}
    x0 = batches[0][0]
    out["wire_bytes_per_position"] = {
        f: len(encode_logp(teacher[0], f, dc.wire_topk)) / x0.numel() for f in ("fp32", "q8", "topk")
    }
    out["seed_bpb"] = score(seed)["all"]

    def fresh_student():
        if args.student == "dense":
            return copy.deepcopy(seed)
        from moe.distill.btx import build_btx

        models = [experts[e.key][1] for e in entries]
        domains = [
            next(
                blended_batches_at_step(
                    [subnet_tokens(subnets[experts[e.key][0]], "train", cfg.data)], dc.seq_len, 16, i
                )(0)
            )[0]
            for i, e in enumerate(entries)
        ]
        shared = seed if args.btx_shared == "seed" else None
        return build_btx(models, domains, dc.btx_top_k, seed if dc.btx_generalist else None, shared_from=shared)

    out["student"] = args.student
    out["student_init_bpb"] = score(fresh_student())["all"]
    if args.skip_plain:
        plain_rate, out["plain_lm_bpb"] = float("nan"), float("nan")
    else:
        plain = fresh_student()
        plain_rate = train(plain, batches, teacher, dc, plain=True)
        out["plain_lm_bpb"] = score(plain)["all"]
    student_bpb, rates = {}, {}
    for fmt in args.formats.split(","):
        targets = [through_wire(t, fmt, dc.wire_topk) for t in teacher]
        student = fresh_student()
        rates[fmt] = train(student, batches, targets, dc, plain=False)
        student_bpb[fmt] = score(student)["all"]
        print(f"{fmt}: student {student_bpb[fmt]:.4f} bits per byte, {rates[fmt]:.0f} tokens/s", file=sys.stderr)
    out["student_bpb"] = student_bpb
    out["student_tokens_per_s"] = {"plain_lm": round(plain_rate, 1), **{k: round(v, 1) for k, v in rates.items()}}
    ref = "q8" if "q8" in student_bpb else next(iter(student_bpb))
    out["distill_overhead"] = round(plain_rate / rates[ref], 3)
    out["ratio_vs_plain_lm"] = round(student_bpb[ref] / out["plain_lm_bpb"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
