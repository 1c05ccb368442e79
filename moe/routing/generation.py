"""Generate bytes from the mixture with the experts' KV caches: route once, then one cheap step per byte.

Stateless generation re-routes and re-runs the whole context for every byte (k experts x T positions a byte, plus
the probe). Here a generation routes on the context window once (probe, gate, top-k, as `route_and_mix` does),
opens a decoding session on each chosen expert and on the local generalist with that window, and from then on sends
each sampled byte once to each of them. Their next-byte distributions are mixed with the same fixed-share switching
weights as the router's mixture (moe.routing.switching), updated byte by byte from what each predicted; the gate's
prior is the one it gave at the routing point until the next re-route, which comes every `reroute_every` bytes (or
as soon as every chosen expert has dropped out). An expert whose session fails mid-way is dropped and the weights
renormalise over the rest; with none left at all the generation re-routes. There is no escalation between routes.

`Sessions` is what carries the byte to the models: `LocalSessions` runs in-process models (offline, from a run's
checkpoints); moe.routing.remote.Mixture supplies remote sessions (moe.net.session_client).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F

from moe.model.kv_cache import IncrementalDecoder
from moe.model.tokenizer import PAD
from moe.routing.mixing import MixOutput
from moe.routing.switching import gate_prior, switching_mixture

GENERALIST = "<generalist>"
"""Key of the local generalist among a generation's sessions (mixed in last, as in route_and_mix)."""


class Sessions(Protocol):
    """Decoding sessions on a set of models, one byte sequence each."""

    def open(self, keys: list[str], window: torch.Tensor) -> dict[str, torch.Tensor]:
        """Start a session per key on `window` (1-D ids) → {key: log-probs (T, 256)} for those that opened."""

    def step(self, byte: int) -> dict[str, torch.Tensor]:
        """Append `byte` to every open session → {key: next-byte log-probs (256,)} for those that answered."""

    def close(self) -> None:
        """End every open session."""


class LocalSessions:
    """`Sessions` over in-process ByteLMs (by key), each with its own KV cache of `capacity` positions."""

    def __init__(self, models: dict[str, torch.nn.Module], capacity: int | None = None):
        self.models, self.capacity = models, capacity
        self._decoders: dict[str, IncrementalDecoder] = {}

    def open(self, keys: list[str], window: torch.Tensor) -> dict[str, torch.Tensor]:
        self.close()
        out = {}
        for k in keys:
            if k in self.models:
                self._decoders[k] = IncrementalDecoder(self.models[k], self.capacity)
                out[k] = _log_probs(self._decoders[k].feed(window))
        return out

    def step(self, byte: int) -> dict[str, torch.Tensor]:
        return {k: _log_probs(d.feed([byte]))[-1] for k, d in self._decoders.items()}

    def close(self) -> None:
        self._decoders.clear()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[..., :256].float(), -1)


def generate_bytes(
    route: Callable[[torch.Tensor], MixOutput],
    sessions: Sessions,
    prompt: list[int],
    max_new_bytes: int,
    *,
    context_bytes: int = 128,
    reroute_every: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    switch_alpha: float = 0.005,
    gate_weight: float = 0.6,
    generalist_share: float | None = 0.2,
) -> Iterator[int]:
    """Yield `max_new_bytes` sampled bytes after `prompt`, one at a time as they are sampled (see the module
    docstring). `route` maps a (1, T) window to its MixOutput (only `keys`, `chosen` and `gate_logits` are used);
    `generalist_share` None mixes no generalist, else `sessions` must know the key GENERALIST. Raises RuntimeError
    when neither an expert nor the generalist answers a freshly routed window."""
    if context_bytes < 1 or reroute_every < 1:
        raise ValueError(f"context_bytes and reroute_every must be positive, got {context_bytes}, {reroute_every}")
    g = torch.Generator().manual_seed(seed)
    ids = list(prompt) or [ord("\n")]
    log_keep, log_share = (math.log1p(-switch_alpha), math.log(switch_alpha)) if switch_alpha > 0 else (0.0, -math.inf)
    keys: list[str] = []
    try:
        since_route = reroute_every
        for _ in range(max_new_bytes):
            if since_route >= reroute_every or not keys:
                keys, log_w, log_pi, lp = _route(
                    route, sessions, ids[-context_bytes:], switch_alpha, gate_weight, generalist_share
                )
                routed_experts, since_route = any(k != GENERALIST for k in keys), 0
            mixed = torch.logsumexp(log_w[:, None] + lp, 0)  # (256,)
            probs = torch.softmax(mixed / max(temperature, 1e-6), -1)
            b = int(torch.multinomial(probs, 1, generator=g))
            yield b
            ids.append(b)
            since_route += 1
            posterior = _normalize(log_w + lp[:, b])
            log_w = torch.logaddexp(posterior + log_keep, log_pi + log_share)
            replies = sessions.step(b)
            alive = [k in replies for k in keys]
            experts_alive = any(a for k, a in zip(keys, alive, strict=True) if k != GENERALIST)
            if not any(alive) or (routed_experts and not experts_alive):
                keys = []  # every chosen expert dropped out: re-route on the next byte
                continue
            keep = torch.tensor(alive)
            keys = [k for k, a in zip(keys, alive, strict=True) if a]
            log_w, log_pi = _normalize(log_w[keep]), _normalize(log_pi[keep])
            lp = torch.stack([replies[k] for k in keys])  # (J', 256)
    finally:
        sessions.close()


def generate_stateless(
    log_probs: Callable[[torch.Tensor], torch.Tensor],
    prompt: list[int],
    max_new_bytes: int,
    *,
    context_bytes: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
) -> Iterator[int]:
    """The baseline: yield sampled bytes, each from one full mixture call ((1, T) → (1, T, 256) log-probs) on the
    last `context_bytes` bytes, re-routed every byte."""
    g = torch.Generator().manual_seed(seed)
    ids = list(prompt) or [ord("\n")]
    for _ in range(max_new_bytes):
        x = torch.tensor([ids[-context_bytes:]], dtype=torch.long)
        logp = log_probs(x)[0, -1] / max(temperature, 1e-6)
        b = int(torch.multinomial(torch.softmax(logp, -1), 1, generator=g))
        ids.append(b)
        yield b


def _route(
    route: Callable[[torch.Tensor], MixOutput],
    sessions: Sessions,
    window: list[int],
    switch_alpha: float,
    gate_weight: float,
    generalist_share: float | None,
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route `window`, open sessions on the chosen experts (and the generalist) and replay the switching mixture over
    the window → (keys, log-weights (J',), prior (J',), each one's next-byte log-probs (J', 256))."""
    x = torch.tensor([window], dtype=torch.long)
    out = route(x)
    chosen = [out.keys[j] for j in out.chosen[0].nonzero().flatten().tolist()]
    with_generalist = generalist_share is not None
    opened = sessions.open(chosen + [GENERALIST] * with_generalist, x[0])
    experts = [k for k in chosen if k in opened]
    keys = experts + ([GENERALIST] if with_generalist and GENERALIST in opened else [])
    if not keys:
        raise RuntimeError("no expert and no generalist answered; nothing to generate from")
    columns = torch.tensor([out.keys.index(k) for k in experts], dtype=torch.long)
    logits = out.gate_logits[:, :, columns]  # (1, T, J)
    share = generalist_share if GENERALIST in keys else None
    prior = gate_prior(logits, gate_weight, share)  # (1, T, J')
    logp = torch.stack([opened[k] for k in keys], 1)[None]  # (1, T, J', 256)
    targets = F.pad(x[:, 1:], (0, 1), value=PAD)
    available = torch.ones(logp.shape[:3], dtype=torch.bool)
    switched = switching_mixture(logp, targets, available, switch_alpha, prior_logits=prior)
    return keys, switched.log_weights[0, -1], _normalize(prior[0, -1]), logp[0, -1]


def _normalize(log_w: torch.Tensor) -> torch.Tensor:
    total = torch.logsumexp(log_w, -1, keepdim=True)
    return log_w - total if bool(torch.isfinite(total).all()) else torch.full_like(log_w, -math.log(len(log_w)))


__all__ = ["GENERALIST", "LocalSessions", "Sessions", "generate_bytes", "generate_stateless"]
