"""Causality audits: what catching peek-ahead experts costs a validator, against how often it catches them.

    python benchmarks/audit.py [--epochs 200] [--seq-len 64] [--windows 32]

For peekers on 5%, 20% and 100% of positions (moe.roles.adversary.PeekLM) and for audits of 16 twins (the router's),
135 (the validators' default: a 5% peeker caught with probability 0.999) and the size each fraction needs, it runs
`--epochs` simulated epochs (real spliced twins of real text, the real judge) and reports the share of epochs in
which the peeker was caught, next to the analytic 1 - (1 - f)^n. Then it times one validator epoch of queries to an
honest expert (a default-size ByteLM, in process) with and without the audit: the audit's extra queries per epoch
and its seconds, as a ratio to the epoch without it (the named baseline). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.corpus.tokens import CorpusConfig, subnet_tokens  # noqa: E402
from moe.metrics import byte_log_probs  # noqa: E402
from moe.model.transformer import ByteLM, ModelConfig  # noqa: E402
from moe.poi.causality import AuditConfig, audited_query, twins_needed  # noqa: E402
from moe.roles.adversary import PeekLM  # noqa: E402
from moe.routing.window_query import query_windows  # noqa: E402
from subnets import all_subnets  # noqa: E402

FRACTIONS = (0.05, 0.2, 1.0)
BATCH = 8


def windows(tokens: np.ndarray, n: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(tokens) - seq_len, n)
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))


def local_call(models: dict[str, torch.nn.Module]):
    """query_windows' callable over in-process models, as an expert server would answer."""

    def call(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {k: byte_log_probs(models[k](x)) for k, x in inputs.items()}

    return call


def detection_rate(peeker: PeekLM, twins: int, epochs: int, tokens, args) -> float:
    call = local_call({"peeker": peeker})
    caught = 0
    for e in range(epochs):
        rng = np.random.default_rng(e)
        x, donors = windows(tokens, args.windows, args.seq_len, rng), windows(tokens, twins, args.seq_len, rng)
        query = functools.partial(query_windows, call, ["peeker"], batch_size=BATCH)
        *_, result = audited_query(query, x, donors, AuditConfig(twins=twins), rng)
        caught += int(result.violations[0] > 0)
    return caught / epochs


def epoch_seconds(model: torch.nn.Module, twins: int, tokens, args, repeats: int = 3) -> float:
    """Best of `repeats` wall seconds for one epoch's queries to one honest expert (with `twins` twins, 0: none)."""
    call = local_call({"honest": model})
    best = float("inf")
    for r in range(repeats):
        rng = np.random.default_rng(100 + r)
        x = windows(tokens, args.windows, args.seq_len, rng)
        t0 = time.perf_counter()
        if twins:
            donors = windows(tokens, twins, args.seq_len, rng)
            query = functools.partial(query_windows, call, ["honest"], batch_size=BATCH)
            audited_query(query, x, donors, AuditConfig(twins=twins), rng)
        else:
            query_windows(call, ["honest"], x, BATCH)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--windows", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(1)
    tokens = subnet_tokens(all_subnets()["english"], "val", CorpusConfig())
    sizes = sorted({16, twins_needed(0.05, 0.999), *(twins_needed(f, 0.999) for f in FRACTIONS)})
    detection = {}
    for f in FRACTIONS:
        for n in sizes:
            rate = detection_rate(PeekLM(fraction=f), n, args.epochs, tokens, args)
            detection[f"peek{int(f * 100)}%@{n}"] = {"caught": rate, "analytic": 1 - (1 - f) ** n}
            print(
                f"peeker on {f:.0%} of positions, {n:4d} twins: caught in {rate:.3f} of epochs "
                f"(analytic {1 - (1 - f) ** n:.3f})"
            )
    torch.manual_seed(0)
    honest = ByteLM(ModelConfig()).eval()
    plain = epoch_seconds(honest, 0, tokens, args)
    audited = epoch_seconds(honest, twins_needed(0.05, 0.999), tokens, args)
    twins = twins_needed(0.05, 0.999)
    print(f"one epoch of {args.windows} windows to one expert: {plain:.3f}s; with {twins} twins: {audited:.3f}s")
    print(
        json.dumps(
            {
                "detection": detection,
                "twins_per_epoch": twins,
                "extra_queries_per_epoch": twins,
                "extra_query_share": twins / args.windows,
                "epoch_seconds_without_audit": plain,
                "epoch_seconds_with_audit": audited,
                "baseline": "the same epoch's queries without the audit",
                "ratio_vs_baseline": audited / plain,
            }
        )
    )


if __name__ == "__main__":
    main()
