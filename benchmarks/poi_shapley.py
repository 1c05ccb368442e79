"""Exact Shapley of 8 experts on 100k evaluated bytes: the vectorized subset recursion against per-coalition sums.

Run:  python3 benchmarks/poi_shapley.py [--experts 8] [--positions 100000] [--windows 100] [--repeats 3]

Data: random log-probs of the actual next byte, (E, W, T) with W·T = --positions. Measured in the same run, for
both mixtures ("bayes": causal Bayesian per window; "equal": fixed weights per position):
  vectorized  MixtureGame.all_values() (2^E − 1 logaddexps over the data) + exact_shapley;
  baseline    `per_coalition`: v(S) for each of the 2^E coalitions computed on its own (logsumexp over the members
              of S, the memoized MixtureGame.value path), then the same exact_shapley.
Also timed: sampled Shapley with 16 experts (antithetic permutations, to a fixed budget).
The last line printed is one JSON object; ratio_<mixture> = baseline seconds / vectorized seconds (best of repeats).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from moe.poi.shapley import ShapleyConfig, exact_shapley, sampled_shapley
from moe.poi.value import MixtureGame, ValueConfig


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    E, W = args.experts, args.windows
    T = args.positions // W
    logits = 2 * torch.randn(E, W * T, 256, generator=g)  # float32 to keep the setup small
    lp = torch.log_softmax(logits, -1)[..., 0].double().reshape(E, W, T)  # (E, W, T)
    del logits
    out: dict = {"experts": E, "positions": W * T, "windows": W, "threads": 1}
    for mixture in ("bayes", "equal"):
        cfg = ValueConfig(mixture=mixture)

        def vectorized(cfg: ValueConfig = cfg) -> torch.Tensor:
            return exact_shapley(MixtureGame(lp, config=cfg).all_values())

        def per_coalition(cfg: ValueConfig = cfg) -> torch.Tensor:
            game = MixtureGame(lp, config=cfg)
            return exact_shapley(torch.tensor([game.value(m) for m in range(1 << E)], dtype=torch.float64))

        assert torch.allclose(vectorized(), per_coalition(), atol=1e-9)
        t_vec, t_base = best_of(vectorized, args.repeats), best_of(per_coalition, args.repeats)
        out[f"seconds_vectorized_{mixture}"] = round(t_vec, 4)
        out[f"seconds_per_coalition_{mixture}"] = round(t_base, 4)
        out[f"ratio_{mixture}"] = round(t_base / t_vec, 2)
    lp16 = lp.repeat(2, 1, 1)  # (16, W, T)
    game16 = MixtureGame(lp16, config=ValueConfig(mixture="equal"))
    cfg16 = ShapleyConfig(max_permutations=256, target_stderr=0.0)
    t0 = time.perf_counter()
    est = sampled_shapley(game16, cfg16)
    out["seconds_sampled_16_experts_256_perms_equal"] = round(time.perf_counter() - t0, 4)
    out["max_stderr_sampled_16"] = float(est.stderr.max())
    out["baseline"] = "per_coalition"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
