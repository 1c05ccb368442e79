"""The shortlist: route over many experts while probing only a few per sequence, chosen without calling any of them.

Probing every expert on every sequence costs a call per expert per sequence, which grows with the network. Instead
each sequence probes a shortlist of `size` experts, ranked from what the router has without a call:
- the gate's prior from the prefix: its logits on the sequence's first bytes without the likelihood term (learned
  key, distance to the expert's published signature centroid, the validators' trust at the gate's learned weight);
- its subnet's profile: the byte distribution the subnet's experts predict, learned from the probes the router already
  makes (`ExpertProfiles`: each expert's next-byte distributions averaged over the positions it was probed on; the
  per-byte median over a subnet's experts, so one expert cannot move its subnet's). The prefix's log-likelihood under
  it, relative to uniform bytes, scores the subnet; a subnet not probed yet scores 0, below subnets that fit the
  prefix and above those that do not, which is how new subnets get explored. On benchmarks/scale.py's 16 domains the
  published 32-bucket signature names the domain from 8 bytes 33% of the time, a byte profile 94%;
- the validators' published scores: each expert's log trust, centred within its subnet so it orders the experts of
  one domain and never pulls a sequence to another. A log trust of -inf (a zero share: ruled out) is never shortlisted.

The mixture stays causal: the prediction at byte t depends only on bytes up to t, and the set of experts it mixes is
part of that prediction. So the shortlist grows along the first `prefix_len` bytes (`grow_shortlist`) and a member
enters the mixture from the byte it joined at; its probe answers before that byte still count for the routing
decision after the probe, which sees the whole probe. Then, as in moe.routing.mixing.route_and_mix, the gate picks
the top-k members for the whole sequence, the answers are mixed byte by byte, and a sequence whose loss jumps
escalates to the best experts for its recent bytes. Each row keeps its own columns (its members, then room for
escalation), so only the ranking (a few tensor operations per expert) grows with the network, and no row depends on
what shares its batch (profiles learn from a batch's probes once it is mixed).

Calls per sequence: at most `size` probes of the probe bytes, `k_best` whole-sequence calls, and on a loss jump at
most `k_best` more (the best `k_best` for the recent bytes that it did not call yet). Bad inputs from the network (NaN,
infinite or huge centroids, trust, gate scores or replies) rank an expert last or are ignored rather than raise; with
no eligible expert every byte is predicted uniform. No network code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from moe.metrics import N_BYTES
from moe.model.tokenizer import PAD
from moe.routing.gate import mixture_log_probs, prefix_loglik
from moe.routing.mixing import Caller, MixOutput, _next_byte_logp, price_penalty
from moe.routing.switching import first_loss_jump, gate_prior, switching_mixture

if TYPE_CHECKING:
    from moe.routing.gate import Gate
    from moe.routing.mixing import ExpertEntry

SCORE_BOUND = 1e4
"""Scores are clamped to ±this, so one malformed input cannot outrank every honest expert by an infinite margin."""
LOG_TRUST_BOUNDS = (math.log(0.05), math.log(20.0))
"""The range `moe.routing.remote.relative_log_trust` produces; trust from elsewhere is clamped to it."""


class ExpertProfiles:
    """Per expert, the mean of the next-byte distributions it answered probes with: the byte histogram of what it
    predicts, a centroid of its domain that costs no extra call. Replies that are not finite are ignored."""

    def __init__(self, max_positions: int = 4096, floor: float = 0.05):
        self.max_positions = max_positions
        """Positions the running mean weighs at most, so a profile follows an expert that changes."""
        self.floor = floor
        """Share of uniform bytes mixed into a subnet's profile: no byte costs it more than -log(floor) nats."""
        self.mean: dict[str, torch.Tensor] = {}
        """Expert key -> (256,) mean predicted next-byte distribution."""
        self.positions: dict[str, int] = {}
        """Expert key -> positions its mean covers (capped at max_positions)."""

    @torch.no_grad()
    def observe(self, key: str, logp: torch.Tensor) -> None:
        """Fold in an expert's (..., 256) next-byte log-probs at the positions it was probed on."""
        p = logp.detach().float().reshape(-1, N_BYTES).exp()  # (N, 256)
        if len(p) == 0 or not torch.isfinite(p).all():
            return
        count = min(self.positions.get(key, 0) + len(p), self.max_positions)
        mean = p.mean(0)
        old = self.mean.get(key, mean)
        self.mean[key] = old + (mean - old) * len(p) / count
        self.positions[key] = count

    def subnet_log_profiles(self, keys: list[str], subnets: list[str]) -> torch.Tensor:
        """(J, 256) log of each expert's subnet profile (the per-byte median over its profiled experts, floored by
        uniform bytes and renormalized); NaN rows for subnets none of whose experts has a profile."""
        out = torch.full((len(keys), N_BYTES), float("nan"))
        by_subnet: dict[str, list[int]] = {}
        for j, s in enumerate(subnets):
            by_subnet.setdefault(s, []).append(j)
        for rows in by_subnet.values():
            known = [self.mean[keys[j]] for j in rows if keys[j] in self.mean]
            if known:
                p = torch.stack(known).median(0).values.clamp(min=0)  # (256,)
                p = (1 - self.floor) * p / p.sum().clamp(min=1e-12) + self.floor / N_BYTES
                out[rows] = p.log()
        return out


def profile_scores(x: torch.Tensor, log_profiles: torch.Tensor) -> torch.Tensor:
    """(B, L) bytes, (J, 256) log profiles -> (B, L, J) log-likelihood of x[:, :t+1] under each profile relative to
    uniform bytes (special tokens and unknown profiles add 0)."""
    lp = torch.nan_to_num(log_profiles + math.log(N_BYTES), nan=0.0)  # (J, 256) log ratio over uniform
    lp = torch.cat([lp, torch.zeros(lp.shape[0], 1)], 1)  # (J, 257) a last column for special tokens
    ids = x.long().clamp(max=N_BYTES).masked_fill(x < 0, N_BYTES)  # (B, L)
    return lp.T[ids].cumsum(1)  # (B, L, J)


def sanitize_log_trust(log_trust: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J,) log trust -> (finite log trust clamped to LOG_TRUST_BOUNDS, eligible (J,) bool). -inf (zero trust) is
    ineligible; NaN reads as not scored yet (0)."""
    lt = torch.as_tensor(log_trust, dtype=torch.float32)
    lo, hi = LOG_TRUST_BOUNDS
    return torch.nan_to_num(lt, nan=0.0, posinf=hi, neginf=lo).clamp(lo, hi), ~torch.isneginf(lt)


def subnet_ids(subnets: list[str]) -> torch.Tensor:
    """(J,) group id of each expert's subnet, in order of first appearance (an empty name is a group of its own)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s, len(ids)) for s in subnets], dtype=torch.long)


def shortlist_scores(
    prior: torch.Tensor, profile: torch.Tensor, subnets: list[str], log_trust: torch.Tensor, trust_weight: float = 1.0
) -> torch.Tensor:
    """(B, L, J) finite ranking scores at each prefix byte, -inf for ineligible experts: the gate's prior (B, L, J)
    plus the subnet profiles' scores (B, L, J) plus `trust_weight` times the (J,) log trust centred per subnet."""
    groups = subnet_ids(subnets)
    lt, eligible = sanitize_log_trust(log_trust)
    n = torch.zeros(int(groups.max()) + 1 if len(groups) else 0).index_add_(0, groups, torch.ones_like(lt))
    mean = torch.zeros_like(n).index_add_(0, groups, lt) / n.clamp(min=1)  # (G,)
    within = lt - mean[groups]  # (J,) trust relative to the expert's own subnet
    prior, profile = (
        t.float()
        .nan_to_num(nan=-SCORE_BOUND, posinf=SCORE_BOUND, neginf=-SCORE_BOUND)
        .clamp(-SCORE_BOUND, SCORE_BOUND)
        for t in (prior, profile)
    )
    scores = (prior + profile + trust_weight * within).clamp(-SCORE_BOUND, SCORE_BOUND)
    return scores.masked_fill(~eligible, float("-inf"))


def best_per_subnet(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B, J) scores, (J,) group ids -> (B, J) the scores of each group's best expert, -inf for the others."""
    B, J = scores.shape
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, J) best first
    g = groups[order]  # (B, J) group of each ranked expert
    rank = torch.arange(J).expand(B, J)
    top = torch.full((B, int(groups.max()) + 1), J).scatter_reduce(1, g, rank, "amin")  # (B, G) rank of each best
    keep = torch.zeros(B, J, dtype=torch.bool).scatter_(1, order, top.gather(1, g) == rank)
    return scores.masked_fill(~keep, float("-inf"))


@dataclass
class Shortlist:
    """Per sequence, the experts it probes, in the order they joined, and the byte each joined its mixture at."""

    experts: torch.Tensor
    """(B, K) long: index of each row's members; every row holds K = min(size, eligible experts)."""
    joined: torch.Tensor
    """(B, K) long: the byte at which each member joined (it enters the mixture from that byte)."""


def grow_shortlist(scores: torch.Tensor, size: int, groups: torch.Tensor | None = None) -> Shortlist:
    """Grow each sequence's shortlist along its prefix from (B, L, J) scores (-inf: ineligible) and (J,) subnet ids.

    At byte 0 it takes half of `size`: the best expert of each of the best-ranked subnets (one byte rarely names
    the domain, so it hedges across domains), then the best of the rest if there are fewer subnets. The other half
    joins evenly over bytes 1..L-1, best-ranked first whatever the subnet: by then the prefix has usually named its
    domain, and these compete within it. Never more than `size` or than the eligible experts.
    """
    B, L, J = scores.shape
    members = torch.zeros(B, J, dtype=torch.bool)
    joined = torch.full((B, J), L, dtype=torch.long)
    K = min(size, int(torch.isfinite(scores[0, 0]).sum())) if B and L else 0

    def add(s: torch.Tensor, n: int, t: int) -> None:  # each row's n best non-members join at byte t
        if n > 0:
            best = s.masked_fill(members, float("-inf")).topk(n, dim=-1).indices  # (B, n)
            members.scatter_(1, best, True)
            joined.scatter_(1, best, t)

    first = K if L == 1 else math.ceil(K / 2)
    if K and groups is not None:
        hedge = best_per_subnet(scores[:, 0], groups)
        add(hedge, min(first, int(torch.isfinite(hedge).sum(-1).min())), 0)
    add(scores[:, 0], first - int(members.sum(-1).min()), 0)
    for t in range(1, L):
        add(scores[:, t], first + math.ceil((K - first) * t / (L - 1)) - int(members.sum(-1).min()), t)
    order = joined.argsort(dim=-1, stable=True)[:, :K]  # (B, K) members, in the order they joined
    return Shortlist(order, joined.gather(1, order))


def _clean(experts: list[ExpertEntry]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slots, centroids, log trust, eligible) of `experts`: a malformed centroid reads as uniform buckets and trust
    as `sanitize_log_trust` reads it, so one bad record cannot poison the gate's scores."""
    slots = torch.tensor([e.slot for e in experts], dtype=torch.long)
    centroids = torch.tensor([e.centroid for e in experts], dtype=torch.float32).view(len(experts), -1)
    bad = ~torch.isfinite(centroids).all(-1) | (centroids.abs() > 1).any(-1)
    centroids[bad] = 1.0 / max(1, centroids.shape[1])
    trust, eligible = sanitize_log_trust(torch.tensor([e.log_trust for e in experts], dtype=torch.float32))
    return slots, centroids, trust, eligible


def rank_experts(
    gate: Gate, x: torch.Tensor, experts: list[ExpertEntry], profiles: ExpertProfiles | None, trust_weight: float = 1.0
) -> torch.Tensor:
    """(B, L) bytes -> (B, L, J) shortlist scores of `experts` after each byte (see the module docstring)."""
    keys, subnets = [e.key for e in experts], [e.subnet for e in experts]
    slots, centroids, trust, _ = _clean(experts)
    prior = gate(x, slots, centroids, None, trust).logits  # (B, L, J)
    unknown = torch.full((len(experts), N_BYTES), float("nan"))
    profile = profile_scores(x, unknown if profiles is None else profiles.subnet_log_profiles(keys, subnets))
    return shortlist_scores(prior, profile, subnets, torch.tensor([e.log_trust for e in experts]), trust_weight)


@torch.no_grad()
def shortlist(
    gate: Gate,
    x_prefix: torch.Tensor,
    experts: list[ExpertEntry],
    size: int,
    profiles: ExpertProfiles | None = None,
    trust_weight: float = 1.0,
) -> Shortlist:
    """Each (B, L) prefix's shortlist of `size` of `experts`, grown along the prefix; calls no expert."""
    B, L = x_prefix.shape
    if not experts or L == 0:
        return Shortlist(torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, dtype=torch.long))
    scores = rank_experts(gate, x_prefix, experts, profiles, trust_weight)
    return grow_shortlist(scores, size, subnet_ids([e.subnet for e in experts]))


@torch.no_grad()
def escalation_shortlist(
    gate: Gate,
    x: torch.Tensor,
    jump: torch.Tensor,
    window: int,
    experts: list[ExpertEntry],
    size: int,
    profiles: ExpertProfiles | None = None,
    trust_weight: float = 1.0,
) -> torch.Tensor:
    """(B, J) bool: for each row of x (B, T) whose loss jumped at byte jump (B,) >= window - 1 (as first_loss_jump
    gives), the `size` experts ranked best on its `window` bytes up to the jump (what the text has turned into)."""
    B, T = x.shape
    out = torch.zeros(B, len(experts), dtype=torch.bool)
    rows = (jump >= 0).nonzero().flatten()
    if len(rows) == 0 or not experts:
        return out
    w = max(1, min(window, T))
    start = (jump[rows] - w + 1).clamp(0, T - w)  # (R,)
    recent = x[rows.unsqueeze(1), start.unsqueeze(1) + torch.arange(w)]  # (R, w)
    scores = rank_experts(gate, recent, experts, profiles, trust_weight)[:, -1]  # (R, J) after the window
    k = min(size, int(torch.isfinite(scores[0]).sum()))
    out[rows] = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(k, dim=-1).indices, True)
    return out


@torch.no_grad()
def route_shortlisted(
    gate: Gate,
    x: torch.Tensor,
    experts: list[ExpertEntry],
    call: Caller,
    k_best: int,
    probe_len: int,
    size: int,
    prefix_len: int = 8,
    profiles: ExpertProfiles | None = None,
    switch_alpha: float = 0.0,
    generalist: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gate_weight: float = 0.0,
    generalist_share: float = 0.2,
    escalate_bits: float = 0.0,
    escalate_window: int = 16,
    trust_weight: float = 1.0,
    price_weight: float = 0.0,
) -> MixOutput:
    """route_and_mix (same arguments and output, no gradient) where each sequence probes only its shortlist of
    `size` experts, grown along its first `prefix_len` bytes; see the module docstring. MixOutput's columns are the
    batch's union of the experts called; a row's gate logits are -inf outside its own. Experts that fail or time out
    are averaged out as in route_and_mix; `profiles` learns from every probe reply."""
    B, T = x.shape
    P = max(1, min(probe_len, T))
    keys = [e.key for e in experts]
    slots, centroids, trust, _ = _clean(experts)
    sl = shortlist(gate, x[:, : min(prefix_len, P)], experts, size, profiles, trust_weight)
    K = sl.experts.shape[1]
    switching = generalist is not None or switch_alpha > 0
    R = min(k_best, len(experts)) if switching and escalate_bits > 0 and T > P else 0  # room for escalation
    C = K + R
    cols = F.pad(sl.experts, (0, R), value=-1)  # (B, C) the expert in each row's column; -1: none
    t = torch.arange(T)
    logp = torch.zeros(B, T, C, N_BYTES)
    answered = torch.zeros(B, T, C, dtype=torch.bool)
    requested = 0
    learned: list[tuple[str, torch.Tensor]] = []  # probe replies, taught to `profiles` once this batch is mixed

    def send(want: torch.Tensor, upto: int) -> torch.Tensor:
        """One parallel round: each wanted (B, C) column's expert on its row's first `upto` bytes; returns who
        answered. Replies fill `logp`."""
        nonlocal requested
        b, c = want.nonzero(as_tuple=True)
        j = cols[b, c]
        rounds = {int(e): (j == e).nonzero().flatten() for e in j.unique()}
        replies = call({keys[e]: x[b[i], :upto] for e, i in rounds.items()})
        requested += len(b) * upto
        got = torch.zeros_like(want)
        for e, i in rounds.items():
            if keys[e] in replies:
                r = replies[keys[e]]
                logp[b[i], : r.shape[1], c[i]] = r
                got[b[i], c[i]] = True
                if upto == P:
                    learned.append((keys[e], r))
        return got

    def gate_logits(upto: int, lik: torch.Tensor | None) -> torch.Tensor:
        """(B, upto, C) gate logits of each row's columns on x[:, :upto] (-inf for empty columns)."""
        ix = cols.clamp(min=0)
        if B == 0:
            return torch.zeros(0, upto, C)
        rows = [
            gate(
                x[b : b + 1, :upto],
                slots[ix[b]],
                centroids[ix[b]],
                None if lik is None else lik[b : b + 1],
                trust[ix[b]],
            )
            for b in range(B)
        ]
        return torch.cat([r.logits for r in rows]).masked_fill((cols < 0).unsqueeze(1), float("-inf"))

    probed = send(F.pad(torch.ones(B, K, dtype=torch.bool), (0, R)), P)  # (B, C) the probe round
    joined = F.pad(sl.joined, (0, R), value=T)
    answered[:, :P] = probed.unsqueeze(1) & (t[:P].view(1, P, 1) >= joined.unsqueeze(1))  # from the byte it joined
    # note: the decision sees the whole probe, so every member's probe bytes count for it, joined or not
    probe_lik = prefix_loglik(_next_byte_logp(logp[:, :P], x[:, :P]))  # (B, P, C)
    penalty = price_penalty(experts, price_weight)[cols.clamp(min=0)]  # (B, C)
    decision = (gate_logits(P, probe_lik)[:, -1] - penalty).masked_fill(~answered[:, P - 1], float("-inf"))
    top = decision.topk(min(k_best, C), dim=-1).indices  # (B, k)
    chosen = torch.zeros(B, C, dtype=torch.bool).scatter_(1, top, True) & torch.isfinite(decision)
    if T > P:
        answered[:, P:] = (chosen & send(chosen, T)).unsqueeze(1)  # one parallel round to the chosen experts
    seen = answered | (probed.unsqueeze(1) & (t < P).view(1, T, 1))  # (B, T, C) targets in the likelihood term
    logits = gate_logits(T, prefix_loglik(_next_byte_logp(logp, x) * seen))  # (B, T, C)
    if not switching:
        mixed = mixture_log_probs(logp, logits, answered)
    else:
        share = generalist_share if generalist is not None else None
        # (B, T, K[+1]) over the row's own shortlist (with none, the generalist alone)
        prior = gate_prior(logits[:, :, :K], gate_weight, share) if K else torch.zeros(B, T, int(share is not None))
        low = prior[:, :, :K].amin(-1, keepdim=True) if K else torch.zeros(B, T, 1)  # its least expected member
        prior = torch.cat([prior[:, :, :K], low.expand(B, T, R), prior[:, :, K:]], 2)  # newcomers' prior
        available = answered
        if generalist is not None:
            logp = torch.cat([logp, generalist(x).unsqueeze(2)], 2)  # (B, T, C+1, 256)
            available = torch.cat([answered, torch.ones(B, T, 1, dtype=torch.bool)], 2)
        nxt = F.pad(x[:, 1:], (0, 1), value=PAD)  # the byte each position predicts; nothing follows the last one
        switched = switching_mixture(logp, nxt, available, switch_alpha, prior_logits=prior)
        mixed = switched.logp
        if R:
            jump = first_loss_jump(switched.target_bits, escalate_window, escalate_bits, start=P)
            fresh = escalation_shortlist(gate, x, jump, escalate_window, experts, R, profiles, trust_weight)
            want = F.pad(fresh.gather(1, cols[:, :K]) & ~chosen[:, :K], (0, R))  # members the gate left out
            fresh.scatter_(1, cols[:, :K], False)  # (B, J) newcomers, each into the row's next free column
            b, j = fresh.nonzero(as_tuple=True)
            cols[b, K + fresh.long().cumsum(1)[b, j] - 1] = j
            want[:, K:] = cols[:, K:] >= 0
            got = send(want, T) if want.any() else want  # (B, C) who answered
            if got.any():
                joins = got.unsqueeze(1) & (t.view(1, T) > jump.view(B, 1)).unsqueeze(2)  # after the jump
                answered |= joins
                available[:, :, :C] |= joins
                logits[:, :, K:] = gate_logits(T, None)[:, :, K:]
                reset = torch.where(got.any(-1), jump, torch.full_like(jump, -1))  # only rows that gained experts
                mixed = switching_mixture(logp, nxt, available, switch_alpha, prior, reset, escalate_window).logp
    for key, r in learned if profiles is not None else []:
        profiles.observe(key, r)  # after the batch, so no row's routing depends on the others' probes
    used = cols[cols >= 0].unique()  # (U,) the batch's experts, in input order
    where = torch.full((len(experts) + 1,), len(used)).scatter_(0, used, torch.arange(len(used)))
    to = where[cols.clamp(min=-1)]  # (B, C) union column of each row column; U for an empty one

    def union(v: torch.Tensor, fill: float | bool) -> torch.Tensor:
        """(B, [T,] C) per-row columns -> (B, [T,] U) the batch's union columns."""
        out = torch.full((*v.shape[:-1], len(used) + 1), fill, dtype=v.dtype)
        return out.scatter_(-1, to.view(B, *[1] * (v.dim() - 2), C).expand(v.shape), v)[..., : len(used)]

    return MixOutput(
        logp=mixed,
        gate_logits=union(logits, float("-inf")),
        chosen=union(chosen, False),
        answered=union(answered, False),
        keys=[keys[i] for i in used.tolist()],
        expert_positions=requested,
        generalist_positions=B * T if generalist is not None else 0,
    )


__all__ = [
    "ExpertProfiles",
    "Shortlist",
    "escalation_shortlist",
    "grow_shortlist",
    "profile_scores",
    "rank_experts",
    "route_shortlisted",
    "shortlist",
    "shortlist_scores",
]
