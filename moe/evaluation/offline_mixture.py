"""A saved run's mixture rebuilt in one process: the router's own route-and-mix over the experts' checkpoints.

The experts' next-byte distributions cross the run's wire format (encoded and decoded as a router's client receives
them: q8 rounds each log-prob by up to ~0.04 nats), and the router's own `serve_mix` mixes them with the seed as its
generalist, so on the windows the router scored the offline mixture reproduces the run's bits per byte.
"""

from __future__ import annotations

import torch

from moe.metrics import byte_log_probs
from moe.net.wire import decode_logp, encode_logp
from moe.routing.gate import Gate
from moe.routing.mixing import Caller, ExpertEntry, MixOutput, local_caller
from moe.routing.remote import RouterConfig, serve_mix


def through_wire(logp: torch.Tensor, wire_format: str, topk: int) -> torch.Tensor:
    """(B, T, 256) log-probs as a client decodes them after `wire_format` (fp32 leaves them exact)."""
    B, T, _ = logp.shape
    return decode_logp(encode_logp(logp, wire_format, topk), wire_format, (B, T), topk)


def wire_caller(models: dict[str, torch.nn.Module], wire_format: str, topk: int = 16) -> Caller:
    """A caller over in-process models whose replies are what the router's client would decode from the wire."""
    local = local_caller(models)

    def call(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: through_wire(logp, wire_format, topk) for k, logp in local(inputs).items()}

    return call


class OfflineMixture:
    """The `Mixture.mix` interface over local models: route and mix exactly as the router configured by `rc` does.

    Every expert of `entries` must be in `experts` (a missing one would be averaged out like a timeout, silently).
    """

    def __init__(
        self,
        gate: Gate,
        entries: list[ExpertEntry],
        experts: dict[str, torch.nn.Module],
        rc: RouterConfig,
        generalist: torch.nn.Module | None = None,
    ):
        missing = [e.key for e in entries if e.key not in experts]
        if missing:
            raise ValueError(f"no model for routed expert(s) {', '.join(k[:16] for k in missing)}")
        self.gate, self.entries, self.rc = gate.eval(), entries, rc
        self.call = wire_caller(experts, rc.client.wire_format, rc.client.topk)
        self.generalist = None if generalist is None else generalist.eval()

    def _generalist_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return byte_log_probs(self.generalist(x))

    @torch.no_grad()
    def mix(self, x: torch.Tensor) -> MixOutput:
        """Route and mix (B, T) byte ids: probe, gate, top-k, then byte-level switching with the generalist."""
        generalist = self._generalist_log_probs if self.generalist is not None else None
        return serve_mix(self.gate, x, self.entries, self.call, self.rc, generalist)

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) byte ids -> (B, T, 256) next-byte log-probs of the mixture."""
        return self.mix(x).logp
