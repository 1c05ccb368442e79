"""A ByteLM as a `transformers` checkpoint: dense models as LlamaForCausalLM, MoE models as MixtralForCausalLM.

    from moe.export.hf_model import export_model
    export_model(model, "out/english-hf")   # then AutoModelForCausalLM.from_pretrained("out/english-hf")

Targets transformers 5.23.0 (the `hf` extra pins it). Our parameter names already follow Llama, so a dense model
only gains the `model.` prefix. For MoE layers, 5.23's in-memory Mixtral fuses each layer's experts:
`mlp.experts.gate_up_proj` (E, 2F, D) holds every expert's gate rows then its up rows (its forward does
`linear(x, gate_up_proj[e]).chunk(2, dim=-1)`), `mlp.experts.down_proj` is (E, D, F), and the router is
`mlp.gate.weight` (E, D). Our stacked weights are stored input-major, so
`gate_up_proj[e] = cat(w_gate[e].T, w_up[e].T)`, `down_proj[e] = w_down[e].T`, `gate.weight = router.weight`.
We fill a transformers model with those tensors (a strict load, so a renamed or reshaped parameter in another
version fails here, not silently later) and let its own `save_pretrained` write the files: on disk 5.23 converts
back to Mixtral's per-expert layout (`block_sparse_moe.experts.{i}.w1/w3/w2.weight`, `block_sparse_moe.gate`),
which is also what transformers 4.x reads.

Both architectures compute exactly what ByteLM does (RMSNorm, rotate-half RoPE with `rope_theta`, SwiGLU, no
biases, tied embeddings, and for Mixtral softmax -> top-k -> renormalised weights), so logits agree to float
rounding. What does not carry over: the router z-loss coefficient (Mixtral has none; only the load-balancing
coefficient becomes `router_aux_loss_coef`) and a training capacity factor (Mixtral is dropless, which is what our
layer computes whenever no expert overflows; a warning is logged when the source used one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from moe.export.hf_tokenizer import export_tokenizer
from moe.model.tokenizer import BOS, EOS, PAD
from moe.model.transformer import ByteLM, ModelConfig

logger = logging.getLogger(__name__)

TRANSFORMERS_VERSION = "5.23.0"
"""The transformers release whose layout this module writes (pinned by the `hf` extra)."""


def hf_config(cfg: ModelConfig) -> LlamaConfig | MixtralConfig:
    """LlamaConfig for a dense ModelConfig, MixtralConfig for a MoE one (fp32, tied embeddings, our special ids)."""
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,  # plain multi-head attention, no grouped queries
        head_dim=cfg.d_model // cfg.n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        attention_dropout=0.0,
        dtype="float32",
    )
    if cfg.moe_experts == 0:
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False, architectures=["LlamaForCausalLM"])
    return MixtralConfig(
        **common,
        num_local_experts=cfg.moe_experts,
        num_experts_per_tok=cfg.moe_top_k,
        router_aux_loss_coef=cfg.moe_balance_coef,
        output_router_logits=False,
        router_jitter_noise=0.0,
        sliding_window=None,
        architectures=["MixtralForCausalLM"],
    )


def hf_state_dict(model: ByteLM) -> dict[str, torch.Tensor]:
    """Our weights under transformers 5.23's in-memory names (fp32, CPU), the tied head included for a strict load."""
    sd = {name: t.detach().to("cpu", torch.float32) for name, t in model.state_dict().items()}
    out = {}
    for name, t in sd.items():
        if name == "lm_head.weight":
            out[name] = t
        elif name.endswith("mlp.router.weight"):
            out["model." + name.replace("mlp.router.", "mlp.gate.")] = t
        elif name.endswith("mlp.w_gate"):
            w_up = sd[name.replace("w_gate", "w_up")]
            gate_up = torch.cat([t.transpose(1, 2), w_up.transpose(1, 2)], dim=1)  # (E, 2F, D)
            out["model." + name.replace("mlp.w_gate", "mlp.experts.gate_up_proj")] = gate_up.contiguous()
        elif name.endswith("mlp.w_up"):
            continue  # fused into gate_up_proj with w_gate
        elif name.endswith("mlp.w_down"):
            down = t.transpose(1, 2)  # (E, D, F)
            out["model." + name.replace("mlp.w_down", "mlp.experts.down_proj")] = down.contiguous()
        else:
            out["model." + name] = t
    return out


def to_hf(model: ByteLM) -> LlamaForCausalLM | MixtralForCausalLM:
    """A transformers model computing the same function as `model`; RuntimeError if the names or shapes do not fit."""
    if transformers.__version__ != TRANSFORMERS_VERSION:
        logger.warning("transformers %s is not the pinned %s", transformers.__version__, TRANSFORMERS_VERSION)
    cfg = model.config
    if cfg.moe_experts > 0 and cfg.moe_capacity_factor > 0:
        logger.warning(
            "model was trained with capacity factor %s; the Mixtral export is dropless", cfg.moe_capacity_factor
        )
    cls = MixtralForCausalLM if cfg.moe_experts > 0 else LlamaForCausalLM
    hf = cls(hf_config(cfg)).to(torch.float32)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    hf.tie_weights()
    if hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("transformers model did not tie lm_head to embed_tokens")
    return hf.eval()


def export_model(model: ByteLM, out_dir: str | Path) -> Path:
    """Write config.json, generation_config.json, model.safetensors (fp32) and the byte tokenizer into `out_dir`.

    Files already in `out_dir` with those names are overwritten. Raises RuntimeError if the installed transformers
    lays Llama/Mixtral out differently from the pinned one (importing this module without it is an ImportError).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_hf(model).save_pretrained(out_dir, safe_serialization=True)
    export_tokenizer(out_dir, model_max_length=model.config.max_seq_len)
    return out_dir
