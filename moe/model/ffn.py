"""Feed-forward blocks: the dense SwiGLU (Llama naming) and the sparse mixture-of-experts layer built from it.

SwiGLU is `down_proj(silu(gate_proj(x)) * up_proj(x))`, no biases. `MoEFeedForward` is a Mixtral-style top-k token
choice layer, dropless by default, whose every expert computes exactly that function with its own slice of stacked
weights, so a dense FFN with `d_ff = top_k * expert_d_ff` is the equal-active-FLOPs baseline for the sparse layer.

Each token's router logits go through a softmax; the top-k experts are kept and their k weights renormalised to sum
to one. Token-assignments are sorted by expert so every expert runs one matmul over a contiguous slice of the sorted
buffer (a grouped matmul), and the weighted results are scattered back with `index_add_`. The grouped matmul is a
Python loop of `torch.mm` over non-empty experts: torch's `grouped_mm` is CUDA-bf16 oriented, and on CPU (torch 2.13)
its backward fails and its forward is slower than the loop. A fused custom autograd kernel was measured no faster.

With a `capacity_factor`, each expert accepts at most `ceil(capacity_factor * tokens * top_k / n_experts)`
assignments; later ones (in token order) are dropped and contribute zero, so the residual stream carries that token
through the block unchanged. Without it no assignment is ever dropped.

Experts are stored as stacked weights so the layer holds three parameters instead of 3 * n_experts modules. For a
Hugging Face Mixtral export, expert `i` maps as `w_gate[i].T -> experts.{i}.w1.weight`,
`w_up[i].T -> experts.{i}.w3.weight`, `w_down[i].T -> experts.{i}.w2.weight`, and `router.weight -> gate.weight`.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class SwiGLU(nn.Module):
    """Gated feed-forward block: (..., d_model) -> (..., d_model) through a hidden width `d_ff`."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        if d_model <= 0 or d_ff <= 0:
            raise ValueError(f"SwiGLU needs positive sizes, got d_model={d_model}, d_ff={d_ff}")
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEOutput(NamedTuple):
    """What one MoE forward returns; add the two losses (scaled by their coefficients) to the training loss."""

    y: torch.Tensor
    """(B, T, D) layer output, to be added to the residual stream."""
    balance_loss: torch.Tensor
    """Scalar Switch load-balancing loss E * sum_e f_e * P_e; 1.0 when routing is perfectly uniform."""
    z_loss: torch.Tensor
    """Scalar router z-loss mean(logsumexp(logits)^2), keeping router logits small."""
    expert_load: torch.Tensor
    """(E,) fraction of token-assignments routed to each expert (before capacity drops), detached."""


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Most assignments one expert accepts: ceil(capacity_factor * tokens * k / E)."""
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of SwiGLU experts: (B, T, D) -> MoEOutput.

    Raises ValueError on impossible sizes at construction and on an input whose shape does not end in `d_model`.
    Dropped assignments (capacity mode only) silently contribute zero; `expert_load` shows the imbalance behind them.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int = 2,
        capacity_factor: float | None = None,
        router_jitter: float = 0.0,
    ):
        super().__init__()
        if d_model <= 0 or d_ff <= 0 or n_experts <= 0:
            raise ValueError(f"MoE sizes must be positive, got d_model={d_model}, d_ff={d_ff}, n_experts={n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be positive or None (dropless), got {capacity_factor}")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"router_jitter must be in [0, 1), got {router_jitter}")
        self.d_model, self.d_ff, self.n_experts, self.top_k = d_model, d_ff, n_experts, top_k
        self.capacity_factor = capacity_factor
        self.router_jitter = router_jitter
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same scale as nn.Linear's default, so each expert starts like a fresh dense SwiGLU."""
        for w, fan_in in ((self.w_gate, self.d_model), (self.w_up, self.d_model), (self.w_down, self.d_ff)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
        self.router.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, router_jitter={self.router_jitter}"
        )

    def forward(self, x: torch.Tensor) -> MoEOutput:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MoEFeedForward expects (B, T, {self.d_model}), got {tuple(x.shape)}")
        B, T, D = x.shape
        E, k = self.n_experts, self.top_k
        xf = x.reshape(B * T, D)  # (N, D)
        N = xf.shape[0]

        # routing
        xr = xf
        if self.training and self.router_jitter > 0:
            # Switch Transformer jitter: multiplicative noise on the router input only, never on the experts' input
            xr = xf * torch.empty_like(xf).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
        logits = self.router(xr)  # (N, E)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in at least fp32
        probs = logits.softmax(dim=-1)  # (N, E)
        topw, topi = probs.topk(k, dim=-1)  # (N, k), (N, k)
        topw = topw / topw.sum(dim=-1, keepdim=True)

        # aux losses; assignments counted before capacity drops, since they measure the router's choice
        counts = torch.bincount(topi.reshape(-1), minlength=E)  # (E,)
        load = counts.float() / max(N * k, 1)  # (E,)
        balance_loss = E * (load * probs.mean(dim=0)).sum() if N > 0 else logits.new_zeros(())
        z_loss = torch.logsumexp(logits, dim=-1).square().mean() if N > 0 else logits.new_zeros(())

        # sort assignments by expert; the stable sort keeps token order within an expert (capacity drops by it)
        flat_e = topi.reshape(-1)  # (N*k,)
        order = torch.argsort(flat_e, stable=True)  # (N*k,)
        counts_l = counts.tolist()  # note: host sync, needed to size the per-expert slices
        if self.capacity_factor is not None:
            cap = expert_capacity(N, k, E, self.capacity_factor)
            starts = counts.cumsum(0) - counts  # (E,)
            rank = torch.arange(N * k, device=x.device) - starts[flat_e[order]]  # (N*k,) position within expert
            order = order[rank < cap]
            dropped = sum(max(c - cap, 0) for c in counts_l)
            if dropped:
                logger.debug("capacity %d per expert dropped %d of %d assignments", cap, dropped, N * k)
            counts_l = [min(c, cap) for c in counts_l]
        tok = order // k  # (M,) token of each kept assignment, sorted by expert
        w = topw.reshape(-1)[order].to(x.dtype)  # (M,)

        xs = xf.index_select(0, tok)  # (M, D)
        ys = self._experts(xs, counts_l)  # (M, D)
        y = xf.new_zeros(N, D).index_add_(0, tok, ys * w[:, None])  # (N, D)
        return MoEOutput(y.view(B, T, D), balance_loss, z_loss, load.detach())

    def _experts(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """SwiGLU of expert e on its contiguous slice of the expert-sorted buffer; (M, D) -> (M, D)."""
        outs = []
        # unbind/split once: their backward stacks/concatenates all slices, where per-expert indexing would
        # materialise a full-size zero gradient for every expert
        experts = zip(self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0), xs.split(counts), strict=True)
        for wg, wu, wd, xe in experts:
            if xe.shape[0] == 0:
                continue
            h = F.silu(xe @ wg) * (xe @ wu)  # (n_e, F)
            outs.append(h @ wd)  # (n_e, D)
        return torch.cat(outs) if outs else xs.new_zeros(0, self.d_model)
