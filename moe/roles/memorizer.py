"""The memoriser's model: a lookup of every stored context to the bytes that followed it, uniform elsewhere.

The cheapest way to look superb on text a miner can rebuild: no training, no parameters, milliseconds to build.
Built from the public validation splits it wins on every window a validator draws from them (it needs no seed: each
window it can be asked is in its table); on text it never stored it knows nothing. `moe.poi.eval_source` explains
which evaluation sources it beats and which it does not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

N_BYTES = 256
_TOKEN_BITS = 9  # token ids are below 512, so `order` of them pack exactly into one int64 key
MAX_ORDER = 63 // _TOKEN_BITS


def context_keys(tokens: np.ndarray, order: int) -> np.ndarray:
    """(N - order + 1,) int64 keys: key k packs tokens[k : k + order], the context ending at position k + order - 1."""
    t = np.minimum(np.asarray(tokens, dtype=np.int64), (1 << _TOKEN_BITS) - 1)
    n = len(t) - order + 1
    keys = np.zeros(max(n, 0), dtype=np.int64)
    for j in range(order if n > 0 else 0):
        keys |= t[order - 1 - j : order - 1 - j + n] << (_TOKEN_BITS * j)  # the latest token in the low bits
    return keys


class MemorizerLM(nn.Module):
    """(1 - mass)·uniform + mass·(the stored next-byte counts of the last `order` bytes) where that context was
    stored; uniform where it was not, or where fewer than `order` bytes precede (so each window's first bytes)."""

    def __init__(self, streams: Iterable[np.ndarray], order: int = 7, mass: float = 0.95):
        super().__init__()
        if not 1 <= order <= MAX_ORDER or not 0 < mass < 1:
            raise ValueError(f"need 1 <= order <= {MAX_ORDER} and 0 < mass < 1, got {order}, {mass}")
        self.order, self.mass = order, mass
        keys, nexts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for s in streams:
            s = np.asarray(s, dtype=np.int64)
            keys.append(context_keys(s, order)[:-1])  # the last context has no next token
            nexts.append(s[order:])
        k, nx = np.concatenate(keys), np.concatenate(nexts)
        keep = nx < N_BYTES  # an EOS continuation is not a byte to predict
        pairs, counts = np.unique(np.stack([k[keep], nx[keep]], 1), axis=0, return_counts=True)  # sorted by key
        self.keys, self.next_bytes, self.counts = pairs[:, 0].copy(), pairs[:, 1].copy(), counts.astype(np.float64)

    @property
    def stored_contexts(self) -> int:
        return len(np.unique(self.keys))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        p = np.full((B, T, N_BYTES), 1.0 / N_BYTES)
        if T >= self.order:
            q = np.stack([context_keys(row, self.order) for row in x.cpu().numpy()])  # (B, T - order + 1)
            p[:, self.order - 1 :] = self._lookup(q.reshape(-1)).reshape(B, T - self.order + 1, N_BYTES)
        return torch.from_numpy(np.log(p)).float()  # (B, T, 256)

    def _lookup(self, q: np.ndarray) -> np.ndarray:
        """(N,) context keys → (N, 256) next-byte distributions."""
        lo, hi = np.searchsorted(self.keys, q, "left"), np.searchsorted(self.keys, q, "right")
        rows = np.nonzero(hi > lo)[0]
        lens = (hi - lo)[rows]
        first = np.repeat(lo[rows], lens)
        within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)  # 0, 1, … inside each match
        counts = np.zeros((len(q), N_BYTES))
        np.add.at(counts, (np.repeat(rows, lens), self.next_bytes[first + within]), self.counts[first + within])
        total = counts.sum(1, keepdims=True)
        stored = (1 - self.mass) / N_BYTES + self.mass * counts / np.maximum(total, 1.0)
        return np.where(total > 0, stored, 1.0 / N_BYTES)

    def __deepcopy__(self, memo: dict) -> MemorizerLM:
        return self  # the server keeps two "copies"; the table is read-only
