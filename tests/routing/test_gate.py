"""Tests for moe/routing/gate.py: mixing vs a per-position reference, masking, prefix likelihoods, causality."""

from __future__ import annotations

import math

import pytest
import torch

from moe.routing.gate import Gate, balance_loss, mixture_log_probs, prefix_loglik
from moe.routing.signature import SIGNATURE_DIM, running_signature


def random_inputs(B: int = 2, T: int = 5, J: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(B, T, J, 256, generator=g, dtype=torch.float64), -1)
    gate = torch.randn(B, T, J, generator=g, dtype=torch.float64)
    return logp, gate


def reference_mix(logp: torch.Tensor, gate: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per position: softmax the gate over answering experts, sum their probabilities, take the log."""
    B, T, J, V = logp.shape
    out = torch.empty(B, T, V, dtype=logp.dtype)
    for b in range(B):
        for t in range(T):
            idx = [j for j in range(J) if mask is None or mask[b, t, j]]
            if not idx:
                out[b, t] = -math.log(256)
                continue
            w = torch.softmax(gate[b, t, idx], dim=0)
            out[b, t] = torch.log(sum(w[i] * logp[b, t, j].exp() for i, j in enumerate(idx)))
    return out


def test_mixture_matches_reference():
    """mixture_log_probs equals the plain per-position mixture of probabilities."""
    logp, gate = random_inputs()
    torch.testing.assert_close(mixture_log_probs(logp, gate), reference_mix(logp, gate))


def test_masked_experts_excluded_and_nobody_is_uniform():
    """Masked experts get no weight (the rest renormalize); a position nobody answered is uniform, never NaN."""
    logp, gate = random_inputs(seed=1)
    mask = torch.ones(2, 5, 3, dtype=torch.bool)
    mask[0, 1, 0] = False
    mask[1, 2, :2] = False
    mask[1, 3] = False  # nobody
    logp[~mask] = float("nan")  # whatever a missing expert's slot holds must not leak in
    got = mixture_log_probs(logp, gate, mask)
    torch.testing.assert_close(got, reference_mix(logp, gate, mask))
    torch.testing.assert_close(got[1, 2], logp[1, 2, 2])  # a lone answer is taken as is
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1, 3], torch.full((256,), -math.log(256), dtype=got.dtype))
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(2, 5, dtype=got.dtype))


def test_mixture_gradients_finite_when_nobody_answered():
    """Back-propagating through a mixture with unanswered positions gives finite gate gradients."""
    logp, gate = random_inputs(seed=2)
    gate.requires_grad_(True)
    mask = torch.zeros(2, 5, 3, dtype=torch.bool)
    mask[0, :, 1] = True
    logp = logp.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    mixture_log_probs(logp, gate, mask)[..., 7].sum().backward()
    assert torch.isfinite(gate.grad).all()
    assert gate.grad[1].abs().sum() == 0  # nothing to learn where nobody answered


def test_no_mask_equals_all_answered():
    """mask=None is the same as every expert answering everywhere."""
    logp, gate = random_inputs(seed=3)
    full = torch.ones(gate.shape, dtype=torch.bool)
    torch.testing.assert_close(mixture_log_probs(logp, gate), mixture_log_probs(logp, gate, full))


def test_prefix_loglik_definition():
    """prefix_loglik[:, t] is the sum of target log-probs at positions strictly before t (0 at t = 0)."""
    target = torch.randn(2, 6, 3, dtype=torch.float64)
    got = prefix_loglik(target)
    for t in range(6):
        torch.testing.assert_close(got[:, t], target[:, :t].sum(1))


def test_gate_is_causal():
    """Gate scores at position t depend only on x[:, :t+1] (and the prefix log-likelihoods given)."""
    torch.manual_seed(0)
    gate = Gate(d_gate=8, max_experts=5)
    with torch.no_grad():
        gate.keys.normal_()
    slots = torch.tensor([0, 3])
    centroids = torch.softmax(torch.randn(2, SIGNATURE_DIM), -1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 40), generator=g)
    for t in (0, 5, 20, 39):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randint(0, 256, x2[:, t + 1 :].shape, generator=g)
        a = gate(x, slots, centroids).logits
        b = gate(x2, slots, centroids).logits
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        if t < 39:
            assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_new_expert_routed_by_centroid():
    """With zero learned keys, the expert whose centroid is nearer the input's signature scores higher."""
    gate = Gate(d_gate=8, max_experts=4)
    x = torch.tensor([list(b"aaaaaaaaaaaaaaaa")])
    near = running_signature(x)[0, -1]
    far = torch.full((SIGNATURE_DIM,), 1.0 / SIGNATURE_DIM)
    scores = gate(x, torch.tensor([1, 2]), torch.stack([far, near])).logits
    assert (scores[0, -1, 1] > scores[0, -1, 0]).item()


def test_likelihood_term_prefers_better_expert():
    """An expert that predicted the earlier bytes better gains score through the likelihood term."""
    gate = Gate(d_gate=8, max_experts=4)
    x = torch.randint(0, 256, (1, 6))
    cent = torch.full((2, SIGNATURE_DIM), 1.0 / SIGNATURE_DIM)
    pl = torch.zeros(1, 6, 2)
    pl[..., 1] = -torch.arange(6.0)  # expert 1 keeps losing likelihood
    scores = gate(x, torch.tensor([0, 1]), cent, pl).logits
    assert (scores[0, 1:, 0] > scores[0, 1:, 1]).all()


@pytest.mark.parametrize("J", [2, 4])
def test_balance_loss(J):
    """The balance loss is 1 for even routing and grows when load and probability pile on one expert."""
    B = 8 * J
    chosen = torch.zeros(B, J, dtype=torch.bool)
    chosen[torch.arange(B), torch.arange(B) % J] = True
    assert balance_loss(torch.zeros(B, J), chosen).item() == pytest.approx(1.0)
    skewed_logits = torch.zeros(B, J)
    skewed_logits[:, 0] = 5.0
    skewed = torch.zeros(B, J, dtype=torch.bool)
    skewed[:, 0] = True
    assert balance_loss(skewed_logits, skewed).item() > 1.5


def test_validators_trust_shifts_each_experts_logit_by_a_learned_scale():
    """log_trust (J,) adds trust_scale * log_trust to every position's logits, and the gate learns that scale."""
    torch.manual_seed(0)
    gate = Gate(d_gate=8, max_experts=4)
    x = torch.randint(0, 256, (2, 6))
    slots, centroids = torch.tensor([0, 1, 2]), torch.softmax(torch.randn(3, SIGNATURE_DIM), -1)
    trust = torch.tensor([0.0, -1.0, 2.0])
    with torch.no_grad():
        gate.trust_scale.fill_(0.5)
    plain = gate(x, slots, centroids).logits
    trusted = gate(x, slots, centroids, log_trust=trust).logits
    torch.testing.assert_close(trusted - plain, (0.5 * trust).expand_as(plain))
    trusted[..., 2].sum().backward()
    assert gate.trust_scale.grad is not None and gate.trust_scale.grad.item() != 0.0
