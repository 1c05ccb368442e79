"""The dense SwiGLU feed-forward block (Llama naming), shared by the model, the MoE layer's experts and benchmarks.

`down_proj(silu(gate_proj(x)) * up_proj(x))`, no biases. Each MoE expert in `moe.layers.MoEFeedForward` computes
exactly this function with its own slice of stacked weights, so a dense FFN with `d_ff = top_k * expert_d_ff` is the
equal-active-FLOPs baseline for the sparse layer.
"""

from __future__ import annotations

import logging

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
