"""Yuma epoch speed: vectorized `yuma_epoch` at three sizes against a per-miner Python loop at the smallest.

python benchmarks/yuma.py            # last line: JSON with ms per epoch and ratio = loop_ms / ours_ms at 64x256
"""

from __future__ import annotations

import json
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


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    out: dict[str, float | str] = {"baseline": "per-miner python loop at 64x256"}
    for V, M, rep in ((64, 256, 5), (256, 4096, 3), (1024, 16384, 1)):
        W, S, B = rng.random((V, M)), rng.random(V), rng.random((V, M))
        ms = best_ms(lambda W=W, S=S, B=B: yuma_epoch(W, S, B), rep)
        out[f"yuma_ms_{V}x{M}"] = round(ms, 3)
        print(f"yuma_epoch {V}x{M}: {ms:.2f} ms")
    W, S = rng.random((64, 256)), rng.random(64)
    loop_ms = best_ms(lambda: loop_epoch(W, S), 2)
    print(f"python loop 64x256: {loop_ms:.2f} ms")
    out["loop_ms_64x256"] = round(loop_ms, 3)
    out["ratio"] = round(loop_ms / out["yuma_ms_64x256"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
