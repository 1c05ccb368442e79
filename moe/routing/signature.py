"""Domain signatures: a fixed, public embedding of bytes that every node computes identically.

An expert publishes the centroid of its training data's signatures in its DHT record; until the router's gate has
learned a new expert, it routes to it by the distance between the input's running signature and that centroid, as
c-BTM routes by cluster centroids. The embedding is a histogram of hashed byte bigrams: no weights, no training,
nothing a peer could disagree about.
"""

from __future__ import annotations

import numpy as np
import torch

SIGNATURE_DIM = 32
"""Buckets of the hashed bigram histogram."""
_MULT = 0x9E3779B1  # Knuth's multiplicative hash constant: spreads (prev, cur) byte pairs over the buckets


def bigram_buckets(x: torch.Tensor) -> torch.Tensor:
    """(B, T) byte ids -> (B, T) bucket of the bigram ending at each position (the first uses a zero 'previous')."""
    prev = torch.nn.functional.pad(x[:, :-1], (1, 0), value=0)
    return ((prev.long() * 257 + x.long()) * _MULT % (1 << 32)) % SIGNATURE_DIM


def running_signature(x: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, S) normalized bigram histogram of x[:, :t+1] at each t: causal by construction."""
    onehot = torch.nn.functional.one_hot(bigram_buckets(x), SIGNATURE_DIM).float()  # (B, T, S)
    counts = onehot.cumsum(dim=1)  # (B, T, S)
    return counts / counts.sum(-1, keepdim=True)


def domain_centroid(windows: np.ndarray | torch.Tensor) -> list[float]:
    """Centroid of the full-window signatures of (N, T) byte windows: what an expert publishes about its data."""
    x = torch.as_tensor(np.asarray(windows), dtype=torch.long).clamp(max=255)
    sig = running_signature(x)[:, -1]  # (N, S)
    return [round(float(v), 6) for v in sig.mean(0)]
