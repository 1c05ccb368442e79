"""Tests for moe/routing/mixing.py: probe-then-route over tiny in-process experts, faults, gate training."""

from __future__ import annotations

import inspect
import json
import math
import random
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe.corpus.batches import ByteBatches
from moe.metrics import byte_log_probs, target_log_probs
from moe.model.tokenizer import EOS, PAD, encode
from moe.model.transformer import ByteLM, ModelConfig
from moe.routing.gate import Gate, mixture_log_probs
from moe.routing.mixing import ExpertEntry, ExpertSlots, MixOutput, local_caller, route_and_mix
from moe.routing.mixing import gate_loss as mixture_gate_loss
from moe.routing.signature import SIGNATURE_DIM, domain_centroid
from moe.routing.switching import switching_mixture

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
P = 8  # probe length


def entries(keys: list[str]) -> list[ExpertEntry]:
    g = torch.Generator().manual_seed(0)
    cents = torch.softmax(torch.randn(len(keys), SIGNATURE_DIM, generator=g), -1)
    return [ExpertEntry(k, slot=i, centroid=cents[i].tolist()) for i, k in enumerate(keys)]


@pytest.fixture(scope="module")
def three():
    """Three tiny untrained ByteLMs with different seeds, and a gate with non-trivial learned keys."""
    models = {}
    for i, k in enumerate("abc"):
        torch.manual_seed(i)
        models[k] = ByteLM(MODEL).eval()
    torch.manual_seed(0)
    gate = Gate(d_gate=16, max_experts=8)
    with torch.no_grad():
        gate.keys.normal_(std=2.0)
    return models, gate, entries(list("abc"))


def bytes_batch(B: int = 6, T: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A real local caller that remembers what each round asked for (and may drop some experts' answers)."""

    def __init__(self, models, drop: set[str] = frozenset()):
        self.inner, self.drop, self.rounds = local_caller(models), set(drop), []

    def __call__(self, inputs):
        self.rounds.append({k: tuple(x.shape) for k, x in inputs.items()})
        return {k: v for k, v in self.inner(inputs).items() if k not in self.drop}


def test_rows_are_distributions(three):
    """Every position of the mixture is a proper distribution over 256 bytes."""
    models, gate, experts = three
    out = route_and_mix(gate, bytes_batch(), experts, local_caller(models), k_best=2, probe_len=P)
    assert isinstance(out, MixOutput) and out.logp.shape == (6, 24, 256) and out.keys == list("abc")
    assert torch.isfinite(out.logp).all()
    torch.testing.assert_close(out.logp.exp().sum(-1), torch.ones(6, 24))


def test_mixture_is_causal(three):
    """Changing x[:, t:] leaves the mixture's log-probs at positions < t unchanged, inside and after the probe."""
    models, gate, experts = three
    call = local_caller(models)
    x = bytes_batch(seed=1)
    base = route_and_mix(gate, x, experts, call, k_best=1, probe_len=P).logp
    g = torch.Generator().manual_seed(2)
    for t in (3, P - 1, P, 15, 23):
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, 256, x2[:, t:].shape, generator=g)
        other = route_and_mix(gate, x2, experts, call, k_best=1, probe_len=P).logp
        torch.testing.assert_close(base[:, :t], other[:, :t], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base[:, t:], other[:, t:])


def test_call_all_equals_probe_then_route(three):
    """call_all=True (every expert sees everything) mixes exactly like probe-then-route."""
    models, gate, experts = three
    x = bytes_batch(seed=3)
    a = route_and_mix(gate, x, experts, local_caller(models), k_best=2, probe_len=P)
    b = route_and_mix(gate, x, experts, local_caller(models), k_best=2, probe_len=P, call_all=True)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.answered, b.answered)
    torch.testing.assert_close(a.logp, b.logp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.gate_logits, b.gate_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k_best", [1, 2])
def test_at_most_k_best_after_probe(three, k_best):
    """Every expert answers the probe; past it at most k_best do, and only chosen rows are sent the full sequence."""
    models, gate, experts = three
    x = bytes_batch(seed=4)
    call = Recorder(models)
    out = route_and_mix(gate, x, experts, call, k_best=k_best, probe_len=P)
    assert out.answered[:, :P].all()
    assert (out.answered[:, P:].sum(-1) <= k_best).all() and (out.chosen.sum(-1) == k_best).all()
    assert torch.equal(out.answered[:, P:], out.chosen.unsqueeze(1).expand(-1, x.shape[1] - P, -1))
    probe, full = call.rounds
    assert probe == {k: (6, P) for k in "abc"}
    for j, k in enumerate("abc"):
        n = int(out.chosen[:, j].sum())
        assert full.get(k, (0, x.shape[1])) == (n, x.shape[1])


def test_missing_expert_renormalized(three):
    """An expert whose answers never arrive is averaged out: no NaN, and the result equals a mixture without it."""
    models, gate, experts = three
    x = bytes_batch(seed=5)
    dropped = route_and_mix(gate, x, experts, Recorder(models, drop={"b"}), k_best=1, probe_len=P)
    assert torch.isfinite(dropped.logp).all() and not dropped.answered[..., 1].any() and not dropped.chosen[:, 1].any()
    without = route_and_mix(gate, x, [experts[0], experts[2]], local_caller(models), k_best=1, probe_len=P)
    torch.testing.assert_close(dropped.logp, without.logp, rtol=1e-4, atol=1e-5)


def test_expert_failing_after_probe(three):
    """An expert that answers the probe but not the full call loses its positions past the probe, nothing more."""
    models, gate, experts = three
    x = bytes_batch(seed=6)
    inner = local_caller(models)
    calls = []

    def flaky(inputs):
        calls.append(1)
        out = inner(inputs)
        return out if len(calls) == 1 else {}  # everyone dies after the probe

    out = route_and_mix(gate, x, experts, flaky, k_best=2, probe_len=P)
    assert torch.isfinite(out.logp).all()
    assert out.answered[:, :P].all() and not out.answered[:, P:].any()
    torch.testing.assert_close(out.logp[:, P:], torch.full_like(out.logp[:, P:], -np.log(256.0)))


def test_nobody_answers_gives_uniform(three):
    """When no expert answers at all the mixture is uniform (8 bits per byte), with finite gate gradients."""
    _, gate, experts = three
    x = bytes_batch(seed=7)
    out = route_and_mix(gate, x, experts, lambda inputs: {}, k_best=2, probe_len=P)
    torch.testing.assert_close(out.logp, torch.full_like(out.logp, -np.log(256.0)))
    assert not out.chosen.any()
    loss, nll = mixture_gate_loss(out, x, P, 0.01)
    assert nll.item() == pytest.approx(np.log(256.0), rel=1e-5)


def test_expert_slots():
    """Slots are stable per key, newcomers take the lowest free one, and a full table evicts only departed keys."""
    slots = ExpertSlots(2)
    assert slots.assign("a", {"a"}) == 0 and slots.assign("b", {"a", "b"}) == 1 and slots.assign("a", set()) == 0
    assert slots.assign("c", {"a", "b", "c"}) is None  # full, nobody departed
    assert slots.assign("c", {"b", "c"}) == 0  # "a" departed: its slot is reused
    assert "a" not in slots.slot_of


# --- byte-level switching with a local generalist ---------------------------------------------------------------


@pytest.fixture(scope="module")
def generalist():
    """A fourth tiny untrained ByteLM, run locally as (B, T) -> (B, T, 256) log-probs."""
    torch.manual_seed(3)
    model = ByteLM(MODEL).eval()

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return byte_log_probs(model(x))

    return predict


@torch.no_grad()
def full_log_probs(models, x: torch.Tensor) -> torch.Tensor:
    """(B, T, J, 256) every expert's log-probs on the whole of x, in key order."""
    return torch.stack([byte_log_probs(models[k](x)) for k in "abc"], 2)


def next_tokens(x: torch.Tensor) -> torch.Tensor:
    """The token each position predicts; PAD (scored nowhere) after the last one."""
    return torch.cat([x[:, 1:], torch.full((x.shape[0], 1), PAD)], 1)


@pytest.mark.parametrize(("alpha", "with_generalist", "drop"), [(0.0, True, ""), (0.05, True, "b"), (0.05, False, "")])
def test_switching_mix_equals_switching_mixture(three, generalist, alpha, with_generalist, drop):
    """With a generalist or switch_alpha > 0, the output is switching_mixture over the experts that answered (every
    live one on the probe, the chosen ones after it) plus the generalist available everywhere, whose targets are
    the next tokens of x (a special one updating nothing, none after the last position)."""
    models, gate, experts = three
    x = bytes_batch(seed=8)
    x[1, 10] = EOS  # a document boundary inside a sequence
    g = generalist if with_generalist else None
    out = route_and_mix(gate, x, experts, Recorder(models, drop=set(drop)), 2, P, switch_alpha=alpha, generalist=g)
    B, T = x.shape
    answered = torch.ones(B, T, 3, dtype=torch.bool)
    answered[:, P:] = out.chosen[:, None, :]
    if drop:
        answered[..., "abc".index(drop)] = False
    assert torch.equal(out.answered, answered)
    logp, available = full_log_probs(models, x), answered
    if with_generalist:
        logp = torch.cat([logp, generalist(x)[:, :, None]], 2)  # (B, T, J+1, 256)
        available = torch.cat([answered, torch.ones(B, T, 1, dtype=torch.bool)], 2)
    want = switching_mixture(logp, next_tokens(x), available, alpha).logp
    torch.testing.assert_close(out.logp, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logp.exp().sum(-1), torch.ones(B, T))


@pytest.mark.parametrize(
    ("T", "k_best", "drop", "call_all"),
    [(24, 1, "", False), (24, 2, "c", False), (6, 2, "", False), (24, 1, "", True)],
)
def test_calls_are_counted(three, generalist, T, k_best, drop, call_all):
    """expert_positions is every position requested from a remote expert (B*P*J on the probe plus T for each chosen
    row; B*T*J when every expert is called on everything), the same as the caller saw, generalist_positions is B*T,
    and calls_per_byte is expert_positions / (B*T)."""
    models, gate, experts = three
    x = bytes_batch(T=T, seed=9)
    call = Recorder(models, drop=set(drop))
    out = route_and_mix(gate, x, experts, call, k_best, P, call_all=call_all, switch_alpha=0.01, generalist=generalist)
    B, J, p = x.shape[0], 3, min(P, T)
    seen = sum(n * t for r in call.rounds for n, t in r.values())
    want = B * T * J if call_all else B * p * J + int(out.chosen.sum()) * T * (T > p)
    assert out.expert_positions == seen == want
    assert out.generalist_positions == B * T
    assert out.calls_per_byte == pytest.approx(want / (B * T))
    if not call_all and T > p:
        assert out.chosen.sum().item() == B * k_best and out.calls_per_byte == pytest.approx(p * J / T + k_best)


def test_without_switching_the_gate_mixes(three):
    """With neither a generalist nor switch_alpha the output is the gate's mixture (mixture_log_probs of the experts'
    log-probs with the gate logits over those that answered), and no generalist position is counted."""
    models, gate, experts = three
    x = bytes_batch(seed=10)
    for drop in ("", "a"):
        out = route_and_mix(gate, x, experts, Recorder(models, drop=set(drop)), k_best=2, probe_len=P)
        want = mixture_log_probs(full_log_probs(models, x), out.gate_logits, out.answered)
        torch.testing.assert_close(out.logp, want, rtol=1e-4, atol=1e-5)
        assert out.generalist_positions == 0
        assert out.expert_positions == 6 * P * 3 + int(out.chosen.sum()) * 24


def repeat_generalist(x: torch.Tensor) -> torch.Tensor:
    """A causal generalist that bets 0.9 on the next byte repeating the current one."""
    logp = torch.full((*x.shape, 256), math.log(0.1 / 255))
    return logp.scatter(-1, x.clamp(max=255)[..., None], math.log(0.9))


@pytest.mark.parametrize("alpha", [0.005, 0.05])
def test_generalist_bounds_the_damage(three, alpha):
    """Where the generalist is far better than every expert (a run of one repeated byte after the probe), the
    mixture pays on that stretch at most the generalist's bits + log2((k+1)/α) + (n-1)·log2(1/(1-α)) (the
    fixed-share bound, π uniform over the k chosen experts and the generalist), far below any expert."""
    models, gate, experts = three
    k, s, T = 2, 12, 24
    x = bytes_batch(T=T, seed=11)
    x[:, s:] = 65  # positions s..T-2 predict another "A"
    out = route_and_mix(gate, x, experts, local_caller(models), k, P, switch_alpha=alpha, generalist=repeat_generalist)
    y = next_tokens(x)[:, s : T - 1]  # (B, n)
    n = T - 1 - s

    def stretch_bits(logp: torch.Tensor) -> torch.Tensor:
        return -target_log_probs(logp[:, s : T - 1], y)[0].sum(-1) / math.log(2)  # (B,)

    mix = stretch_bits(out.logp)
    general = stretch_bits(repeat_generalist(x))
    bound = general + math.log2((k + 1) / alpha) + (n - 1) * math.log2(1 / (1 - alpha))
    assert (mix <= bound + 1e-3).all()
    every = full_log_probs(models, x)
    best_expert = torch.stack([stretch_bits(every[:, :, j]) for j in range(3)], -1).min(-1).values
    assert (best_expert > 5 * bound).all()  # the bound is far below what any expert alone pays there


# --- gate training on two real specialists ---------------------------------------------------------------------


def code_tokens() -> np.ndarray:
    return encode(inspect.getsource(textwrap) + inspect.getsource(json.decoder) + inspect.getsource(json.encoder))


def english_tokens() -> np.ndarray:
    rng = random.Random(0)
    words = "the king and the queen walked in the garden of roses while a small bird sang of love and spring"
    return encode(" ".join(rng.choice(words.split()) for _ in range(8000)))


def train_expert(tokens: np.ndarray, seed: int, steps: int = 100) -> ByteLM:
    torch.manual_seed(seed)
    model = ByteLM(MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = ByteBatches(tokens, 64, 8, seed)
    for _ in range(steps):
        x, y = batches.sample()
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def specialists():
    """Expert A trained on Python stdlib source, expert B on repetitive English (100 steps each)."""
    torch.manual_seed(0)
    data = {"code": code_tokens(), "english": english_tokens()}
    return data, {"a": train_expert(data["code"], 0), "b": train_expert(data["english"], 1)}


def domain_nll(gate, experts, models, tokens, k_best: int = 1) -> tuple[float, dict[str, float]]:
    """Mixture NLL (nats/byte) on a fixed batch of the domain, and each expert's own NLL on it."""
    x, y = ByteBatches(tokens, 64, 16, seed=99).sample()
    with torch.no_grad():
        out = route_and_mix(gate, x, experts, local_caller(models), k_best=k_best, probe_len=16)
        solo = {k: F.nll_loss(byte_log_probs(m(x)).flatten(0, 1), y.flatten()).item() for k, m in models.items()}
    return mixture_gate_loss(out, y, 16, 0.0)[1].item(), solo


def test_gate_training_learns_routing(specialists):
    """Adam steps on gate_loss take an uninformed gate (equal centroids, no likelihood term) to a mixture whose NLL
    on each domain is close to that domain's own expert, with top-1 routing after the probe."""
    data, models = specialists
    flat = [1.0 / SIGNATURE_DIM] * SIGNATURE_DIM  # no centroid hint: the learned keys must do the routing
    experts = [ExpertEntry("a", 0, flat), ExpertEntry("b", 1, flat)]
    torch.manual_seed(0)
    gate = Gate(d_gate=16, max_experts=4)
    with torch.no_grad():
        gate.likelihood_scale.zero_()  # abs() has zero gradient at 0, so the term stays off
    # untrained, top-1 routing breaks the tie towards expert 0, so compare against the even soft mixture
    before = {d: domain_nll(gate, experts, models, t, k_best=2)[0] for d, t in data.items()}
    opt = torch.optim.Adam(gate.parameters(), lr=3e-2)
    sa, sb = ByteBatches(data["code"], 64, 8, 1), ByteBatches(data["english"], 64, 8, 2)
    for _ in range(60):
        (xa, ya), (xb, yb) = sa.sample(), sb.sample()
        x, y = torch.cat([xa, xb]), torch.cat([ya, yb])
        # k_best=2 of 2: every position mixes both experts, so the gate gets a gradient everywhere
        out = route_and_mix(gate, x, experts, local_caller(models), k_best=2, probe_len=16, call_all=True)
        loss, _ = mixture_gate_loss(out, y, 16, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for domain, right in (("code", "a"), ("english", "b")):
        after, solo = domain_nll(gate, experts, models, data[domain], k_best=1)
        wrong = "b" if right == "a" else "a"
        assert solo[right] < solo[wrong] - 0.3  # the toy is meaningful: each expert is better on its own data
        assert after < before[domain] - 0.1
        assert after < solo[right] + 0.15


def test_published_centroids_route_at_once(specialists):
    """With each expert's published domain centroid, an untrained gate already mixes close to the right expert."""
    data, models = specialists
    experts = [
        ExpertEntry("a", 0, domain_centroid(ByteBatches(data["code"], 64, 64, 5).sample()[0].numpy())),
        ExpertEntry("b", 1, domain_centroid(ByteBatches(data["english"], 64, 64, 5).sample()[0].numpy())),
    ]
    torch.manual_seed(0)
    gate = Gate(d_gate=16, max_experts=4)
    for domain, right in (("code", "a"), ("english", "b")):
        nll, solo = domain_nll(gate, experts, models, data[domain])
        assert nll < solo[right] + 0.1


def test_escalation_calls_the_left_out_experts_after_a_loss_jump(three, generalist):
    """Where the mixture's last `window` bytes cost more than `escalate_bits` a byte, the experts a row left out are
    called on it (counted, as the caller saw) and answer from the byte after the jump; a threshold nothing reaches
    changes nothing."""
    models, gate, experts = three
    x = bytes_batch(seed=12)
    B, T, J, k, window = *x.shape, 3, 1, 4
    kwargs = dict(switch_alpha=0.01, generalist=generalist, escalate_window=window)
    plain = route_and_mix(gate, x, experts, local_caller(models), k, P, **kwargs)
    never = route_and_mix(gate, x, experts, local_caller(models), k, P, escalate_bits=1e9, **kwargs)
    torch.testing.assert_close(never.logp, plain.logp)
    assert never.expert_positions == plain.expert_positions
    call = Recorder(models)
    out = route_and_mix(gate, x, experts, call, k, P, escalate_bits=0.01, **kwargs)  # every row jumps at once
    assert len(call.rounds) == 3  # probe, chosen, escalation
    assert out.expert_positions == sum(n * t for r in call.rounds for n, t in r.values())
    assert out.expert_positions == plain.expert_positions + B * (J - k) * T
    jump = max(P, window - 1)
    assert out.answered[:, jump + 1 :].all() and torch.equal(
        out.answered[:, : jump + 1], plain.answered[:, : jump + 1]
    )
    assert not torch.allclose(out.logp[:, jump + 1 :], plain.logp[:, jump + 1 :])
    torch.testing.assert_close(out.logp[:, : jump + 1], plain.logp[:, : jump + 1])  # nothing changes before it
    torch.testing.assert_close(out.logp.exp().sum(-1), torch.ones(B, T))


def test_price_weight_moves_the_top_k_away_from_an_expensive_expert(three):
    """With price ignored the gate's own top-1 is chosen; pricing that expert high enough (relative to
    `price_weight`) routes every sequence elsewhere, and a price on an expert never chosen changes nothing."""
    import dataclasses

    models, gate, experts = three
    x = bytes_batch(seed=4)
    free = route_and_mix(gate, x, experts, Recorder(models), k_best=1, probe_len=P)
    top = free.chosen.float().sum(0).argmax().item()
    priced = [dataclasses.replace(e, price=1000.0 if j == top else 0.0) for j, e in enumerate(experts)]
    ignored = route_and_mix(gate, x, priced, Recorder(models), k_best=1, probe_len=P)
    assert torch.equal(ignored.chosen, free.chosen)
    traded = route_and_mix(gate, x, priced, Recorder(models), k_best=1, probe_len=P, price_weight=1.0)
    assert not traded.chosen[:, top].any() and (traded.chosen.sum(-1) == 1).all()
    unused = [j for j in range(3) if not free.chosen[:, j].any()]
    if unused:
        cheap_top = [dataclasses.replace(e, price=1000.0 if j == unused[0] else 0.0) for j, e in enumerate(experts)]
        same = route_and_mix(gate, x, cheap_top, Recorder(models), k_best=1, probe_len=P, price_weight=1.0)
        assert torch.equal(same.chosen, free.chosen)
