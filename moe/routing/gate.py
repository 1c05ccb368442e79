"""The gating network: scores the currently known experts at every byte position from the bytes seen so far.

A score combines three terms, each causal (position t sees only x[:t+1] and the targets before t):
- a learned term, a small byte encoder's features dotted with a per-expert key (zero for a new expert),
- a c-BTM prior, minus the scaled distance between the input's running signature and the expert's published
  domain centroid, so an expert that joined a moment ago is routable at once,
- a Bayesian term, the expert's log-likelihood of the bytes already seen in this sequence, scaled by a learned
  factor (where an expert was not called, it contributes nothing),
- a trust term, the log of the expert's share of the validators' consensus relative to the others' (0 when they
  have not scored it yet), scaled by a learned factor: the gate learns how far to follow the validators.
Experts occupy slots; departed experts are masked with -inf, and a newcomer takes a fresh slot with a zero key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe.model.tokenizer import VOCAB_SIZE
from moe.routing.signature import SIGNATURE_DIM, running_signature


@dataclass
class GateScores:
    logits: torch.Tensor
    """(B, T, J) unnormalized scores over the J experts passed in."""
    features: torch.Tensor
    """(B, T, d) encoder features, kept for diagnostics."""


class CausalByteEncoder(nn.Module):
    """Byte embeddings -> two causal dilated convolutions -> running mean: features of x[:t+1] at each t."""

    def __init__(self, d: int, kernel: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, d)
        self.kernel = kernel
        self.conv1 = nn.Conv1d(d, d, kernel, dilation=1)
        self.conv2 = nn.Conv1d(d, d, kernel, dilation=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)  # (B, d, T)
        h = F.gelu(self.conv1(F.pad(h, (self.kernel - 1, 0))))  # (B, d, T), left-padded: causal
        h = F.gelu(self.conv2(F.pad(h, (4 * (self.kernel - 1), 0))))  # (B, d, T)
        h = h.transpose(1, 2)  # (B, T, d)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
        return h.cumsum(dim=1) / steps  # running mean: (B, T, d)


class Gate(nn.Module):
    """Scores J experts per position; `slots` (J,) say which learned key row each expert owns."""

    def __init__(self, d_gate: int = 64, max_experts: int = 256):
        super().__init__()
        self.encoder = CausalByteEncoder(d_gate)
        self.keys = nn.Parameter(torch.zeros(max_experts, d_gate))
        self.bias = nn.Parameter(torch.zeros(max_experts))
        self.centroid_scale = nn.Parameter(torch.tensor(20.0))
        self.likelihood_scale = nn.Parameter(torch.tensor(1.0))
        self.trust_scale = nn.Parameter(torch.tensor(0.25))  # a prior to earn its weight, not to dictate

    @property
    def max_experts(self) -> int:
        return self.keys.shape[0]

    def forward(
        self,
        x: torch.Tensor,
        slots: torch.Tensor,
        centroids: torch.Tensor,
        prefix_loglik: torch.Tensor | None = None,
        log_trust: torch.Tensor | None = None,
    ) -> GateScores:
        """x (B, T) bytes, slots (J,), centroids (J, S), prefix_loglik (B, T, J) summed log-probs of earlier bytes,
        log_trust (J,) the validators' relative trust in each expert."""
        h = self.encoder(x)  # (B, T, d)
        learned = h @ self.keys[slots].T + self.bias[slots]  # (B, T, J)
        sig = running_signature(x)  # (B, T, S)
        dist = (sig.unsqueeze(2) - centroids.view(1, 1, *centroids.shape)).pow(2).sum(-1)  # (B, T, J)
        logits = learned - self.centroid_scale.abs() * dist
        if prefix_loglik is not None:
            logits = logits + self.likelihood_scale.abs() * prefix_loglik
        if log_trust is not None:
            logits = logits + self.trust_scale.abs() * log_trust
        return GateScores(logits=logits, features=h)


def prefix_loglik(target_logp: torch.Tensor) -> torch.Tensor:
    """(B, T, J) log-prob of each target -> (B, T, J) sum over strictly earlier positions (0 at t = 0)."""
    return F.pad(target_logp.cumsum(dim=1)[:, :-1], (0, 0, 1, 0))


def mixture_log_probs(expert_logp: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor | None = None):
    """Mix (B, T, J, 256) expert log-probs with (B, T, J) gate logits into (B, T, 256), in probability space.

    `mask` (B, T, J) marks experts that answered for that position; the gate is renormalized over them, so a
    missing expert is averaged out rather than poisoning the mixture. Positions where no expert answered get
    the uniform distribution.
    """
    if mask is None:
        mask = torch.ones_like(gate_logits, dtype=torch.bool)
    none = ~mask.any(-1, keepdim=True)  # (B, T, 1) nobody answered
    # note: log_softmax over an all -inf row is NaN, so such rows get finite logits and are replaced below
    gate_logits = gate_logits.masked_fill(~mask & ~none, float("-inf"))
    log_w = torch.log_softmax(gate_logits, dim=-1)  # (B, T, J)
    keep = (torch.isfinite(log_w) & ~none).unsqueeze(-1)  # (B, T, J, 1) unanswered slots may hold anything
    safe_logp = torch.where(keep, expert_logp, torch.zeros_like(expert_logp))
    mixed = torch.logsumexp(log_w.unsqueeze(-1) + safe_logp, dim=2)  # (B, T, 256)
    uniform = torch.full_like(mixed, -torch.log(torch.tensor(256.0)).item())
    return torch.where(none, uniform, mixed)


def balance_loss(gate_logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Switch-style load balance over sequences: J * sum_j f_j * P_j (1.0 when perfectly even).

    gate_logits (B, J) at the routing decision, chosen (B, J) bool of the experts each sequence called.
    """
    J = gate_logits.shape[-1]
    probs = torch.softmax(gate_logits, dim=-1).mean(0)  # (J,)
    frac = chosen.float().mean(0) / chosen.float().sum(-1).mean().clamp(min=1)  # (J,)
    return J * (frac * probs).sum()


__all__ = ["Gate", "GateScores", "SIGNATURE_DIM", "balance_loss", "mixture_log_probs", "prefix_loglik"]
