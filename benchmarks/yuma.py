"""Yuma epoch speed: `yuma_epoch` (version 1, version 3, version 3 with liquid alpha) at three sizes, against the
previous argsort implementation (version 1 only) at 1024x16384 and a per-miner Python loop at 64x256, in one run.

OMP_NUM_THREADS=2 python benchmarks/yuma.py     # last line: JSON, best-of-N ms per epoch and the ratios

Figures are the best of N calls: on a shared machine the minimum is the least noisy estimate of the cost. `*_ms` is
wall time, `*_cpu_ms` this process's CPU time (all threads), which other load inflates less.
ratio = previous_argsort_ms / v1_ms at 1024x16384; loop_ratio = loop_ms / v1_ms at 64x256.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from moe.ledger.yuma import yuma_epoch


def loop_epoch(W: np.ndarray, S: np.ndarray, kappa: float = 0.5) -> list[float]:
    """Straightforward baseline: consensus and incentive with a Python loop over miners (sorted median per column)."""
    V, M = W.shape
    s = S / S.sum()
    Wn = [row / row.sum() if row.sum() > 0 else row for row in W]
    ranks = []
    for j in range(M):
        col = sorted((Wn[i][j], s[i]) for i in range(V))
        acc, c = 0.0, col[-1][0]
        for w, st in col:
            acc += st
            if acc > 1.0 - kappa:
                c = w
                break
        ranks.append(sum(s[i] * min(Wn[i][j], c) for i in range(V)))
    t = sum(ranks)
    return [r / t for r in ranks]


def previous_epoch(W: np.ndarray, S: np.ndarray, B: np.ndarray, kappa: float = 0.5, alpha: float = 0.1) -> np.ndarray:
    """The previous yuma_epoch (version 1, bond_penalty 1): whole-matrix passes and an argsort median over (M, V)."""
    s = S / S.sum()
    t = W.sum(axis=1, keepdims=True)
    W = np.divide(W, t, out=np.zeros_like(W), where=t > 0)

    def coln(x: np.ndarray) -> np.ndarray:
        c = x.sum(axis=0, keepdims=True)
        return np.divide(x, c, out=np.zeros_like(x), where=c > 0)

    Wt = np.ascontiguousarray(W.T)  # (M, V)
    idx = np.argsort(Wt, axis=1)
    Ws = np.take_along_axis(Wt, idx, axis=1)
    above = np.cumsum(s[idx], axis=1) > s.sum() - kappa
    rows = np.arange(Wt.shape[0])
    C = np.where(above.any(axis=1), Ws[rows, above.argmax(axis=1)], Ws[rows, -1])
    Wc = np.minimum(W, C[None, :])
    inc = s @ Wc
    inc /= inc.sum()
    Wb = W + 1.0 * (Wc - W)
    ema = coln(alpha * coln(Wb * s[:, None]) + (1.0 - alpha) * coln(B))
    d = ema @ inc
    return d / d.sum()


def best_ms(fn, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU milliseconds over `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return min(wall), min(cpu)


def main() -> None:
    rng = np.random.default_rng(0)
    out: dict[str, float | str] = {
        "baseline": "previous argsort yuma_epoch (v1) at 1024x16384; loop: per-miner python loop at 64x256",
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "numpy": np.__version__,
    }
    variants = {
        "v1": {},
        "v3": {"yuma_version": 3},
        "v3_liquid": {"yuma_version": 3, "liquid_alpha": True},
    }
    for V, M, rep in ((64, 256, 21), (256, 4096, 9), (1024, 16384, 9)):
        W, S, B = rng.random((V, M)), rng.random(V), rng.random((V, M))
        for name, kw in variants.items():
            ms, cpu = best_ms(lambda W=W, S=S, B=B, kw=kw: yuma_epoch(W, S, B, **kw), rep)
            out[f"{name}_ms_{V}x{M}"], out[f"{name}_cpu_ms_{V}x{M}"] = round(ms, 2), round(cpu, 2)
            print(f"yuma_epoch {name:9s} {V}x{M}: {ms:8.2f} ms, cpu {cpu:8.2f} ms (best of {rep})", flush=True)
    W, S, B = rng.random((1024, 16384)), rng.random(1024), rng.random((1024, 16384))
    np.testing.assert_allclose(previous_epoch(W, S, B), yuma_epoch(W, S, B).dividends, atol=1e-12)
    prev_ms, prev_cpu = best_ms(lambda: previous_epoch(W, S, B), 3)
    print(f"previous argsort epoch 1024x16384: {prev_ms:.2f} ms, cpu {prev_cpu:.2f} ms (best of 3)")
    W, S = rng.random((64, 256)), rng.random(64)
    loop_ms, _ = best_ms(lambda: loop_epoch(W, S), 3)
    print(f"python loop 64x256: {loop_ms:.2f} ms (best of 3)")
    out["previous_argsort_ms_1024x16384"] = round(prev_ms, 2)
    out["previous_argsort_cpu_ms_1024x16384"] = round(prev_cpu, 2)
    out["loop_ms_64x256"] = round(loop_ms, 2)
    out["ratio"] = round(prev_ms / out["v1_ms_1024x16384"], 2)
    out["cpu_ratio"] = round(prev_cpu / out["v1_cpu_ms_1024x16384"], 2)
    out["loop_ratio"] = round(loop_ms / out["v1_ms_64x256"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
