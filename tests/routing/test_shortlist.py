"""Tests for moe/routing/shortlist.py: bounded probes over many in-process experts, today's path when everyone fits,
routing to the right subnet, validators' vetoes, causality, and bad inputs from the network."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from moe.metrics import byte_log_probs
from moe.model.tokenizer import VOCAB_SIZE
from moe.model.transformer import ByteLM, ModelConfig
from moe.routing.gate import Gate
from moe.routing.mixing import ExpertEntry, local_caller, route_and_mix
from moe.routing.remote import RouterConfig, serve_mix
from moe.routing.shortlist import (
    ExpertProfiles,
    escalation_shortlist,
    grow_shortlist,
    route_shortlisted,
    shortlist,
    shortlist_scores,
)
from moe.routing.signature import SIGNATURE_DIM

TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=64)
P = 16  # probe length
ALPHABETS = [b"abcdefgh", b"01234567", b"ABCDEFGH", b"!@#$%^&*"]
"""Disjoint byte alphabets: subnet s's text and experts use ALPHABETS[s]."""


class Unigram(nn.Module):
    """A cheap fake expert: the same next-byte distribution everywhere, peaked on one alphabet."""

    def __init__(self, alphabet: bytes, sharpness: float):
        super().__init__()
        logits = torch.zeros(VOCAB_SIZE)
        logits[list(alphabet)] = sharpness
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*x.shape, VOCAB_SIZE)


def entries(n: int, subnets: int, seed: int = 0, log_trust: dict[int, float] | None = None) -> list[ExpertEntry]:
    """n experts spread over `subnets` subnets, random published centroids."""
    g = torch.Generator().manual_seed(seed)
    cents = torch.softmax(torch.randn(n, SIGNATURE_DIM, generator=g), -1)
    trust = log_trust or {}
    return [ExpertEntry(f"e{i}", i, cents[i].tolist(), f"s{i % subnets}", trust.get(i, 0.0)) for i in range(n)]


def domain_text(subnet: int, B: int, T: int, seed: int) -> torch.Tensor:
    """(B, T) random bytes of one subnet's alphabet."""
    alphabet = torch.tensor(list(ALPHABETS[subnet]))
    return alphabet[torch.randint(0, len(alphabet), (B, T), generator=torch.Generator().manual_seed(seed))]


class Recorder:
    """A local caller that records, per round, which expert got which sequences (by their first P bytes)."""

    def __init__(self, models):
        self.inner, self.rounds = local_caller(models), []

    def __call__(self, inputs):
        self.rounds.append({k: [tuple(row[:P].tolist()) + (x.shape[1],) for row in x] for k, x in inputs.items()})
        return self.inner(inputs)

    def calls_per_sequence(self, x: torch.Tensor) -> dict[tuple, tuple[int, int]]:
        """{row prefix: (probes, whole-sequence calls)} over every round."""
        out = {tuple(row[:P].tolist()): [0, 0] for row in x}
        for r in self.rounds:
            for rows in r.values():
                for row in rows:
                    out[row[:-1]][row[-1] == x.shape[1]] += 1
        return {k: tuple(v) for k, v in out.items()}

    def called(self) -> set[str]:
        return {k for r in self.rounds for k in r}


@pytest.fixture(scope="module")
def domain_network():
    """16 fake unigram experts on the 4 alphabets' subnets (4 each, of different sharpness), and a gate."""
    models = {f"e{i}": Unigram(ALPHABETS[i % 4], 3.0 + i / 4) for i in range(16)}
    torch.manual_seed(0)
    return models, Gate(d_gate=16, max_experts=32), entries(16, 4)


def test_grow_shortlist_never_exceeds_its_size_and_is_causal():
    """Every row holds exactly min(size, eligible) distinct eligible experts, at most ceil(K/2) at byte 0 and the
    ramp's count by byte t; changing the scores after byte t changes none of the members that joined by t."""
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 5, (40,), generator=g)
    for size in (1, 3, 8, 39, 100):
        scores = torch.randn(6, 8, 40, generator=g)
        scores[:, :, ::7] = float("-inf")  # ineligible experts
        sl = grow_shortlist(scores, size, groups)
        K = min(size, 34)
        assert sl.experts.shape == (6, K) and sl.joined.shape == (6, K)
        for row in sl.experts:
            assert len(set(row.tolist())) == K and not any(j % 7 == 0 for j in row.tolist())
        first = math.ceil(K / 2)
        for t in range(8):
            assert ((sl.joined <= t).sum(-1) <= first + math.ceil((K - first) * t / 7)).all()
        for t in range(8):
            later = scores.clone()
            later[:, t + 1 :] = torch.randn(6, 7 - t, 40, generator=g)
            later[:, :, ::7] = float("-inf")
            moved = grow_shortlist(later, size, groups)
            for b in range(6):
                early = {j for j, s in zip(sl.experts[b].tolist(), sl.joined[b].tolist(), strict=True) if s <= t}
                same = {j for j, s in zip(moved.experts[b].tolist(), moved.joined[b].tolist(), strict=True) if s <= t}
                assert early == same


@pytest.mark.parametrize("size", [4, 5, 100])
def test_a_shortlist_of_everyone_is_todays_route_and_mix(size):
    """With shortlist >= the number of experts (the default 8 on the default network's 4), route_and_mix takes
    today's path: identical log-probs, choices, answers, keys, counts and calls, switching and escalation included."""
    torch.manual_seed(0)
    models = {k: ByteLM(TINY).eval() for k in "abcd"}
    seed = ByteLM(TINY).eval()
    gate = Gate(d_gate=16, max_experts=8)
    with torch.no_grad():
        gate.keys.normal_(std=2.0)
    experts = entries(4, 4)
    x = torch.randint(0, 256, (5, 40), generator=torch.Generator().manual_seed(1))
    kwargs = dict(switch_alpha=0.01, generalist=lambda z: byte_log_probs(seed(z)), gate_weight=0.6, escalate_bits=7.9)
    base_rec, rec = Recorder(models), Recorder(models)
    with torch.no_grad():
        base = route_and_mix(gate, x, experts, base_rec, 2, P, **kwargs)
        out = route_and_mix(gate, x, experts, rec, 2, P, shortlist=size, profiles=ExpertProfiles(), **kwargs)
    assert base.expert_positions > 5 * 40 * 2  # the probe round and escalation both ran
    for name in ("logp", "gate_logits", "chosen", "answered"):
        assert torch.equal(getattr(out, name), getattr(base, name)), name
    assert (out.keys, out.expert_positions) == (base.keys, base.expert_positions)
    assert rec.rounds == base_rec.rounds
    rc = RouterConfig(k_best=2, probe_len=P, escalate_bits=7.9)
    assert rc.shortlist >= 4
    with torch.no_grad():
        served = serve_mix(gate, x, experts, local_caller(models), rc)
        everyone = serve_mix(gate, x, experts, local_caller(models), RouterConfig(k_best=2, probe_len=P, shortlist=0))
    assert torch.equal(served.logp, everyone.logp)


def test_a_sequence_from_subnet_x_shortlists_x_experts(domain_network):
    """Once the router's probes taught it the experts' profiles, a sequence of subnet X's text shortlists all of X's
    experts (half the shortlist hedges across subnets at byte 0; every later member is X's) and routes to X's."""
    models, gate, experts = domain_network
    profiles = ExpertProfiles()
    with torch.no_grad():
        for s in range(4):  # warm-up traffic: profiles come from the probes' replies
            route_and_mix(
                gate, domain_text(s, 4, 32, s), experts, local_caller(models), 2, P, shortlist=6, profiles=profiles
            )
    assert {int(k[1:]) % 4 for k in profiles.mean} == {0, 1, 2, 3}  # a profile for every subnet
    for s in range(4):
        x = domain_text(s, 3, 32, 10 + s)
        sl = shortlist(gate, x[:, :8], experts, 6, profiles)
        mine = {j for j in range(16) if j % 4 == s}
        for members, joined in zip(sl.experts.tolist(), sl.joined.tolist(), strict=True):
            assert mine <= set(members)
            assert all(j in mine for j, t in zip(members, joined, strict=True) if t > 0)
        with torch.no_grad():
            out = route_and_mix(gate, x, experts, local_caller(models), 2, P, shortlist=6, profiles=profiles)
        assert all(int(out.keys[j][1:]) % 4 == s for j in out.chosen.nonzero()[:, 1].tolist())


def test_calls_per_sequence_stay_bounded_with_200_experts():
    """With 200 real tiny ByteLMs on 20 subnets, each sequence gets at most `shortlist` probes and 2 * k_best
    whole-sequence calls (escalation included, forced here by a low threshold), far fewer than the experts."""
    torch.manual_seed(0)
    models = {f"e{i}": ByteLM(TINY).eval() for i in range(200)}
    gate = Gate(d_gate=16, max_experts=256)
    experts = entries(200, 20)
    x = torch.randint(0, 256, (8, 48), generator=torch.Generator().manual_seed(2))
    profiles = ExpertProfiles()
    for size in (3, 6):
        rec = Recorder(models)
        kwargs = dict(switch_alpha=0.01, escalate_bits=0.5, shortlist=size, profiles=profiles)
        with torch.no_grad():
            out = route_and_mix(gate, x, experts, rec, 2, P, **kwargs)
        counts = rec.calls_per_sequence(x)
        assert all(probes == size and whole <= 2 * 2 for probes, whole in counts.values()), counts
        assert max(whole for _, whole in counts.values()) > 2  # escalation ran
        assert len(rec.called()) <= 8 * (size + 2 * 2) and set(out.keys) == rec.called()
        assert torch.isfinite(out.logp).all()


def test_an_expert_with_zero_trust_is_never_shortlisted(domain_network):
    """Experts whose log trust is -inf (a zero share: ruled out by the validators) are never shortlisted, probed,
    escalated to or called, even when they are the best match for the text."""
    models, gate, experts = domain_network
    vetoed = {0, 4, 8, 12}  # all of subnet 0's experts
    ruled = entries(16, 4, log_trust={j: float("-inf") for j in vetoed})
    profiles = ExpertProfiles()
    for key, m in models.items():  # every profile known, including the vetoed experts'
        profiles.observe(key, byte_log_probs(m(torch.zeros(1, 4, dtype=torch.long))))
    rec = Recorder(models)
    for s in range(4):
        x = domain_text(s, 4, 40, 20 + s)
        sl = shortlist(gate, x[:, :8], ruled, 12, profiles)
        assert sl.experts.shape[1] == 12 and not vetoed & set(sl.experts.flatten().tolist())
        jump = torch.full((4,), 20)
        assert not escalation_shortlist(gate, x, jump, 16, ruled, 12, profiles)[:, sorted(vetoed)].any()
        with torch.no_grad():
            route_and_mix(
                gate, x, ruled, rec, 2, P, switch_alpha=0.01, escalate_bits=0.1, shortlist=6, profiles=profiles
            )
    assert rec.called() and not rec.called() & {f"e{j}" for j in vetoed}


def test_the_shortlisted_mixture_is_causal_and_independent_of_its_batch(domain_network):
    """Changing x[:, t:] leaves the shortlisted mixture's log-probs before t unchanged (inside the shortlist's
    prefix, the probe and after), and a row mixed alone gets what it gets in a batch."""
    models, gate, experts = domain_network
    profiles = ExpertProfiles()
    x = torch.cat([domain_text(s, 2, 40, 30 + s) for s in range(4)])
    kwargs = dict(switch_alpha=0.01, escalate_bits=2.0, shortlist=5)

    def mix(x: torch.Tensor) -> torch.Tensor:  # with what the router knew before, as every call here
        return route_and_mix(gate, x, experts, local_caller(models), 2, P, profiles=copy.deepcopy(profiles), **kwargs)

    with torch.no_grad():
        route_and_mix(gate, x, experts, local_caller(models), 2, P, profiles=profiles, **kwargs)  # learn profiles
        base = mix(x).logp
        for t in (1, 4, 8, 20, 33):
            y = x.clone()
            y[:, t:] = domain_text(3, 8, 40 - t, t)  # another subnet's text from t on
            got = mix(y).logp
            torch.testing.assert_close(got[:, :t], base[:, :t])
        for b in range(len(x)):
            alone = mix(x[b : b + 1]).logp
            torch.testing.assert_close(alone[0], base[b])


def test_bad_inputs_from_the_network_do_not_raise(domain_network):
    """NaN, infinite or huge centroids, trust and scores, NaN replies, empty expert lists and a network whose every
    expert is ruled out give a valid shortlist and mixture, never an exception."""
    models, gate, _ = domain_network
    bad = entries(16, 4)
    for j, v in zip(range(0, 12, 2), (float("nan"), float("inf"), 1e30, -1e30, float("-inf"), 0.5), strict=True):
        bad[j].centroid = [v] * SIGNATURE_DIM
        bad[j + 1].log_trust = v
    bad[2].subnet = ""
    profiles = ExpertProfiles()
    profiles.observe("e3", torch.full((2, 4, 256), float("nan")))  # ignored
    profiles.observe("e5", torch.full((2, 4, 256), 1e30))  # not a distribution: ignored too
    profiles.observe("e6", torch.empty(0, 256))
    assert set(profiles.mean) == set()
    x = domain_text(1, 3, 32, 5)
    with torch.no_grad():
        out = route_and_mix(
            gate, x, bad, local_caller(models), 2, P, switch_alpha=0.01, escalate_bits=0.1, shortlist=4
        )
    assert torch.isfinite(out.logp).all()
    torch.testing.assert_close(out.logp.exp().sum(-1), torch.ones(3, 32))
    assert shortlist(gate, x[:, :8], [], 4).experts.shape == (3, 0)
    scores = shortlist_scores(
        torch.tensor([[[float("nan"), float("inf"), 1e30, -1e30]]]),
        torch.full((1, 1, 4), float("nan")),
        ["a", "", "a", "b"],
        torch.tensor([float("nan"), float("inf"), -1e30, float("-inf")]),
    )
    assert torch.isfinite(scores[..., :3]).all() and scores[..., 3].isneginf().all()
    assert grow_shortlist(torch.full((2, 4, 5), float("-inf")), 3).experts.shape == (2, 0)
    nobody = entries(16, 4, log_trust=dict.fromkeys(range(16), float("-inf")))
    rec = Recorder(models)
    with torch.no_grad():
        out = route_shortlisted(gate, x, nobody, rec, 2, P, 4, switch_alpha=0.01, escalate_bits=0.1)
    assert not rec.called() and out.keys == []
    torch.testing.assert_close(out.logp, torch.full((3, 32, 256), -math.log(256)))


def test_router_config_shortlist_fields_are_checked():
    """A negative shortlist or a zero shortlist prefix raises ValueError naming the field; 0 probes everyone."""
    for field, value in (("shortlist", -1), ("shortlist_prefix", 0)):
        with pytest.raises(ValueError, match=field):
            RouterConfig(**{field: value})
    assert RouterConfig(shortlist=0).shortlist == 0


def test_price_weight_applies_to_the_shortlisted_choice(domain_network):
    """On the shortlisting path, the experts the gate chose for a sequence, priced high under a positive
    `price_weight`, are passed over for the other shortlisted ones; with price_weight 0 their price changes nothing."""
    import dataclasses

    models, gate, experts = domain_network
    x = domain_text(1, 3, 32, 21)
    with torch.no_grad():
        base = route_and_mix(gate, x, experts, local_caller(models), 2, P, shortlist=6)
    picked = {base.keys[j] for j in base.chosen.nonzero()[:, 1].tolist()}
    priced = [dataclasses.replace(e, price=1000.0 if e.key in picked else 0.0) for e in experts]
    with torch.no_grad():
        ignored = route_and_mix(gate, x, priced, local_caller(models), 2, P, shortlist=6)
        traded = route_and_mix(gate, x, priced, local_caller(models), 2, P, shortlist=6, price_weight=1.0)
    assert {ignored.keys[j] for j in ignored.chosen.nonzero()[:, 1].tolist()} == picked
    chosen = {traded.keys[j] for j in traded.chosen.nonzero()[:, 1].tolist()}
    assert chosen and not chosen & picked
