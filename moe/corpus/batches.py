"""Batches: random training windows of a token stream, blends of several subnets, and exhaustive eval windows.

Sampling is plain numpy fancy indexing (no workers): a (16, 256) batch costs microseconds, far below a train step.
Every sampler is a pure function of its seed, and `*_at_step` rebuilds a stream positioned at any optimizer step, so
a run resumed from a checkpoint draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from moe.model.tokenizer import PAD

logger = logging.getLogger(__name__)

IGNORE = PAD
"""Target id of positions an eval window must not score (scored elsewhere); metrics skip every id >= 256."""


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    return tokens[starts[:, None] + np.arange(seq_len + 1)]  # (B, T+1)


def _split_xy(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.astype(np.int64, copy=False)  # (B, T+1)
    return torch.from_numpy(w[:, :-1].copy()), torch.from_numpy(w[:, 1:].copy())  # (B, T), (B, T); no shared memory


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _split_xy(_gather(tokens, starts, seq_len))


class ByteBatches:
    """Endless (x, y) LongTensor batches (B, T) of windows at uniformly random offsets; y is x shifted by one.

    Deterministic per seed; `state_dict()` / `load_state_dict()` resume the exact sequence after a checkpoint.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"token stream of {len(tokens)} tokens is too short for windows of {seq_len} + 1")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of `n` windows (default `batch_size`)."""
        return _windows(self.tokens, self._starts(n), self.seq_len)

    def _starts(self, n: int | None = None) -> np.ndarray:
        n = self.batch_size if n is None else n
        return self.rng.integers(0, len(self.tokens) - self.seq_len, size=n)  # last start leaves room for y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class BlendedBatches:
    """Batches whose rows come from several samplers, each row's source drawn with probability `weights[k]`.

    Used to train the shared seed model on all subnets at once; `sample()` also returns each row's source index.
    """

    def __init__(self, samplers: Sequence[ByteBatches], weights: Sequence[float], batch_size: int, seed: int = 0):
        if not samplers or len(samplers) != len(weights):
            raise ValueError(f"need one weight per sampler, got {len(samplers)} samplers and {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"blend weights must be finite, >= 0 and not all zero, got {list(weights)}")
        if len({s.seq_len for s in samplers}) != 1:
            raise ValueError(f"samplers disagree on seq_len: {[s.seq_len for s in samplers]}")
        self.samplers, self.p, self.batch_size = list(samplers), w / w.sum(), batch_size
        self.seq_len = samplers[0].seq_len
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, source) with x, y (B, T) and source (B,) the sampler index of each row."""
        src = self.rng.choice(len(self.samplers), size=self.batch_size, p=self.p)  # (B,)
        w = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)  # (B, T+1)
        for k in np.unique(src):
            rows = np.flatnonzero(src == k)
            s = self.samplers[k]
            w[rows] = _gather(s.tokens, s._starts(len(rows)), self.seq_len)
        x, y = _split_xy(w)
        return x, y, torch.from_numpy(src)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            x, y, _ = self.sample()
            yield x, y

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        for s, st in zip(self.samplers, state["samplers"], strict=True):
            s.load_state_dict(st)


def iter_eval_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_windows: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of consecutive windows that score every target of the split exactly once.

    Windows start at 0, T, 2T, ...; the last one is moved back to end at the stream's end and its targets already
    scored by the previous window are set to IGNORE. With `max_windows`, that many windows evenly spread over the
    split are used instead (deterministic; each target still scored at most once). The last batch may be smaller.
    """
    N = len(tokens)
    if N < seq_len + 1:
        raise ValueError(f"eval stream of {N} tokens is too short for windows of {seq_len} + 1")
    K = -(-(N - 1) // seq_len)  # windows needed to cover the N - 1 targets
    ks = np.arange(K)
    if max_windows and max_windows < K:
        ks = np.unique(np.linspace(0, K - 1, max_windows).round().astype(np.int64))
    starts = np.minimum(ks * seq_len, N - 1 - seq_len)
    scored_until = -1  # last stream position already scored as a target
    for i in range(0, len(starts), batch_size):
        s = starts[i : i + batch_size]
        x, y = _windows(tokens, s, seq_len)
        for r, start in enumerate(s.tolist()):
            overlap = scored_until - start  # targets at positions start+1 .. scored_until were scored before
            if overlap > 0:
                y[r, :overlap] = IGNORE
            scored_until = start + seq_len
        yield x, y


BatchStream = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
"""`stream(step)`: the batches of a seeded sampler positioned at optimizer step `step` (exact resume)."""


def batches_at_step(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, grad_accum: int = 1) -> BatchStream:
    """Random windows of one token stream, as a stream that can start at any optimizer step."""

    def start(step: int):
        sampler = ByteBatches(tokens, seq_len, batch_size, seed)
        for _ in range(step * grad_accum):
            sampler.sample()
        return iter(sampler)

    return start


def blended_batches_at_step(
    tokens: Sequence[np.ndarray],
    seq_len: int,
    batch_size: int,
    seed: int,
    grad_accum: int = 1,
    weights: Sequence[float] | None = None,
) -> BatchStream:
    """Batches drawn from several token streams (evenly unless `weights` say otherwise), startable at any step."""

    def start(step: int):
        samplers = [ByteBatches(t, seq_len, batch_size, seed + i) for i, t in enumerate(tokens)]
        blend = BlendedBatches(samplers, list(weights or [1.0] * len(samplers)), batch_size, seed)
        for _ in range(step * grad_accum):
            blend.sample()
        return iter(blend)

    return start


def eval_windows(
    tokens_by_subnet: dict[str, np.ndarray], seq_len: int, batch_size: int, max_batches: int
) -> dict[str, Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]]:
    """Deterministic validation windows per subnet (the same ones for every model of a run)."""
    max_windows = max_batches * batch_size
    return {
        name: (lambda t=tokens: iter_eval_windows(t, seq_len, batch_size, max_windows))
        for name, tokens in tokens_by_subnet.items()
    }
