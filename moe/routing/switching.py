"""Byte-level switching: a causal Bayesian mixture whose weight can move from expert to expert within a sequence.

Choosing experts once per sequence fails where text changes under the router's feet (a Persian file's ASCII markup,
a code comment in prose): the chosen specialist keeps its weight and pays 10+ bits a byte. Fixed-share switching
(Herbster & Warmuth, "Tracking the best expert", 1998) fixes that at the mixing step. Weights start at a prior π; after
each byte they become the Bayesian posterior, then a fraction α of the mass is shared back out by π:

    w_{t+1}(e) = (1 - α) · w_t(e) p_e(x_t) / Σ_j w_t(j) p_j(x_t)  +  α · π_{t+1}(e)

so an expert that predicted the past well but fails now loses its weight within a few bytes, and one that starts to
predict well regains it. With α = 0 this is the plain per-sequence Bayesian mixture. Everything is causal: the
prediction for byte t uses only bytes before t.

`reset_at` lets a caller bring in more experts mid-sequence (the router escalates when the mixture's recent loss
jumps): from position t* + 1 on, those experts are available and the weights restart from π times each expert's
likelihood of the last `reset_window` bytes, which only uses bytes already seen (so a newcomer's log-probs for those
bytes must be real: the router calls it on the whole window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe.metrics import LN2, N_BYTES

NEG_INF = float("-inf")


@dataclass
class SwitchOutput:
    logp: torch.Tensor
    """(B, T, 256) mixture log-probs of the next byte."""
    log_weights: torch.Tensor
    """(B, T, J) log-weights each expert had when byte t was predicted (-inf where unavailable)."""
    target_bits: torch.Tensor
    """(B, T) bits the mixture paid for each target (0 where the target is not a byte)."""


def _normalize(log_w: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Renormalise (B, J) log-weights over the available experts; a row with none available stays all -inf."""
    log_w = log_w.masked_fill(~available, NEG_INF)
    total = torch.logsumexp(log_w, dim=-1, keepdim=True)
    return torch.where(torch.isfinite(total), log_w - total, torch.full_like(log_w, NEG_INF))


def switching_mixture(
    logp: torch.Tensor,
    targets: torch.Tensor,
    available: torch.Tensor,
    alpha: float,
    prior_logits: torch.Tensor | None = None,
    reset_at: torch.Tensor | None = None,
    reset_window: int = 16,
) -> SwitchOutput:
    """Mix J experts' (B, T, J, 256) next-byte log-probs with fixed-share weights; targets (B, T) are the bytes that
    followed (ids >= 256 update nothing), available (B, T, J) marks which experts answered at each position.

    `prior_logits` (B, T, J) give π (uniform over the available experts when None); `reset_at` (B,) is the position
    after which a row's weights restart (-1: never), see the module docstring. A position where no expert is
    available is predicted uniform.
    """
    B, T, J, V = logp.shape
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    prior = torch.zeros(B, T, J) if prior_logits is None else prior_logits.float()
    log_pi = torch.stack([_normalize(prior[:, t], available[:, t]) for t in range(T)], dim=1)  # (B, T, J)
    is_byte = targets < V
    tgt = targets.clamp(max=V - 1)
    lp_all = logp.gather(-1, tgt[:, :, None, None].expand(B, T, J, 1)).squeeze(-1)  # (B, T, J) log p_e(target)
    lp_all = torch.where(is_byte[..., None], lp_all, torch.zeros(()))  # specials are not scored by anyone
    lp_t = torch.where(available, lp_all, torch.zeros(()))
    reset = torch.full((B,), -1, dtype=torch.long) if reset_at is None else reset_at.long()
    log_keep, log_share = (math.log1p(-alpha), math.log(alpha)) if alpha > 0 else (0.0, NEG_INF)
    uniform = torch.full((B, V), -math.log(V))

    out = torch.empty(B, T, V)
    weights = torch.empty(B, T, J)
    bits = torch.zeros(B, T)
    log_w = log_pi[:, 0]
    for t in range(T):
        restart = reset + 1 == t  # (B,) rows whose extra experts join now
        if restart.any():
            lo = max(0, t - reset_window)
            recent = lp_all[:, lo:t].sum(1)  # (B, J) how well each expert predicted the bytes just seen
            log_w = torch.where(restart[:, None], log_pi[:, t] + recent, log_w)
        log_w = _normalize(log_w, available[:, t])
        stuck = available[:, t].any(-1, keepdim=True) & ~torch.isfinite(log_w).any(-1, keepdim=True)
        log_w = torch.where(stuck, log_pi[:, t], log_w)  # with alpha = 0 only the experts that just arrived answer
        weights[:, t] = log_w
        mixed = torch.logsumexp(log_w[..., None] + logp[:, t], dim=1)  # (B, 256)
        none = ~available[:, t].any(-1, keepdim=True)
        out[:, t] = torch.where(none, uniform, mixed)
        picked = out[:, t].gather(-1, tgt[:, t, None]).squeeze(-1)
        bits[:, t] = torch.where(is_byte[:, t], -picked / LN2, torch.zeros(()))
        posterior = _normalize(log_w + lp_t[:, t], available[:, t])
        if t + 1 < T:
            shared = torch.logaddexp(posterior + log_keep, log_pi[:, t + 1] + log_share)
            log_w = torch.where(torch.isfinite(posterior).any(-1, keepdim=True), shared, log_pi[:, t + 1])
    return SwitchOutput(logp=out, log_weights=weights, target_bits=bits)


def gate_prior(gate_logits: torch.Tensor, gate_weight: float, generalist_share: float | None = None) -> torch.Tensor:
    """The switching prior π as (B, T, J[+1]) logits: a `gate_weight` share follows the gate's softmax, the rest is
    uniform, so weight shared back after each byte goes mostly where the gate expects it (keeping what it learned in
    distribution) and still reaches every candidate (so a surprise can move it anywhere). With `generalist_share`
    the generalist is appended last, its gate logit that share of the experts' total."""
    g = gate_logits.detach().float()
    if generalist_share is not None:
        g = torch.cat([g, torch.logsumexp(g, -1, keepdim=True) + math.log(generalist_share)], -1)
    n = g.shape[-1]
    follow = torch.log_softmax(g, -1) + math.log(gate_weight) if gate_weight > 0 else torch.full_like(g, NEG_INF)
    spread = math.log((1 - gate_weight) / n) if gate_weight < 1 else NEG_INF
    return torch.logaddexp(follow, torch.full_like(g, spread))


def first_loss_jump(target_bits: torch.Tensor, window: int, threshold_bits: float, start: int = 0) -> torch.Tensor:
    """(B,) the first position t >= start at which the mean bits of the last `window` targets (up to and including t)
    exceed `threshold_bits`, or -1: where a router brings in experts it did not call."""
    B, T = target_bits.shape
    csum = F.pad(target_bits.cumsum(1), (1, 0))  # (B, T+1)
    t = torch.arange(T)
    lo = (t + 1 - window).clamp(min=0)
    mean = (csum[:, t + 1] - csum[:, lo]) / (t + 1 - lo).clamp(min=1)  # (B, T)
    hot = (mean > threshold_bits) & (t >= max(start, window - 1))
    first = torch.where(hot.any(1), hot.float().argmax(1), torch.full((B,), -1))
    return first.long()


__all__ = ["N_BYTES", "SwitchOutput", "first_loss_jump", "gate_prior", "switching_mixture"]
