"""Tokens per second of one specialist's training step, through our loop and through a bare PyTorch loop.

    python benchmarks/train_throughput.py                    # the default (~0.8M-parameter) expert, CPU
    python benchmarks/train_throughput.py configs/gpu.yaml   # on a CUDA machine: bf16, compiled, with MFU

The baseline is the bare loop (forward, cross-entropy, backward, AdamW) on the same model and batches in the same
run, so `ratio_vs_bare` is what accelerate, clipping, the schedule and logging cost (1.0 = free). On CUDA, MFU is
model FLOPs per second (6N + attention, `ByteLM.flops_per_token`) over the GPU's dense bf16 peak (`--peak-tflops`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from moe.config_loader import parse_args
from moe.corpus.batches import batches_at_step
from moe.model.transformer import ByteLM, config_dict
from moe.roles.run_config import RunConfig
from moe.training.loop import train_lm


def bare_loop(model: ByteLM, batches, steps: int, lr: float, device: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0 = None
    for i in range(steps + 3):
        if i == 3:  # warm-up excluded
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config", nargs="*", default=["configs/default.yaml"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (an expert node uses 1 in the local network)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = parse_args(RunConfig, args.config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = dataclasses.replace(
        cfg.expert_train, steps=args.steps + 3, eval_interval_steps=0, progress=False, eval_batches=1
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=2_000_000).astype(np.uint16)  # content does not change the step's cost
    make = batches_at_step(tokens, t.seq_len, t.batch_size, seed=0, grad_accum=t.grad_accum)
    tokens_per_step = t.batch_size * t.seq_len * t.grad_accum

    torch.manual_seed(0)
    model = ByteLM(cfg.model).to(device)
    bare_s = bare_loop(model, make(0), args.steps, t.lr, device)
    bare_tps = tokens_per_step * args.steps / bare_s

    torch.manual_seed(0)
    model = ByteLM(cfg.model)
    stamps: dict[int, float] = {}

    def clock(step: int, _model) -> None:  # same window as the bare loop: steps 4..N, warm-up excluded
        if step in (3, t.steps):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as d:
        ev = {"x": lambda: iter([next(make(10_000))])}
        train_lm(model, make, ev, t, d, config_dict(cfg.model), resume=False, on_step=clock)
    ours_tps = tokens_per_step * args.steps / (stamps[t.steps] - stamps[3])
    out = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "params": model.num_params(),
        "tokens_per_step": tokens_per_step,
        "threads": args.threads,
        "ours_tokens_per_s": round(ours_tps, 1),
        "bare_tokens_per_s": round(bare_tps, 1),
        "ratio_vs_bare": round(ours_tps / bare_tps, 3),
        "baseline": "bare PyTorch loop (forward, CE, backward, AdamW) on the same model and batches",
    }
    if device == "cuda":
        out["mfu"] = round(model.flops_per_token() * ours_tps / (args.peak_tflops * 1e12), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
