"""Branch-Train-MiX (Sukhbaatar et al. 2024): stitch dense domain experts into one sparse MoE student.

Every domain expert is a dense ByteLM branched from the network's seed and trained on its own domain, so the experts
share an architecture and, roughly, a coordinate system. BTX keeps each expert's FFN whole, as expert `e` of every
layer's `MoEFeedForward` (layer by layer, same index), and averages everything else (attention, norms, embeddings).
The network's seed can join as one more, generalist, expert.

The paper starts the router at random and lets fine-tuning learn it; here it starts from the domains. Layer by
layer (layers below already built, so each layer sees what the student itself feeds it), `c_e` is the mean FFN
input over a batch of domain e and router row e is `s * M^-1 (c_e - mean_f c_f)`, with `M` the FFN inputs'
uncentred second moment, shrunk towards its mean diagonal. That is least squares onto one-hot domain labels: the
bias-free router cannot hold nearest-centroid's per-expert offset `-|c_e|^2 / 2`, and `M^-1` lets it borrow one
from the near-constant directions of the normed inputs. Measured on the tests' three synthetic domains at
d_model=128, 4 layers, experts grown 40 steps from a seed trained 100 steps on all three: plain centroid
differences (`shrinkage=1`) sent only 53 % of Persian tokens home at layer 3 (long centroids win dot products);
this sends >= 95 % home at every layer. The rows sum to zero, so subtracting the mean costs nothing in the softmax
and a zero row sits at the mean domain logit.

Logits are linear in the token, so `c_e . (r_e - r_f)` is the mean logit gap over domain e's tokens between expert
e and rival f; `s` sets that gap to each domain's nearest rival, averaged over domains, to `logit_margin`. The top-1
choice does not depend on `s`, the mixing weights do: 2 nats give the own expert sigmoid(2) = 0.88 of a top-2 mix,
confident yet not saturated, so fine-tuning still gets router gradient.

The averaged non-FFN weights are BTX's weak point before fine-tuning. Experts that share their attention and
embeddings (trained FFN-only) come back exactly through top-1 routing; experts that trained everything give a
student whose init loss can sit above the plain weight average's (same d_model=128 run: English 3.43 vs 3.29 bpb,
math 3.52 vs 3.35, Persian 3.49 vs 3.65; the experts score 2.33, 2.62, 2.65), because each FFN now reads averaged
attention and embeddings. BTX expects the student to be fine-tuned (or distilled) afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, replace

import torch

from moe.model.ffn import MoEFeedForward, SwiGLU
from moe.model.transformer import ByteLM, ModelConfig

logger = logging.getLogger(__name__)


def btx_config(expert_cfg: ModelConfig, n_experts: int, top_k: int) -> ModelConfig:
    """The student's config: the experts' shape with a `n_experts`-way top-`top_k` MoE FFN in every block."""
    if expert_cfg.moe_experts:
        raise ValueError(f"BTX merges dense experts, got an MoE config (moe_experts={expert_cfg.moe_experts})")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    return replace(expert_cfg, moe_experts=n_experts, moe_top_k=top_k)


def _shape(cfg: ModelConfig) -> dict:
    """The config fields that fix a dense model's weights and their meaning (the moe_* ones do not)."""
    return {k: v for k, v in asdict(cfg).items() if not k.startswith("moe_")}


def _check_inputs(
    experts: Sequence[ByteLM], domain_batches: Sequence[torch.Tensor], generalist: ByteLM | None
) -> ModelConfig:
    if not experts:
        raise ValueError("build_btx needs at least one expert, got none")
    models = [*experts, *([generalist] if generalist is not None else [])]
    names = [f"expert {i}" for i in range(len(experts))] + ["the generalist"] * (generalist is not None)
    cfg = experts[0].config
    for name, m in zip(names, models, strict=True):
        if not isinstance(m, ByteLM):
            raise ValueError(f"{name} is a {type(m).__name__}, not a ByteLM")
        if m.config.moe_experts:
            raise ValueError(f"{name} is already an MoE (moe_experts={m.config.moe_experts}); BTX merges dense models")
        if _shape(m.config) != _shape(cfg):
            diff = sorted(k for k, v in _shape(m.config).items() if _shape(cfg)[k] != v)
            raise ValueError(f"{name} differs in shape from expert 0 (in {diff}); BTX needs one architecture")
    if len(domain_batches) != len(experts):
        raise ValueError(f"need one domain batch per expert, got {len(domain_batches)} for {len(experts)} experts")
    for i, idx in enumerate(domain_batches):
        if idx.dim() != 2 or idx.dtype.is_floating_point or idx.numel() == 0 or idx.shape[1] > cfg.max_seq_len:
            raise ValueError(
                f"domain batch {i} must be a non-empty (B, T <= {cfg.max_seq_len}) integer tensor of byte ids, "
                f"got {tuple(idx.shape)} {idx.dtype}"
            )
    return cfg


def ffn_inputs(model: ByteLM, idx: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's FFN input (the post-attention RMSNorm output) for the (B, T) batch `idx`, as (B*T, D) tensors."""
    captured: list[torch.Tensor] = []
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(0, 1)))
        for layer in model.layers
    ]
    try:
        with torch.no_grad():
            model(idx.to(model.embed_tokens.weight.device))
    finally:
        for h in hooks:
            h.remove()
    return captured


def routing_table(model: ByteLM, domain_batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """(L, n_domains, E) fraction of each domain's tokens whose top-1 expert is each expert, layer by layer."""
    E = model.config.moe_experts
    table = torch.zeros(model.config.n_layers, len(domain_batches), E)
    for d, idx in enumerate(domain_batches):
        for li, (layer, x) in enumerate(zip(model.layers, ffn_inputs(model, idx), strict=True)):
            top1 = layer.mlp.router(x).argmax(-1)  # (N,)
            table[li, d] = torch.bincount(top1, minlength=E).float().cpu() / top1.numel()
    return table


def centroid_router(inputs: Sequence[torch.Tensor], logit_margin: float, shrinkage: float) -> torch.Tensor:
    """Each domain's (N_e, D) FFN inputs -> (n_domains, D) router rows `s * M^-1 (c_e - mean c)` (see module doc).

    `shrinkage` in (0, 1] blends `M` with its mean diagonal; 1 gives plain centroid differences. A single domain, or
    indistinguishable ones (all centroids equal, logged as a warning), give zero rows: uniform routing.
    """
    xs = [x.double() for x in inputs]
    c = torch.stack([x.mean(0) for x in xs])  # (n, D)
    delta = c - c.mean(0)  # (n, D)
    if len(c) < 2:
        return torch.zeros_like(c)
    if delta.norm() <= 1e-9 * c.norm():
        logger.warning("btx: domain centroids coincide; the router starts uniform")
        return torch.zeros_like(c)
    eye = torch.eye(c.shape[1], dtype=c.dtype, device=c.device)
    m = sum(x.T @ x / len(x) for x in xs) / len(xs)  # (D, D) uncentred second moment, every domain weighs the same
    m = (1 - shrinkage) * m + shrinkage * m.diagonal().mean() * eye
    rows = torch.linalg.solve(m, delta.T).T  # (n, D)
    logits = c @ rows.T  # (n, n) mean logit of expert f over domain e's tokens
    own = torch.eye(len(c), dtype=torch.bool, device=c.device)
    rival = logits.masked_fill(own, float("-inf")).amax(-1)  # (n,)
    gap = (logits.diagonal() - rival).mean()
    if gap <= 0:
        logger.warning("btx: centroids do not separate the domains (mean gap %.3g); router left unscaled", gap)
        return rows
    return rows * (logit_margin / gap)


def _copy_ffn(moe: MoEFeedForward, e: int, ffn: SwiGLU) -> None:
    """Expert `e` of `moe` computes exactly `ffn` (stacked weights are (in, out), nn.Linear's are (out, in))."""
    moe.w_gate[e].copy_(ffn.gate_proj.weight.T)
    moe.w_up[e].copy_(ffn.up_proj.weight.T)
    moe.w_down[e].copy_(ffn.down_proj.weight.T)


@torch.no_grad()
def build_btx(
    experts: Sequence[ByteLM],
    domain_batches: Sequence[torch.Tensor],
    top_k: int = 2,
    generalist: ByteLM | None = None,
    logit_margin: float = 2.0,
    shrinkage: float = 0.01,
    shared_from: ByteLM | None = None,
) -> ByteLM:
    """A BTX student: `len(experts)` (+1 with a `generalist`) experts per layer, the rest averaged over `experts`.

    `domain_batches[e]` is a (B, T) batch of byte ids from expert e's domain; it places the router (module doc).
    A `generalist` (the network's seed) becomes the last expert with a zero router row, so its logit is the mean of
    the domain logits (the rows sum to zero): with well separated domains it is each token's runner-up (measured on
    the tests' domains: 98-100 % of tokens, about 0.2 of the top-2 weight), so top-2 pairs the domain expert with
    the seed, and the seed leads wherever no domain fits. The global-centroid direction was
    rejected because every token projects strongly on it, so the seed would take all of them. Its non-FFN weights
    are not averaged in: attention and embeddings stay the domain experts' mean. The student lives on expert 0's
    device and dtype. Raises ValueError on no experts, experts (or generalist) of different shapes, MoE inputs, a
    domain_batches count other than the experts', or top_k outside [1, experts].
    """
    cfg = _check_inputs(experts, domain_batches, generalist)
    if not logit_margin > 0 or not 0 < shrinkage <= 1:
        raise ValueError(f"need logit_margin > 0 and shrinkage in (0, 1], got {logit_margin} and {shrinkage}")
    n = len(experts) + (generalist is not None)
    ref = experts[0].embed_tokens.weight
    student = ByteLM(btx_config(cfg, n, top_k)).to(device=ref.device, dtype=ref.dtype)
    if shared_from is not None:
        _check_inputs(experts, domain_batches, shared_from)  # same shape as the experts
    sources = [e.state_dict() for e in experts] if shared_from is None else [shared_from.state_dict()]
    for name, p in student.state_dict().items():
        if ".mlp." not in name:  # tied lm_head shares storage with embed_tokens and is written twice, same values
            p.copy_(torch.stack([s[name].to(p) for s in sources]).mean(0))
    for li, layer in enumerate(student.layers):
        for e, m in enumerate([*experts, *([generalist] if generalist is not None else [])]):
            _copy_ffn(layer.mlp, e, m.layers[li].mlp)
        layer.mlp.router.weight.zero_()
    for li, layer in enumerate(student.layers):  # each layer's centroids see the layers below it as built
        inputs = [ffn_inputs(student, idx)[li] for idx in domain_batches]
        layer.mlp.router.weight[: len(experts)] = centroid_router(inputs, logit_margin, shrinkage).to(ref)
    own = routing_table(student, domain_batches).diagonal(dim1=1, dim2=2)  # (L, n_domains)
    logger.info("btx: %d experts, top-%d; own-expert top-1 share by layer %s", n, top_k, own.mean(-1).tolist())
    return student
