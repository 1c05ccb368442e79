"""Tests for moe/routing/mixing.py: probe-then-route over tiny in-process experts, faults, gate training."""

from __future__ import annotations

import inspect
import json
import random
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe.corpus.batches import ByteBatches
from moe.metrics import byte_log_probs
from moe.model.tokenizer import encode
from moe.model.transformer import ByteLM, ModelConfig
from moe.routing.gate import Gate
from moe.routing.mixing import ExpertEntry, ExpertSlots, MixOutput, local_caller, route_and_mix
from moe.routing.mixing import gate_loss as mixture_gate_loss
from moe.routing.signature import SIGNATURE_DIM, domain_centroid

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
