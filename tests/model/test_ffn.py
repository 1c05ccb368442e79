"""Tests for moe/model/ffn.py: the sparse MoE layer against a per-token reference loop, aux losses, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moe.model.ffn import MoEFeedForward, MoEOutput, SwiGLU, expert_capacity

D, FF = 8, 12


def make_layer(n_experts: int, top_k: int, capacity_factor: float | None = None, seed: int = 0) -> MoEFeedForward:
    torch.manual_seed(seed)
    return MoEFeedForward(D, FF, n_experts, top_k, capacity_factor=capacity_factor).double()


def make_input(B: int = 3, T: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g, dtype=torch.float64).requires_grad_(True)


def reference(layer: MoEFeedForward, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-token loop: route each token alone, in token order, dropping assignments past an expert's capacity.

    Returns the output and the number of dropped assignments.
    """
    B, T, _ = x.shape
    xf = x.reshape(B * T, D)
    N, E, k = xf.shape[0], layer.n_experts, layer.top_k
    cap = N * k if layer.capacity_factor is None else expert_capacity(N, k, E, layer.capacity_factor)
    used = [0] * E
    dropped = 0
    rows = []
    for t in range(N):
        xt = xf[t]
        p = torch.softmax(xt @ layer.router.weight.T, dim=-1)  # (E,)
        w, idx = torch.topk(p, k)
        w = w / w.sum()
        yt = torch.zeros_like(xt)
        for j in range(k):
            e = int(idx[j])
            if used[e] >= cap:
                dropped += 1
                continue
            used[e] += 1
            h = F.silu(xt @ layer.w_gate[e]) * (xt @ layer.w_up[e])
            yt = yt + w[j] * (h @ layer.w_down[e])
        rows.append(yt)
    return torch.stack(rows).view(B, T, D), dropped


def grads(layer: MoEFeedForward, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of y w.r.t. the input and every parameter (zeros where unused)."""
    g = torch.Generator().manual_seed(7)
    probe = torch.randn(y.shape, generator=g, dtype=y.dtype)
    inputs = [x, *layer.parameters()]
    gs = torch.autograd.grad((y * probe).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for i, gi in zip(inputs, gs, strict=True)]


def assert_matches_reference(layer: MoEFeedForward, x: torch.Tensor) -> int:
    out = layer(x)
    y_ref, dropped = reference(layer, x)
    torch.testing.assert_close(out.y, y_ref, rtol=1e-10, atol=1e-12)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, g, g_ref in zip(names, grads(layer, x, out.y), grads(layer, x, y_ref), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"grad {name}: {m}")
    return dropped


@pytest.mark.parametrize("top_k", [1, 2])
def test_dropless_matches_per_token_loop(top_k: int) -> None:
    """Dropless top-k output and gradients (input, router, every expert weight) equal the per-token loop's."""
    layer = make_layer(n_experts=4, top_k=top_k)
    assert assert_matches_reference(layer, make_input()) == 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_capacity_drops_same_assignments_as_loop(top_k: int) -> None:
    """With a tight capacity the layer drops exactly the loop's late-in-token-order assignments, outputs and grads."""
    layer = make_layer(n_experts=4, top_k=top_k, capacity_factor=0.6)
    dropped = assert_matches_reference(layer, make_input(B=4, T=8))
    assert dropped > 0, "capacity 0.6 should force drops; the test would otherwise not exercise them"


def test_dropped_token_gets_zero_output() -> None:
    """A token whose every assignment is dropped gets an exactly zero output (the residual carries it)."""
    torch.manual_seed(0)
    layer = MoEFeedForward(D, FF, n_experts=2, top_k=1, capacity_factor=0.5).double()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 10.0  # every token with x[0] > 0 prefers expert 0
    x = torch.ones(1, 8, D, dtype=torch.float64)  # all 8 tokens pick expert 0; capacity is ceil(0.5*8/2) = 2
    y = layer(x).y
    assert y[0, :2].abs().sum() > 0
    assert torch.equal(y[0, 2:], torch.zeros(6, D, dtype=torch.float64))


def test_large_capacity_equals_dropless() -> None:
    """A capacity factor of E/k (capacity = all tokens) gives bitwise the dropless output."""
    x = make_input()
    y_dropless = make_layer(4, 2)(x).y
    y_cap = make_layer(4, 2, capacity_factor=2.0)(x).y
    assert torch.equal(y_dropless, y_cap)


def test_single_expert_equals_dense_swiglu() -> None:
    """With E=1 and top-1 the layer is exactly the dense SwiGLU holding the same weights, gradients included."""
    layer = make_layer(n_experts=1, top_k=1)
    dense = SwiGLU(D, FF).double()
    with torch.no_grad():
        dense.gate_proj.weight.copy_(layer.w_gate[0].T)
        dense.up_proj.weight.copy_(layer.w_up[0].T)
        dense.down_proj.weight.copy_(layer.w_down[0].T)
    x = make_input()
    out = layer(x)
    y_dense = dense(x)
    torch.testing.assert_close(out.y, y_dense, rtol=1e-12, atol=1e-12)
    assert torch.equal(out.expert_load, torch.ones(1))
    assert out.balance_loss.item() == pytest.approx(1.0)
    assert_matches_reference(layer, x)


def test_unused_experts_get_zero_grad() -> None:
    """When the router never picks some experts, outputs still match the loop and their weights get zero gradient."""
    layer = make_layer(n_experts=4, top_k=2)
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[1.0], [0.5], [-1.0], [-2.0]]).expand(4, D))
    x = (make_input().detach().abs() + 0.1).requires_grad_(True)  # positive inputs: experts 0 and 1 always win
    out = layer(x)
    assert torch.equal(out.expert_load, torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert_matches_reference(layer, x)
    g = grads(layer, x, out.y)
    params = dict(zip([n for n, _ in layer.named_parameters()], g[1:], strict=True))
    for name in ("w_gate", "w_up", "w_down"):
        assert params[name][2:].abs().sum() == 0
        assert params[name][:2].abs().sum() > 0


def test_aux_losses_match_formulas() -> None:
    """balance_loss = E * sum_e f_e * P_e and z_loss = mean(logsumexp(logits)^2), computed by hand per token."""
    layer = make_layer(n_experts=5, top_k=2)
    x = make_input(B=2, T=9)
    out = layer(x)
    xf = x.detach().reshape(-1, D)
    N, E, k = xf.shape[0], 5, 2
    assigned = [0] * E
    prob_sum = [0.0] * E
    z = 0.0
    for t in range(N):
        logits = [float(xf[t] @ layer.router.weight[e].detach()) for e in range(E)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        z += lse**2
        p = [math.exp(v - lse) for v in logits]
        for e in sorted(range(E), key=lambda e: -p[e])[:k]:
            assigned[e] += 1
        for e in range(E):
            prob_sum[e] += p[e]
    f = [a / (N * k) for a in assigned]
    balance = E * sum(f[e] * prob_sum[e] / N for e in range(E))
    assert out.balance_loss.item() == pytest.approx(balance, rel=1e-6)
    assert out.z_loss.item() == pytest.approx(z / N, rel=1e-12)
    torch.testing.assert_close(out.expert_load, torch.tensor(f, dtype=torch.float32))
    assert not out.expert_load.requires_grad


def test_balance_loss_is_one_for_uniform_router() -> None:
    """A zero router (uniform probabilities) gives balance_loss exactly 1, the loss's minimum scale."""
    layer = make_layer(n_experts=4, top_k=2)
    with torch.no_grad():
        layer.router.weight.zero_()
    out = layer(make_input())
    assert out.balance_loss.item() == pytest.approx(1.0)
    assert out.z_loss.item() == pytest.approx(math.log(4) ** 2)


def test_aux_losses_push_router() -> None:
    """Both aux losses are differentiable w.r.t. the router weight (they are what trains it towards balance)."""
    layer = make_layer(n_experts=4, top_k=2)
    out = layer(make_input())
    for loss in (out.balance_loss, out.z_loss):
        (g,) = torch.autograd.grad(loss, layer.router.weight, retain_graph=True)
        assert g.abs().sum() > 0


def test_deterministic() -> None:
    """Two identical forward+backward passes give bitwise-identical outputs, losses and gradients."""
    layer = make_layer(n_experts=4, top_k=2, capacity_factor=1.0)
    x = make_input()
    runs = []
    for _ in range(2):
        out = layer(x)
        runs.append([out.y, out.balance_loss, out.z_loss, *grads(layer, x, out.y)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_float32_close_to_float64() -> None:
    """In float32 (the training dtype) the layer agrees with its float64 self to float32 precision."""
    layer = make_layer(n_experts=4, top_k=2)
    x = make_input()
    y64 = layer(x).y
    y32 = layer.float()(x.float()).y
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), rtol=1e-4, atol=1e-5)


def test_router_jitter_only_in_training_and_only_on_router() -> None:
    """Jitter leaves eval outputs untouched, and with E=1 (routing moot) leaves training outputs untouched too."""
    x = make_input()
    plain = make_layer(n_experts=4, top_k=2)
    jittery = make_layer(n_experts=4, top_k=2)
    jittery.router_jitter = 0.3
    jittery.eval()
    assert torch.equal(plain(x).y, jittery(x).y)
    jittery.train()
    torch.manual_seed(3)
    assert not torch.equal(plain(x).y, jittery(x).y)
    one = make_layer(n_experts=1, top_k=1)
    one_jittery = make_layer(n_experts=1, top_k=1)
    one_jittery.router_jitter = 0.3
    assert torch.equal(one(x).y, one_jittery(x).y)


def test_empty_batch() -> None:
    """A batch with zero tokens returns an empty output and zero losses instead of NaN."""
    layer = make_layer(n_experts=4, top_k=2)
    out = layer(torch.zeros(2, 0, D, dtype=torch.float64))
    assert isinstance(out, MoEOutput)
    assert out.y.shape == (2, 0, D)
    assert out.balance_loss.item() == 0.0 and out.z_loss.item() == 0.0


def test_wrong_input_shape_is_rejected() -> None:
    """An input not shaped (B, T, d_model) raises a ValueError naming the expected shape."""
    layer = make_layer(n_experts=4, top_k=2)
    with pytest.raises(ValueError, match=r"expects \(B, T, 8\)"):
        layer(torch.zeros(2, 3, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects \(B, T, 8\)"):
        layer(torch.zeros(6, D, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_experts=4, top_k=5), "top_k"),
        (dict(n_experts=4, top_k=0), "top_k"),
        (dict(n_experts=0, top_k=1), "positive"),
        (dict(n_experts=4, top_k=2, capacity_factor=0.0), "capacity_factor"),
        (dict(n_experts=4, top_k=2, router_jitter=1.5), "router_jitter"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict, match: str) -> None:
    """Impossible layer settings fail at construction with a ValueError naming the setting."""
    with pytest.raises(ValueError, match=match):
        MoEFeedForward(D, FF, **kwargs)


def test_expert_capacity_formula() -> None:
    """Capacity is ceil(capacity_factor * tokens * k / E)."""
    assert expert_capacity(10, 2, 4, 1.0) == 5
    assert expert_capacity(10, 2, 4, 1.25) == 7
    assert expert_capacity(7, 1, 8, 1.0) == 1
