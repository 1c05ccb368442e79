"""What each wire format for next-byte distributions costs: bytes on the wire and bits per byte lost.

    python benchmarks/wire_formats.py                 # trains a small byte LM on the code slice, ~1 minute
    python benchmarks/wire_formats.py --steps 600

A full 256-way fp32 distribution per position is 1 KiB; for 16 x 64 positions that is 1 MiB a reply. The baseline is
fp32: `bpb_cost` is the extra bits per byte of held-out bytes after encoding and decoding, `ratio_vs_fp32` the wire
size relative to fp32. The figures come from a real (briefly trained) model, since a random model's distributions
are near uniform and compress unrealistically well.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from moe.corpus import SLICE_BYTES, fetch_subnet
from moe.corpus.batches import ByteBatches, iter_eval_windows
from moe.corpus.tokens import load_tokens
from moe.metrics import byte_log_probs
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.wire import wire_cost
from subnets import get_subnet


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--topk", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    folder = fetch_subnet(get_subnet("code"), None, max_bytes=SLICE_BYTES)
    train, val = load_tokens(folder, "train"), load_tokens(folder, "val")
    model = ByteLM(ModelConfig(d_model=96, n_layers=3, n_heads=4, d_ff=256, max_seq_len=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x, y in ByteBatches(train, 64, 16, seed=0):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        args.steps -= 1
        if args.steps == 0:
            break
    x, y = next(iter_eval_windows(val, 64, 16))
    keep = y < 256
    with torch.no_grad():
        logp = byte_log_probs(model(x))
    cost = wire_cost(logp[keep].unsqueeze(0), y[keep].unsqueeze(0), topk=args.topk)
    fp32 = cost["fp32"]["bytes_per_position"]
    out = {fmt: {**{k: round(v, 5) for k, v in c.items()}, "ratio_vs_fp32": round(c["bytes_per_position"] / fp32, 4)}
           for fmt, c in cost.items()}  # fmt: skip
    out["baseline"] = "fp32"
    out["positions"] = int(keep.sum())
    out["reply_kib_16x64"] = {fmt: round(c["bytes_per_position"] * 16 * 64 / 1024, 1) for fmt, c in cost.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
