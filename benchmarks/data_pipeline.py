"""Throughput of the byte data pipeline against the training step it feeds.

Run:  python3 benchmarks/data_pipeline.py  [--batch 16] [--seq 256] [--seconds 2] [--threads 2] [--cache DIR]

Data: the `code` subnet (the interpreter's stdlib, no download) fetched into a temporary cache, or the subnets already
in `--cache`. Measured in the same run:
  pipeline   ByteBatches.sample() windows (B, T) from the memory-mapped train split, and BlendedBatches over every
             subnet found; plus the one-off cost of building the token cache and the cost of re-opening it;
  baseline   `tiny_transformer_fwd_bwd`: one forward + backward step of a 2-layer, d=128 causal transformer
             (torch.nn.TransformerEncoderLayer, byte vocabulary) on the same (B, T) batch, float32 CPU.
The last line printed is one JSON object; ratio = pipeline tokens/s / baseline tokens/s (how many times faster the
pipeline produces tokens than even a tiny model consumes them; >> 1 means data loading is not the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.corpus import fetch_subnet  # noqa: E402
from moe.corpus.batches import BlendedBatches, ByteBatches  # noqa: E402
from moe.corpus.tokens import load_tokens  # noqa: E402
from moe.model.tokenizer import VOCAB_SIZE  # noqa: E402
from subnets import all_subnets, get_subnet  # noqa: E402


def rate(fn, seconds: float) -> float:
    """Calls per second of `fn` over about `seconds` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / dt


class TinyLM(nn.Module):
    def __init__(self, d: int = 128, n_layer: int = 2, n_head: int = 4):
        super().__init__()
        self.emb = nn.Embedding(VOCAB_SIZE, d)
        layer = nn.TransformerEncoderLayer(d, n_head, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)  # (T, T)
        return self.head(self.blocks(self.emb(x), mask=mask, is_causal=True))  # (B, T, V)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=None, help="use subnets already fetched here (default: a temporary stdlib one)")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.seq

    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            dirs = [Path(args.cache) / n for n in all_subnets() if (Path(args.cache) / n / "manifest.json").exists()]
        else:
            dirs = [fetch_subnet(get_subnet("code"), tmp)]
        for d in dirs:  # drop any token cache so the first load is a cold build
            for f in d.glob("*.bin*"):
                f.unlink()
        t0 = time.perf_counter()
        tokens = [load_tokens(d, "train") for d in dirs]
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = [load_tokens(d, "train") for d in dirs]
        reopen_s = time.perf_counter() - t0

        sampler = ByteBatches(tokens[0], T, B, seed=0)
        batches_per_s = rate(sampler.sample, args.seconds)
        blend = BlendedBatches([ByteBatches(t, T, B, seed=i) for i, t in enumerate(tokens)], [1.0] * len(tokens), B)
        blend_per_s = rate(blend.sample, args.seconds)

        model = TinyLM()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = sampler.sample()

        def step() -> None:
            loss = F.cross_entropy(model(x).view(B * T, VOCAB_SIZE), y.view(B * T))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps_per_s = rate(step, args.seconds)

    result = {
        "subnets": [d.name for d in dirs],
        "train_tokens": [len(t) for t in tokens],
        "batch": B,
        "seq_len": T,
        "token_cache_build_s": round(build_s, 3),
        "token_cache_reopen_s": round(reopen_s, 4),
        "pipeline_batches_per_s": round(batches_per_s, 1),
        "pipeline_tokens_per_s": round(batches_per_s * B * T),
        "blend_tokens_per_s": round(blend_per_s * B * T),
        "baseline": "tiny_transformer_fwd_bwd (2 layers, d=128, AdamW step)",
        "baseline_tokens_per_s": round(steps_per_s * B * T),
        "ratio": round(batches_per_s / steps_per_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
