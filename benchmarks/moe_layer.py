"""Forward+backward time of the sparse MoE layer against a per-token loop and an equal-active-FLOPs dense SwiGLU.

Run:  python3 benchmarks/moe_layer.py  [--tokens 8192] [--loop-tokens 256] [--repeats 7] [--threads 2]

Setup: E=8 experts, top-2, d_model=256, expert d_ff=1024, float32 on CPU, dropless. Baselines measured in the same run:
  (a) the per-token reference loop (each token, each of its top-k experts, one SwiGLU), timed on `--loop-tokens`
      tokens and scaled linearly to `--tokens`, since it is far too slow to run on all of them;
  (b) a dense SwiGLU with d_ff = top_k * 1024, which does the same matmul FLOPs per token as the MoE's active experts.
Each timing is the median of `--repeats` runs after warm-up; the CPU is shared, so expect noise. The last line printed
is one JSON object: ratio_vs_loop = loop_ms / ours_ms (speed-up, target >= 10), ratio_vs_dense = ours_ms / dense_ms
(time ratio, target <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.model.ffn import (
    MoEFeedForward,  # noqa: E402
    SwiGLU,  # noqa: E402
)


def per_token_loop(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The obvious implementation: route each token alone and run its k experts one by one; (N, D) -> (N, D)."""
    out = []
    for t in range(x.shape[0]):
        xt = x[t]  # (D,)
        p = layer.router(xt).softmax(-1)  # (E,)
        w, idx = p.topk(layer.top_k)
        w = w / w.sum()
        yt = torch.zeros_like(xt)
        for j in range(layer.top_k):
            e = int(idx[j])
            h = F.silu(xt @ layer.w_gate[e]) * (xt @ layer.w_up[e])  # (F,)
            yt = yt + w[j] * (h @ layer.w_down[e])
        out.append(yt)
    return torch.stack(out)


def median_ms(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time of each function; they run interleaved so load from other processes hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--loop-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_model, d_ff, n_experts, top_k = 256, 1024, 8, 2

    moe = MoEFeedForward(d_model, d_ff, n_experts, top_k)
    dense = SwiGLU(d_model, top_k * d_ff)
    x = torch.randn(1, args.tokens, d_model, requires_grad=True)
    x_loop = x.detach()[0, : args.loop_tokens].clone().requires_grad_(True)

    def run_moe() -> None:
        out = moe(x)
        (out.y.sum() + out.balance_loss + out.z_loss).backward()

    def run_dense() -> None:
        dense(x).sum().backward()

    def run_loop() -> None:
        per_token_loop(moe, x_loop).sum().backward()

    ours_ms, dense_ms = median_ms([run_moe, run_dense], args.repeats)
    (loop_sub_ms,) = median_ms([run_loop], max(3, args.repeats // 2), warmup=1)
    loop_ms = loop_sub_ms * args.tokens / args.loop_tokens
    print(f"MoE E={n_experts} top-{top_k} d_model={d_model} d_ff={d_ff}, {args.tokens} tokens, fwd+bwd, fp32 CPU")
    print(f"  ours  {ours_ms:9.1f} ms")
    print(f"  dense {dense_ms:9.1f} ms  (SwiGLU d_ff={top_k * d_ff}, same active FLOPs)")
    print(f"  loop  {loop_ms:9.1f} ms  (measured {loop_sub_ms:.1f} ms on {args.loop_tokens} tokens, scaled linearly)")
    result = {
        "ours_ms": round(ours_ms, 2),
        "loop_ms": round(loop_ms, 2),
        "dense_ms": round(dense_ms, 2),
        "ratio_vs_loop": round(loop_ms / ours_ms, 2),
        "ratio_vs_dense": round(ours_ms / dense_ms, 3),
        "loop_scaled_from_tokens": args.loop_tokens,
        "tokens": args.tokens,
        "threads": args.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
