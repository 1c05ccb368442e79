"""Bits per byte: the one score every expert, mixture, baseline and validator is compared by.

Distributions are over the 256 byte values only (special tokens are dropped and the rest renormalized), so a
single expert, a remote expert's wire reply and the mixture of many are all scored on the same events.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

N_BYTES = 256
LN2 = math.log(2.0)


def byte_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (..., 256) float32 log-probabilities over the next byte."""
    return F.log_softmax(logits[..., :N_BYTES].float(), dim=-1)


def target_log_probs(logp: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 256) log-probs and targets broadcastable to (...) -> (...) log-prob of each target byte (0 where the
    target is a special token: specials are not scored) and the (...) mask of positions that are bytes."""
    targets = targets.expand(logp.shape[:-1])
    mask = targets < N_BYTES
    picked = logp.gather(-1, targets.clamp(max=N_BYTES - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros((), dtype=picked.dtype)), mask


def bits_per_byte(logp: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Total bits and number of scored bytes; sum the pairs across batches, then divide."""
    picked, mask = target_log_probs(logp, targets)
    return float(-picked.sum()) / LN2, int(mask.sum())


def macro_bpb(per_subnet: dict[str, float]) -> dict[str, float]:
    """Per-subnet bits per byte plus `all`, their plain mean: every domain counts the same."""
    out = dict(per_subnet)
    out["all"] = float(np.mean(list(per_subnet.values()))) if per_subnet else float("nan")
    return out


@torch.no_grad()
def evaluate_model_bpb(model: torch.nn.Module, windows, device: torch.device | str = "cpu") -> float:
    """Bits per byte of `model` over an iterable of (x, y) windows; NaN when there is nothing to score."""
    was_training = model.training
    model.eval()
    bits, count = 0.0, 0
    for x, y in windows:
        logits = model(x.to(device))
        b, n = bits_per_byte(byte_log_probs(logits), y.to(device))
        bits, count = bits + b, count + n
    model.train(was_training)
    return bits / count if count else float("nan")
