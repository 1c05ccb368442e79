"""Bits per byte: the one score every expert, mixture, baseline and validator is compared by.

Distributions are over the 256 byte values only (special tokens are dropped and the rest renormalized), so a
single expert, a remote expert's wire reply and the mixture of many are all scored on the same events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


def window_bits(logp: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, T, 256) log-probs and (W, T) targets -> (W,) bits and (W,) scored bytes of each window."""
    picked, mask = target_log_probs(logp, targets)
    return -picked.sum(-1).double() / LN2, mask.sum(-1)


@dataclass
class WindowScores:
    """Bits per byte over a set of windows, and the worst single window (the tail a mean hides)."""

    bits: float = 0.0
    count: int = 0
    worst_window_bpb: float = float("nan")

    def add(self, logp: torch.Tensor, targets: torch.Tensor) -> None:
        bits, n = window_bits(logp, targets)
        self.bits += float(bits.sum())
        self.count += int(n.sum())
        scored = n > 0
        if scored.any():
            worst = float((bits[scored] / n[scored]).max())
            self.worst_window_bpb = worst if math.isnan(self.worst_window_bpb) else max(self.worst_window_bpb, worst)

    @property
    def bpb(self) -> float:
        """NaN when there was nothing to score."""
        return self.bits / self.count if self.count else float("nan")


@torch.no_grad()
def evaluate_model_windows(model: torch.nn.Module, windows, device: torch.device | str = "cpu") -> WindowScores:
    """Bits per byte of `model` over an iterable of (x, y) windows, with its worst window."""
    was_training = model.training
    model.eval()
    scores = WindowScores()
    for x, y in windows:
        scores.add(byte_log_probs(model(x.to(device))), y.to(device))
    model.train(was_training)
    return scores


@torch.no_grad()
def score_sets(
    predict: Callable[[torch.Tensor], torch.Tensor], sets: dict[str, Callable[[], Iterable]]
) -> tuple[dict[str, float], float]:
    """Run `predict` ((B, T) bytes -> (B, T, 256) log-probs) over named window sets: bits per byte of each set plus
    `all` (their plain mean), and the worst single window of any set (NaN when there are no sets)."""
    per_set, worst = {}, float("nan")
    for name, windows in sets.items():
        scores = WindowScores()
        for x, y in windows():
            scores.add(predict(x), y)
        per_set[name] = scores.bpb
        worst = scores.worst_window_bpb if math.isnan(worst) else max(worst, scores.worst_window_bpb)
    return macro_bpb(per_set), worst


def evaluate_model_bpb(model: torch.nn.Module, windows, device: torch.device | str = "cpu") -> float:
    """Bits per byte of `model` over an iterable of (x, y) windows; NaN when there is nothing to score."""
    return evaluate_model_windows(model, windows, device).bpb
