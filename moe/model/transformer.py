"""A small Llama-style causal byte LM: pre-norm RMSNorm, RoPE, SwiGLU (or a sparse MoE FFN), tied embeddings.

Parameter names follow Hugging Face Llama (`embed_tokens`, `layers.N.self_attn.q_proj`, `mlp.gate_proj`, ...) so
every expert, seed and student exports to Llama/Mixtral without renaming, and experts trained apart share one
architecture that a Branch-Train-MiX student can stitch together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe.model.ffn import SwiGLU
from moe.model.tokenizer import VOCAB_SIZE


@dataclass
class ModelConfig:
    """One byte-level language model's shape; the defaults are the default run's ~0.84M-parameter experts."""

    vocab_size: int = VOCAB_SIZE
    """Byte vocabulary plus special tokens; shared by every expert so their outputs mix byte by byte."""
    d_model: int = 128
    """Width of the residual stream."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads (head size = d_model / n_heads)."""
    d_ff: int = 352
    """Hidden width of each SwiGLU FFN (Llama uses ~8/3 d_model rounded)."""
    max_seq_len: int = 128
    """Longest context in bytes; RoPE tables are built for it."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    moe_experts: int = 0
    """Local MoE experts per FFN; 0 keeps a dense SwiGLU."""
    moe_top_k: int = 2
    """Experts each token is routed to when moe_experts > 0."""
    moe_capacity_factor: float = 0.0
    """Capacity per expert as a multiple of the even share; 0 is dropless."""
    moe_balance_coef: float = 0.01
    """Weight of the Switch load-balancing loss (Switch Transformer used 0.01)."""
    moe_z_coef: float = 0.001
    """Weight of the router z-loss (ST-MoE used 0.001)."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head size must be even for RoPE")
        if self.vocab_size < 256:
            raise ValueError(f"vocab_size={self.vocab_size} cannot hold the 256 byte values")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (T, hs) in Hugging Face Llama's rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_heads, C // self.n_heads
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.moe_experts > 0:
            from moe.model.ffn import MoEFeedForward

            capacity = cfg.moe_capacity_factor or None
            self.mlp = MoEFeedForward(cfg.d_model, cfg.d_ff, cfg.moe_experts, cfg.moe_top_k, capacity)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)
        self.balance_coef, self.z_coef = cfg.moe_balance_coef, cfg.moe_z_coef

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(self.mlp, SwiGLU):
            return x + h, x.new_zeros(())
        return x + h.y, self.balance_coef * h.balance_loss + self.z_coef * h.z_loss


class ByteLM(nn.Module):
    """Causal LM over bytes; `forward(idx)` gives logits (B, T, vocab_size) and never looks ahead."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # weight tying
        cos, sin = rope_tables(cfg.max_seq_len, cfg.d_model // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight", "w_down")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, return_aux: bool = False):
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} bytes exceeds max_seq_len={self.config.max_seq_len}")
        cos, sin = (
            self.rope_cos[:T].to(self.embed_tokens.weight.dtype),
            self.rope_sin[:T].to(self.embed_tokens.weight.dtype),
        )
        x = self.embed_tokens(idx)  # (B, T, C)
        aux = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, layer_aux = layer(x, cos, sin)
            aux = aux + layer_aux
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return (logits, aux) if return_aux else logits

    def active_params(self) -> int:
        """Parameters one token uses: all of a dense model's; of a MoE model's FFNs, only its top-k experts'."""
        cfg = self.config
        idle_experts = max(0, cfg.moe_experts - cfg.moe_top_k) if cfg.moe_experts > 0 else 0
        return self.num_params() - cfg.n_layers * 3 * cfg.d_model * cfg.d_ff * idle_experts

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the active weights and the head, plus 12·L·d·T attention (PaLM, app. B)."""
        cfg = self.config
        n = self.active_params() - self.embed_tokens.weight.numel()
        attn = 12 * cfg.n_layers * cfg.d_model * cfg.max_seq_len
        return 6 * (n + cfg.d_model * cfg.vocab_size) + attn


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)
