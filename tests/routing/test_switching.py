"""Tests for moe/routing/switching.py: the fixed-share byte-level mixture against a plain-Python loop, its Bayesian
limit, causality, the switching bound, mid-sequence resets, and the loss-jump trigger."""

from __future__ import annotations

import math

import pytest
import torch

from moe.routing.switching import first_loss_jump, gate_prior, switching_mixture

V = 256
LOG2 = math.log(2.0)


def reference_switching(logp, targets, available, alpha, prior_logits=None, reset_at=None, reset_window=16):
    """Fixed-share written out per row and position in plain floats: weights start at the prior π (softmax of the
    prior logits over the available experts), are renormalised over the experts available at each position, mix the
    experts' probabilities, take the Bayes step on a byte target (none on a special one), then give α of the mass
    back by π. A row with `reset_at` = t* restarts at t* + 1 from π times each expert's likelihood of the last
    `reset_window` targets, whether or not the expert was available then."""
    B, T, J, _ = logp.shape
    lp = logp.double().tolist()
    tg = targets.tolist()
    av = available.tolist()
    pl = [[[0.0] * J for _ in range(T)] for _ in range(B)] if prior_logits is None else prior_logits.tolist()
    out = [[None] * T for _ in range(B)]
    weights = [[None] * T for _ in range(B)]
    bits = [[0.0] * T for _ in range(B)]
    for b in range(B):

        def prior(t, b=b):
            ex = [math.exp(pl[b][t][e]) if av[b][t][e] else 0.0 for e in range(J)]
            z = sum(ex)
            return [x / z if z > 0 else 0.0 for x in ex]

        w = prior(0)
        star = -1 if reset_at is None else int(reset_at[b])
        for t in range(T):
            if t == star + 1:
                pi = prior(t)
                recent = [
                    sum(lp[b][s][e][tg[b][s]] for s in range(max(0, t - reset_window), t) if tg[b][s] < V)
                    for e in range(J)
                ]
                w = [pi[e] * math.exp(recent[e]) for e in range(J)]
            w = [w[e] if av[b][t][e] else 0.0 for e in range(J)]
            z = sum(w)
            w = [x / z if z > 0 else 0.0 for x in w]
            weights[b][t] = w
            if not any(av[b][t]):
                row = [-math.log(V)] * V
            else:
                row = [math.log(sum(w[e] * math.exp(lp[b][t][e][v]) for e in range(J) if w[e] > 0)) for v in range(V)]
            out[b][t] = row
            y = tg[b][t]
            if y < V:
                bits[b][t] = -row[y] / LOG2
                post = [w[e] * math.exp(lp[b][t][e][y]) for e in range(J)]
            else:
                post = list(w)
            z = sum(post)
            if t + 1 < T:
                pi = prior(t + 1)
                w = [(1 - alpha) * p / z + alpha * q for p, q in zip(post, pi, strict=True)] if z > 0 else pi
    f64 = torch.float64
    return torch.tensor(out, dtype=f64), torch.tensor(weights, dtype=f64), torch.tensor(bits, dtype=f64)


def random_case(seed: int, B: int = 3, T: int = 12, J: int = 3):
    """Random expert log-probs and targets (a few special ids), expert 0 available except at blackout positions where
    no expert is, the others available at random."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(2.0 * torch.randn(B, T, J, V, generator=g), -1)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < 0.15] = 257  # EOS: scored nowhere, updates nothing
    available = torch.rand(B, T, J, generator=g) < 0.6
    available[..., 0] = True
    available[torch.rand(B, T, generator=g) < 0.1] = False  # blackouts: nobody answered
    prior = torch.randn(B, T, J, generator=g)
    return logp, targets, available, prior


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3, 0.9])
@pytest.mark.parametrize("with_prior", [False, True])
def test_matches_plain_python_loop(alpha, with_prior):
    """Mixture log-probs, per-position weights and target bits equal the plain-Python fixed-share loop, with experts
    missing at some positions, none at others, special targets, and a uniform or given prior."""
    for seed in range(2):
        logp, targets, available, prior = random_case(seed)
        prior = prior if with_prior else None
        got = switching_mixture(logp, targets, available, alpha, prior_logits=prior)
        ref_logp, ref_w, ref_bits = reference_switching(logp, targets, available, alpha, prior)
        torch.testing.assert_close(got.logp.double(), ref_logp, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.log_weights.exp().double(), ref_w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.target_bits.double(), ref_bits, rtol=1e-4, atol=1e-4)
        assert (got.target_bits[targets >= V] == 0).all()
        assert torch.isneginf(got.log_weights[~available]).all()


def test_alpha_zero_is_the_bayesian_posterior_mixture():
    """With α = 0 the weight of each expert at t is π times the product of its likelihoods of the targets before t,
    normalised (the per-sequence Bayesian mixture), for experts available all along."""
    g = torch.Generator().manual_seed(3)
    B, T, J = 4, 20, 3
    logp = torch.log_softmax(torch.randn(B, T, J, V, generator=g), -1)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[:, 7] = 258  # PAD: no evidence
    available = torch.ones(B, T, J, dtype=torch.bool)
    available[1, :, 2] = False  # a row where one expert never answered
    prior = torch.randn(B, 1, J, generator=g).expand(B, T, J)  # one prior per sequence
    got = switching_mixture(logp, targets, available, 0.0, prior_logits=prior)

    is_byte = targets < V
    lik = logp.gather(-1, targets.clamp(max=V - 1)[..., None, None].expand(B, T, J, 1)).squeeze(-1)  # (B, T, J)
    lik = lik * is_byte[..., None]
    past = torch.cumsum(lik, 1) - lik  # (B, T, J) log-likelihood of the targets strictly before t
    log_w = torch.log_softmax((prior + past).masked_fill(~available, float("-inf")), -1)
    torch.testing.assert_close(got.log_weights.exp(), log_w.exp(), rtol=1e-4, atol=1e-6)
    want = torch.logsumexp(log_w[..., None] + logp, 2)  # (B, T, 256)
    torch.testing.assert_close(got.logp, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_causal(alpha):
    """Changing the targets at positions >= t leaves the mixture's log-probs and weights at positions <= t unchanged
    (and does change them later)."""
    logp, targets, available, prior = random_case(4, B=2, T=16)
    base = switching_mixture(logp, targets, available, alpha, prior_logits=prior)
    g = torch.Generator().manual_seed(5)
    for t in (0, 5, 14):
        other = targets.clone()
        other[:, t:] = torch.randint(0, V, other[:, t:].shape, generator=g)
        moved = switching_mixture(logp, other, available, alpha, prior_logits=prior)
        assert torch.equal(moved.logp[:, : t + 1], base.logp[:, : t + 1])
        assert torch.equal(moved.log_weights[:, : t + 1], base.log_weights[:, : t + 1])
        assert not torch.allclose(moved.logp[:, t + 1 :], base.logp[:, t + 1 :])


def test_no_expert_available_predicts_uniform():
    """At a position where no expert is available the mixture is uniform (8 bits for a byte target)."""
    logp, targets, available, _ = random_case(6, B=2, T=10)
    targets[0, 3] = 65
    available[0, 3] = False
    available[1] = False  # a whole row with nobody
    got = switching_mixture(logp, targets, available, 0.05)
    torch.testing.assert_close(got.logp[0, 3], torch.full((V,), -math.log(V)))
    torch.testing.assert_close(got.logp[1], torch.full((10, V), -math.log(V)))
    assert got.target_bits[0, 3].item() == pytest.approx(8.0)
    assert torch.isfinite(got.logp).all()


def test_every_position_is_a_distribution_when_experts_hand_over():
    """Whatever the availability pattern and α (0 included), every position's mixture is a proper distribution over
    the 256 bytes: here expert 0 answers only up to t = 3 and expert 1 only from t = 4."""
    logp, targets, _, _ = random_case(7, B=1, T=8, J=2)
    available = torch.zeros(1, 8, 2, dtype=torch.bool)
    available[:, :4, 0] = True
    available[:, 4:, 1] = True
    for alpha in (0.0, 0.05):
        got = switching_mixture(logp, targets, available, alpha)
        torch.testing.assert_close(got.logp.logsumexp(-1), torch.zeros(1, 8), atol=1e-5, rtol=0)


def two_halves(T: int = 64, p_right: float = 0.99, seed: int = 8):
    """Expert A puts p_right on every target of the first half and misses the second; expert B the reverse."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (1, T), generator=g)
    wrong = math.log((1 - p_right) / (V - 1))
    logp = torch.full((1, T, 2, V), wrong)
    half = T // 2
    t = torch.arange(T)
    good = torch.where(t < half, 0, 1)  # the expert that is right at t
    logp[0, t, good, targets[0]] = math.log(p_right)
    logp[0, t, 1 - good, (targets[0] + 1) % V] = math.log(p_right)  # confident and wrong
    return logp, targets, torch.ones(1, T, 2, dtype=torch.bool)


def test_switching_beats_bayes_after_a_change():
    """With expert A right on the first half and B on the second, fixed-share (α = 0.05) pays at most B's loss plus
    log2(J/α) + (n-1)·log2(1/(1-α)) bits on the n bytes of the second half, while α = 0 pays nearly A's whole loss."""
    T, alpha, p_right = 64, 0.05, 0.99
    logp, targets, available = two_halves(T, p_right)
    n = T // 2
    right_bits, wrong_bits = -math.log2(p_right), -math.log2((1 - p_right) / (V - 1))
    fs = switching_mixture(logp, targets, available, alpha).target_bits[0, n:].sum().item()
    bayes = switching_mixture(logp, targets, available, 0.0).target_bits[0, n:].sum().item()
    bound = n * right_bits + math.log2(2 / alpha) + (n - 1) * math.log2(1 / (1 - alpha))  # ≈ 8.1 bits
    assert fs <= bound
    # Bayes: the total is -log2 of the prior-weighted product of likelihoods, the same for A and B here, and the
    # first half costs at most A's loss there plus log2(J); what is left falls on the second half
    total = n * (right_bits + wrong_bits)
    assert bayes >= total - (n * right_bits + 1.0) - 1e-3  # ≈ 466 bits
    assert bayes > 40 * fs


def test_reset_keeps_the_past():
    """A reset at t* changes nothing at positions <= t*, and a row with reset_at = -1 is the same as with no reset."""
    logp, targets, _, _ = random_case(9, B=2, T=30, J=3)
    available = torch.ones(2, 30, 3, dtype=torch.bool)
    available[:, :13, 2] = False  # expert 2 joins after t* = 12
    plain = switching_mixture(logp, targets, available, 0.02)
    reset = switching_mixture(logp, targets, available, 0.02, reset_at=torch.tensor([12, -1]), reset_window=8)
    assert torch.equal(reset.logp[0, :13], plain.logp[0, :13])
    assert torch.equal(reset.log_weights[0, :13], plain.log_weights[0, :13])
    assert torch.equal(reset.logp[1], plain.logp[1])
    assert not torch.allclose(reset.logp[0, 13:], plain.logp[0, 13:])


@pytest.mark.parametrize("reset_window", [4, 16, 100])
def test_reset_of_incumbents_restarts_from_recent_likelihood(reset_window):
    """With every expert available all along, a reset at t* restarts the weights at t* + 1 from π times each
    expert's likelihood of the last reset_window targets (the whole past when the window is longer), as the loop."""
    logp, targets, _, prior = random_case(10, B=2, T=24, J=3)
    available = torch.ones(2, 24, 3, dtype=torch.bool)
    reset_at = torch.tensor([15, 3])
    got = switching_mixture(logp, targets, available, 0.1, prior, reset_at=reset_at, reset_window=reset_window)
    ref_logp, ref_w, _ = reference_switching(logp, targets, available, 0.1, prior, reset_at, reset_window)
    torch.testing.assert_close(got.logp.double(), ref_logp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.log_weights.exp().double(), ref_w, rtol=1e-4, atol=1e-5)


def test_reset_newcomer_enters_with_its_recent_likelihood():
    """An expert unavailable until t* + 1 (its log-probs known on the whole sequence) enters with weight π times its
    likelihood of the last reset_window targets: a uniform newcomer next to an incumbent that was right 90% of the
    time gets almost no weight, and the whole output equals the plain-Python loop."""
    T, ts, W = 40, 20, 16
    g = torch.Generator().manual_seed(11)
    targets = torch.randint(0, V, (1, T), generator=g)
    logp = torch.full((1, T, 2, V), math.log(0.1 / (V - 1)))
    logp[0, torch.arange(T), 0, targets[0]] = math.log(0.9)  # the incumbent: 0.15 bits a byte
    logp[0, :, 1] = -math.log(V)  # the newcomer: 8 bits a byte
    available = torch.ones(1, T, 2, dtype=torch.bool)
    available[:, : ts + 1, 1] = False
    reset_at = torch.tensor([ts])
    got = switching_mixture(logp, targets, available, 0.01, reset_at=reset_at, reset_window=W)
    newcomer = 1 / (1 + (0.9 * V) ** W)  # π equal: (1/256)^W / ((1/256)^W + 0.9^W)
    assert got.log_weights[0, ts + 1, 1].exp().item() == pytest.approx(newcomer, abs=1e-6)
    ref_logp, ref_w, _ = reference_switching(logp, targets, available, 0.01, None, reset_at, W)
    torch.testing.assert_close(got.logp.double(), ref_logp, rtol=1e-4, atol=1e-4)


def reference_first_jump(bits: list[list[float]], window: int, threshold: float, start: int) -> list[int]:
    """First t >= start whose full window of the last `window` targets (t included) averages above threshold."""
    out = []
    for row in bits:
        hit = -1
        for t in range(max(start, window - 1), len(row)):
            if sum(row[t - window + 1 : t + 1]) / window > threshold:
                hit = t
                break
        out.append(hit)
    return out


def test_first_loss_jump_matches_loop():
    """first_loss_jump returns, per row, the first position >= start whose window mean exceeds the threshold, or -1
    when none does, as a loop over full windows."""
    g = torch.Generator().manual_seed(12)
    bits = torch.randint(0, 33, (6, 30), generator=g).float() / 4  # quarter bits: window sums are exact
    bits[0] = 0.0  # a row that never jumps
    bits[1, 20:] = 8.0  # a row with a clear jump
    for window, threshold, start in [(1, 7.0, 0), (4, 5.0, 0), (4, 5.0, 10), (8, 4.5, 3), (8, 6.0, 25), (30, 4.0, 0)]:
        got = first_loss_jump(bits, window, threshold, start)
        assert got.dtype == torch.long
        assert got.tolist() == reference_first_jump(bits.tolist(), window, threshold, start)
    assert first_loss_jump(bits, 4, 7.9, start=0)[1].item() == 23  # 20..23 is the first window all at 8 bits


def test_first_loss_jump_edges():
    """A mean equal to the threshold is not a jump, start past the last jump gives -1, and so does a window longer
    than the sequence."""
    bits = torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.0, 0.0, 6.0, 6.0]])
    assert first_loss_jump(bits, 2, 4.0).tolist() == [7]  # (4+4)/2 is not above 4; (6+6)/2 is
    assert first_loss_jump(bits, 2, 3.9).tolist() == [3]
    assert first_loss_jump(bits, 2, 3.9, start=4).tolist() == [7]
    assert first_loss_jump(bits, 2, 5.9, start=8).tolist() == [-1]
    assert first_loss_jump(bits, 9, 0.0).tolist() == [-1]


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_refused(alpha):
    """α outside [0, 1) raises ValueError naming it."""
    logp, targets, available, _ = random_case(13, B=1, T=4)
    with pytest.raises(ValueError, match="alpha"):
        switching_mixture(logp, targets, available, alpha)


def test_gate_prior_spreads_between_the_gate_and_uniform():
    """gate_prior is a distribution over the candidates: with weight 0 uniform, with weight 1 the gate's softmax (the
    generalist appended at its share of the experts' total), and in between their mixture."""
    g = torch.randn(2, 3, 4)
    for w in (0.0, 0.6, 1.0):
        for share in (None, 0.2):
            pi = gate_prior(g, w, share).exp()
            n = 4 + (share is not None)
            torch.testing.assert_close(pi.sum(-1), torch.ones(2, 3))
            full = torch.cat([g, torch.logsumexp(g, -1, keepdim=True) + math.log(share)], -1) if share else g
            want = w * torch.softmax(full, -1) + (1 - w) / n
            torch.testing.assert_close(pi, want)
    pi = gate_prior(g, 1.0, 0.2).exp()
    torch.testing.assert_close(pi[..., -1], torch.full((2, 3), 0.2 / 1.2))
