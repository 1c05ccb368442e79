"""Real tiny models and mixture outputs for the distillation tests (no network: a local model is the teacher)."""

from __future__ import annotations

import torch

from moe.metrics import byte_log_probs
from moe.model.transformer import ByteLM, ModelConfig
from moe.routing.mixing import MixOutput

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)
EXPERT_A, EXPERT_B = "a" * 64, "b" * 64


def tiny_model(seed: int, sharpness: float = 1.0) -> ByteLM:
    """A random tiny model; `sharpness` scales its (tied) embeddings, so its next-byte distributions are peaked."""
    torch.manual_seed(seed)
    model = ByteLM(TINY)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(sharpness)
    return model


def two_expert_mix(a: ByteLM, b: ByteLM, gate_bias: float = 2.0):
    """A mixture of two local models that both answer everywhere, the gate leaning on `a` by `gate_bias` nats."""

    @torch.no_grad()
    def mix(x: torch.Tensor) -> MixOutput:
        la, lb = byte_log_probs(a(x)), byte_log_probs(b(x))
        B, T = x.shape
        gate = torch.tensor([gate_bias, 0.0]).expand(B, T, 2)
        w = gate.softmax(-1)
        logp = torch.logsumexp(torch.stack([la + w[..., :1].log(), lb + w[..., 1:].log()]), 0)
        answered = torch.ones(B, T, 2, dtype=torch.bool)
        chosen = torch.ones(B, 2, dtype=torch.bool)
        return MixOutput(logp, gate.clone(), chosen, answered, keys=[EXPERT_A, EXPERT_B], expert_positions=2 * B * T)

    return mix
