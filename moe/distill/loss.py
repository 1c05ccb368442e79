"""The distillation loss: KL(teacher || student) on next-byte distributions, plus cross-entropy on the text.

Hinton et al.'s form: both distributions softened by a temperature T, the KL scaled by T^2 so its gradient keeps the
same size whatever T is. Only byte positions count (a special token as the next id has no byte distribution); the
student's logits over specials are dropped and the rest renormalised, as every model of the run is scored.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from moe.metrics import N_BYTES


class DistillLoss(NamedTuple):
    total: torch.Tensor
    """kl + hard_weight * hard: what the optimizer minimises."""
    kl: torch.Tensor
    """Mean KL(teacher || student) in nats per byte, at the temperature, times T^2."""
    hard: torch.Tensor
    """Mean next-byte cross-entropy on the text, in nats per byte."""


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logp: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    hard_weight: float = 0.0,
) -> DistillLoss:
    """(B, T, V) student logits, (B, T, 256) teacher log-probs and (B, T) next ids -> the loss over byte targets."""
    if teacher_logp.shape[:2] != student_logits.shape[:2] or teacher_logp.shape[-1] != N_BYTES:
        raise ValueError(f"teacher {tuple(teacher_logp.shape)} does not fit student {tuple(student_logits.shape)}")
    mask = (targets < N_BYTES).float()  # (B, T)
    n = mask.sum().clamp(min=1.0)
    logits = student_logits[..., :N_BYTES].float()
    student_t = F.log_softmax(logits / temperature, dim=-1)  # (B, T, 256)
    teacher_t = F.log_softmax(teacher_logp.float() / temperature, dim=-1)  # (B, T, 256)
    kl_rows = (teacher_t.exp() * (teacher_t - student_t)).sum(-1)  # (B, T)
    kl = (kl_rows * mask).sum() / n * temperature**2
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(max=N_BYTES - 1).unsqueeze(-1)).squeeze(-1)  # (B, T)
    hard = -(picked * mask).sum() / n
    return DistillLoss(kl + hard_weight * hard, kl, hard)
