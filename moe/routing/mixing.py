"""A mixture of experts that live anywhere: probe-then-route, causal, tolerant of experts that fail.

For a batch of byte sequences x (B, T):
1. probe: every known expert scores the first `probe_len` bytes (a small request);
2. route: at position probe_len - 1 the gate (which by then has each expert's likelihood of the probe bytes)
   picks the top-k experts per sequence, and only those are called on the whole sequence;
3. mix: at every position the gate's weights over the experts that answered combine their next-byte
   distributions in probability space; or, with a generalist or a switching rate (what the live router does), the
   answered experts and the generalist are mixed byte by byte with fixed-share weights (moe.routing.switching).
Each prediction uses only bytes at or before its position, so the mixture is a proper causal byte model and its
bits per byte compare fairly with any single expert's. Experts that time out, fail or send malformed replies are
averaged out (the gate renormalizes over those that answered); the caller reports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from moe.metrics import byte_log_probs, target_log_probs
from moe.model.tokenizer import PAD
from moe.routing.gate import Gate, balance_loss, mixture_log_probs, prefix_loglik
from moe.routing.switching import first_loss_jump, gate_prior, switching_mixture

if TYPE_CHECKING:
    from moe.routing.shortlist import ExpertProfiles

logger = logging.getLogger(__name__)

Caller = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""{expert key: x (B_k, T)} -> {key: (B_k, T, 256) log-probs}, called in parallel; only valid answers come back."""


@dataclass
class ExpertEntry:
    key: str
    """The expert's hotkey address."""
    slot: int
    """Its row in the gate's learned keys."""
    centroid: list[float]
    """Its published domain signature centroid."""
    subnet: str = ""
    log_trust: float = 0.0
    """Log of the validators' consensus share for it relative to the mean scored expert (0: not scored yet)."""
    price: float = 0.0
    """What calling it costs, TAO per million bytes (its signed record's price)."""


def price_penalty(experts: list[ExpertEntry], price_weight: float) -> torch.Tensor:
    """(J,) what each expert's price takes off its gate score when the top-k are chosen: `price_weight` gate-logit
    units per TAO per million bytes (0: price is ignored)."""
    return price_weight * torch.tensor([e.price for e in experts], dtype=torch.float32)


@dataclass
class MixOutput:
    logp: torch.Tensor
    """(B, T, 256) mixture log-probs of the next byte."""
    gate_logits: torch.Tensor
    """(B, T, J) gate scores."""
    chosen: torch.Tensor
    """(B, J) experts called on the whole sequence."""
    answered: torch.Tensor
    """(B, T, J) experts whose distribution entered each position."""
    keys: list[str] = field(default_factory=list)
    expert_positions: int = 0
    """Next-byte distributions requested from remote experts (one per expert per position sent)."""
    generalist_positions: int = 0
    """Distributions computed by the local generalist."""

    @property
    def calls_per_byte(self) -> float:
        """Remote expert distributions per position scored: the router's cost (every expert on every byte = J)."""
        return self.expert_positions / max(1, self.logp.shape[0] * self.logp.shape[1])


def local_caller(models: dict[str, torch.nn.Module]) -> Caller:
    """Caller over in-process models (offline evaluation, tests, baselines)."""

    @torch.no_grad()
    def call(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: byte_log_probs(models[k](x)) for k, x in inputs.items() if k in models}

    return call


class ExpertSlots:
    """Assigns gate slots to expert keys: a newcomer takes the lowest free slot, a departed one frees nothing
    until the table is full (so an expert that blinks keeps what the gate learned about it)."""

    def __init__(self, max_experts: int):
        self.max_experts = max_experts
        self.slot_of: dict[str, int] = {}

    def assign(self, key: str, active: set[str]) -> int | None:
        if key in self.slot_of:
            return self.slot_of[key]
        used = set(self.slot_of.values())
        free = [s for s in range(self.max_experts) if s not in used]
        if not free:
            stale = [k for k in self.slot_of if k not in active]
            if not stale:
                logger.warning("gate is full (%d experts); ignoring %s", self.max_experts, key[:12])
                return None
            free = [self.slot_of.pop(stale[0])]
        self.slot_of[key] = free[0]
        return free[0]


def _next_byte_logp(logp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, T, J, 256) log-probs and bytes x -> (B, T, J) log-prob of the byte that actually came next (0 at the end
    and where the next token is special)."""
    nxt = F.pad(x[:, 1:], (0, 1), value=PAD)  # (B, T); nothing follows the last position
    return target_log_probs(logp, nxt.unsqueeze(-1))[0]  # (B, T, J)


def route_and_mix(
    gate: Gate,
    x: torch.Tensor,
    experts: list[ExpertEntry],
    call: Caller,
    k_best: int,
    probe_len: int,
    call_all: bool = False,
    switch_alpha: float = 0.0,
    generalist: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gate_weight: float = 0.0,
    generalist_share: float = 0.2,
    escalate_bits: float = 0.0,
    escalate_window: int = 16,
    shortlist: int = 0,
    shortlist_prefix: int = 8,
    profiles: ExpertProfiles | None = None,
    price_weight: float = 0.0,
) -> MixOutput:
    """Mixture log-probs for x (B, T). `call_all` sends every expert the whole batch (gate training wants the
    full counterfactual); the mixing itself is identical either way.

    With a `generalist` ((B, T) -> (B, T, 256) log-probs, computed locally) or `switch_alpha` > 0, the experts that
    answered (the probe round's on the probe bytes, the chosen ones after it) and the generalist are mixed byte by
    byte with fixed-share weights (moe.routing.switching) instead of the gate's weights, so weight moves to whichever
    predicts the bytes at hand, and the generalist bounds the damage where every specialist fails. The weight shared
    back after each byte follows the gate for a `gate_weight` share and is uniform for the rest (see `gate_prior`).
    With `escalate_bits` > 0 (switching only), a sequence whose last `escalate_window` bytes cost the mixture more than
    that many bits a byte on average also calls the experts it left out, which join from the next byte on, and its
    weights restart from the recent bytes' likelihood: the candidate set is refreshed where the loss jumps.
    With 0 < `shortlist` < the number of experts (and not `call_all`), each sequence probes only that many, ranked
    without a call (moe.routing.shortlist.route_shortlisted: same steps, bounded calls). `profiles` learns what each
    expert predicts from the probes' replies; the shortlist ranks subnets by it. `price_weight` > 0 trades the gate's
    score against each expert's price when the top-k are chosen (`price_penalty`); the probes are not affected.
    """
    if 0 < shortlist < len(experts) and not call_all:
        from moe.routing.shortlist import route_shortlisted  # note: a layer over this module, imported on use

        return route_shortlisted(
            gate,
            x,
            experts,
            call,
            k_best,
            probe_len,
            shortlist,
            shortlist_prefix,
            profiles,
            switch_alpha=switch_alpha,
            generalist=generalist,
            gate_weight=gate_weight,
            generalist_share=generalist_share,
            escalate_bits=escalate_bits,
            escalate_window=escalate_window,
            price_weight=price_weight,
        )
    B, T = x.shape
    J = len(experts)
    P = max(1, min(probe_len, T))
    keys = [e.key for e in experts]
    slots = torch.tensor([e.slot for e in experts], dtype=torch.long)
    centroids = torch.tensor([e.centroid for e in experts], dtype=torch.float32).view(J, -1)
    trust = torch.tensor([e.log_trust for e in experts], dtype=torch.float32)
    logp = torch.zeros(B, T, J, 256)
    answered = torch.zeros(B, T, J, dtype=torch.bool)

    first = x if call_all else x[:, :P]
    replies = call({k: first for k in keys})
    for j, k in enumerate(keys):
        if k in replies:
            r = replies[k]
            logp[:, : r.shape[1], j] = r
            answered[:, : r.shape[1], j] = True
            if profiles is not None:
                profiles.observe(k, r[:, :P])
    if not call_all:
        answered[:, P:] = False
    # note: gate scores need the probe likelihoods, so selection waits for the probe round
    with torch.no_grad():
        probe_lik = prefix_loglik(_next_byte_logp(logp[:, :P], x[:, :P]))
        probe_scores = gate(x[:, :P], slots, centroids, probe_lik, trust).logits
    decision = probe_scores[:, -1] - price_penalty(experts, price_weight)  # (B, J)
    decision = decision.masked_fill(~answered[:, P - 1], float("-inf"))
    k = min(k_best, J)
    top = decision.topk(k, dim=-1).indices  # (B, k)
    chosen = torch.zeros(B, J, dtype=torch.bool).scatter_(1, top, True) & torch.isfinite(decision)
    if not call_all and T > P:
        rows = {key: chosen[:, j].nonzero().squeeze(-1) for j, key in enumerate(keys) if chosen[:, j].any()}
        replies = call({key: x[r] for key, r in rows.items()})  # one parallel round to the chosen experts
        for j, key in enumerate(keys):
            if key in replies:
                logp[rows[key], :, j] = replies[key]
                answered[rows[key], P:, j] = True
    else:
        answered[:, P:] &= chosen.unsqueeze(1)
    target_lp = _next_byte_logp(logp, x) * answered  # (B, T, J)
    scores = gate(x, slots, centroids, prefix_loglik(target_lp), trust)
    requested = B * T * J if call_all else B * P * J + int(chosen.sum()) * T * (T > P)
    if generalist is None and switch_alpha == 0.0:
        mixed = mixture_log_probs(logp, scores.logits, answered)
    else:
        available = answered
        if generalist is not None:
            logp = torch.cat([logp, generalist(x).unsqueeze(2)], 2)  # (B, T, J+1, 256)
            available = torch.cat([answered, torch.ones(B, T, 1, dtype=torch.bool)], 2)
        nxt = F.pad(x[:, 1:], (0, 1), value=PAD)  # the byte each position predicts; nothing follows the last one
        share = generalist_share if generalist is not None else None
        prior = gate_prior(scores.logits, gate_weight, share)
        switched = switching_mixture(logp, nxt, available, switch_alpha, prior_logits=prior)
        mixed = switched.logp
        if escalate_bits > 0 and not call_all and T > P:
            jump = first_loss_jump(switched.target_bits, escalate_window, escalate_bits, start=P)
            added = _escalate(x, keys, chosen, jump, call, logp, available, answered)
            if added:
                requested += added
                reset = torch.where(jump >= 0, jump, torch.full_like(jump, -1))
                mixed = switching_mixture(logp, nxt, available, switch_alpha, prior, reset, escalate_window).logp
    return MixOutput(
        logp=mixed,
        gate_logits=scores.logits,
        chosen=chosen,
        answered=answered,
        keys=keys,
        expert_positions=requested,
        generalist_positions=B * T if generalist is not None else 0,
    )


def _escalate(
    x: torch.Tensor,
    keys: list[str],
    chosen: torch.Tensor,
    jump: torch.Tensor,
    call: Caller,
    logp: torch.Tensor,
    available: torch.Tensor,
    answered: torch.Tensor,
) -> int:
    """Call the experts each jumping row (jump >= 0) left out, on its whole sequence, in one parallel round; their
    answers join `logp` / `available` / `answered` (in place) from the position after the jump. Returns the
    distributions requested."""
    rows = {key: torch.nonzero((jump >= 0) & ~chosen[:, j]).flatten() for j, key in enumerate(keys)}
    rows = {key: r for key, r in rows.items() if len(r)}
    if not rows:
        return 0
    replies = call({key: x[r] for key, r in rows.items()})
    T = x.shape[1]
    after = torch.arange(T)[None, :] > jump[:, None]  # (B, T) positions after each row's jump
    for j, key in enumerate(keys):
        if key in replies:
            r = rows[key]
            logp[r, :, j] = replies[key]
            available[r, :, j] |= after[r]
            answered[r, :, j] |= after[r]
    return sum(len(r) for r in rows.values()) * T


def gate_loss(
    out: MixOutput, y: torch.Tensor, probe_len: int, balance_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture NLL (nats per byte, bytes only) plus the load-balancing term; returns (total, nll)."""
    mask = y < 256
    picked = out.logp.gather(-1, y.clamp(max=255).unsqueeze(-1)).squeeze(-1)  # (B, T)
    nll = -(picked * mask).sum() / mask.sum().clamp(min=1)
    P = max(1, min(probe_len, y.shape[1]))
    bal = balance_loss(out.gate_logits[:, P - 1], out.chosen)
    return nll + balance_coef * bal, nll
