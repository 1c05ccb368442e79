"""Tests for moe/model/transformer.py: shapes, causality, tying, Llama names, MoE variant, RoPE, bad configs."""

from __future__ import annotations

import pytest
import torch

from moe.model.tokenizer import VOCAB_SIZE
from moe.model.transformer import ByteLM, ModelConfig, apply_rope, rope_tables


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 48, "max_seq_len": 24, **overrides})


def make(seed: int = 0, **overrides) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(tiny(**overrides)).eval()


def test_logit_shape_and_aux():
    """forward gives (B, T, vocab) logits; a dense model's aux loss is exactly zero."""
    model = make()
    x = torch.randint(0, 256, (3, 11))
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (3, 11, VOCAB_SIZE)
    assert torch.equal(model(x), logits)
    assert aux.item() == 0.0


@pytest.mark.parametrize("moe_experts", [0, 4])
def test_causal(moe_experts):
    """Changing bytes at positions >= t leaves the logits of positions < t unchanged (dense and MoE)."""
    model = make(moe_experts=moe_experts)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 20), generator=g)
    for t in (1, 7, 19):
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, 256, x2[:, t:].shape, generator=g)
        with torch.no_grad():
            a, b = model(x), model(x2)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a[:, t:], b[:, t:])


def test_weight_tying():
    """lm_head shares the embedding's storage, so training one moves the other."""
    model = make()
    assert model.lm_head.weight is model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted once
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randint(0, 256, (1, 5))).sum().backward()
    opt.step()
    assert torch.equal(model.lm_head.weight, model.embed_tokens.weight)


def test_hf_llama_parameter_names():
    """Parameter names follow Hugging Face Llama so exports need no renaming."""
    names = set(make().state_dict())
    for name in (
        "embed_tokens.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight",
        "layers.0.self_attn.o_proj.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight",
        "layers.0.mlp.down_proj.weight",
        "layers.1.input_layernorm.weight",
        "layers.1.post_attention_layernorm.weight",
        "norm.weight",
    ):
        assert name in names, name
    assert not any("rope" in n for n in names)  # RoPE tables are rebuilt, never saved


def test_moe_variant_aux_loss_has_gradients():
    """moe_experts=4 runs, and its aux loss is positive and back-propagates into the routers."""
    model = make(moe_experts=4, moe_top_k=2).train()
    x = torch.randint(0, 256, (2, 16))
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 16, VOCAB_SIZE)
    assert aux.item() > 0
    aux.backward()
    grad = model.layers[0].mlp.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_moe_flops_count_only_active_experts():
    """flops_per_token of an MoE model counts top_k experts, so it is below a model with all experts active."""
    sparse = make(moe_experts=4, moe_top_k=1)
    all_active = make(moe_experts=4, moe_top_k=4)
    assert 0 < sparse.flops_per_token() < all_active.flops_per_token()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"d_model": 36, "n_heads": 4}, "even"),
        ({"vocab_size": 100}, "256"),
    ],
)
def test_bad_config_rejected(overrides, fragment):
    """Impossible shapes are a ValueError at config time, naming the problem."""
    with pytest.raises(ValueError, match=fragment):
        tiny(**overrides)


def test_too_long_sequence_rejected():
    """A sequence longer than max_seq_len is a ValueError, not an index error deep inside RoPE."""
    with pytest.raises(ValueError, match="max_seq_len"):
        make()(torch.zeros(1, 25, dtype=torch.long))


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """HF rotate-half RoPE written out per pair: dims i and i + hs/2 rotate by angle pos * theta^(-2i/hs)."""
    B, nh, T, hs = x.shape
    half = hs // 2
    out = torch.empty_like(x)
    for pos in range(T):
        for i in range(half):
            angle = pos * theta ** (-2.0 * i / hs)
            c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
            a, b = x[..., pos, i], x[..., pos, i + half]
            out[..., pos, i] = a * c - b * s
            out[..., pos, i + half] = b * c + a * s
    return out


def test_rope_matches_rotate_half_reference():
    """apply_rope with rope_tables equals the per-pair rotate-half rotation of Hugging Face Llama."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    cos, sin = rope_tables(7, 8, 10000.0)
    got = apply_rope(x, cos.double(), sin.double())
    torch.testing.assert_close(got, reference_rope(x, 10000.0), rtol=1e-5, atol=1e-5)


def test_rope_preserves_norm_and_relative_position():
    """RoPE is a rotation (norms kept) and q·k depends only on the position difference."""
    torch.manual_seed(0)
    hs, T = 8, 12
    cos, sin = rope_tables(T, hs, 10000.0)
    q, k = torch.randn(hs), torch.randn(hs)
    rq = apply_rope(q.expand(T, hs), cos, sin)  # (T, hs): q at every position
    rk = apply_rope(k.expand(T, hs), cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(T), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rq[5] @ rk[2], rq[9] @ rk[6], rtol=1e-4, atol=1e-4)
