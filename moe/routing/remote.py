"""`Mixture`: the network's experts behind one causal byte-LM interface, for the router, validators and users.

    mix = Mixture.from_dht(["/ip4/127.0.0.1/tcp/31337/p2p/12D3Koo..."], netuids=[1, 2])
    logp = mix.log_probs(byte_batch)          # (B, T, 256)
    text = mix.generate("To be, or ", 64)     # routes once, then steps the experts' KV-cached sessions

Experts come from a directory refreshed in the background (never a DHT lookup on the hot path). Calls go out in
parallel with per-call timeouts; experts that fail, time out or reply with anything but a proper distribution are
dropped from that batch (and reported in `faults()`), and the gate renormalizes over the rest. The gate's weights
and its expert slots are saved as safetensors + JSON, so a router restarts with what it learned.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hivemind.p2p import PeerID
from safetensors.torch import load_file, save_file

from moe.config_checks import require_at_least, require_between, require_positive
from moe.fileio import write_json
from moe.metrics import byte_log_probs
from moe.net.client import ClientConfig, FaultReport, SyncExpertClient
from moe.net.discovery import ExpertDirectory
from moe.net.expert_record import ExpertRecord
from moe.net.identity_proof import ProvenIdentities
from moe.net.join import NetworkConfig
from moe.net.payer import Payer
from moe.net.receipt import Receipt
from moe.poi.causality import NONCAUSAL, AuditConfig, audited_query
from moe.routing.gate import Gate
from moe.routing.generation import generate_bytes, generate_stateless
from moe.routing.mixing import Caller, ExpertEntry, ExpertSlots, MixOutput, gate_loss, route_and_mix
from moe.routing.remote_sessions import RemoteSessions
from moe.routing.shortlist import ExpertProfiles
from moe.routing.signature import SIGNATURE_DIM
from moe.routing.traffic import TrafficLog
from moe.routing.window_query import query_windows

logger = logging.getLogger(__name__)

ENTRIES_WAIT_SECONDS = 30.0
"""Longest a call waits for a routable expert before it fails."""
IDENTITY_TIMEOUT_SECONDS = 5.0
"""Longest wait for a peer to answer an identity challenge (a dead peer is asked again every 30 s)."""


@dataclass
class RouterConfig:
    """How the mixture routes, calls and learns."""

    k_best: int = 2
    """Experts called on the rest of each sequence after the probe."""
    probe_len: int = 32
    """Leading bytes every expert scores before the gate picks the top-k (32 measured better than 16 on math)."""
    steps: int = 100
    """Gate training steps on the routing split."""
    batch_size: int = 16
    """Sequences per gate step."""
    lr: float = 3e-3
    """Gate learning rate."""
    balance_coef: float = 0.01
    """Weight of the gate's load-balancing loss."""
    d_gate: int = 64
    """Width of the gate's byte encoder."""
    eval_batches: int = 8
    """Validation batches per subnet when scoring the mixture."""
    switch_alpha: float = 0.005
    """Fixed-share rate of the byte-level switching mixture: the share of weight handed back out after each byte so
    it can move to another expert within a sequence (0: a plain per-sequence Bayesian mixture)."""
    switch_gate_weight: float = 0.6
    """Share of the weight handed back after each byte that goes where the gate expects it; the rest is spread evenly
    over the candidates. 0.6 keeps the gate's in-distribution choices (2.166 against 2.171 bits per byte at 0) and
    nearly all of the switching's gain on shifted text (3.339 against 3.334)."""
    generalist_share: float = 0.2
    """The generalist's weight in the gate-following part of that share, relative to the experts' total."""
    escalate_bits: float = 5.0
    """A sequence whose last `escalate_window` bytes cost the mixture more than this many bits a byte on average also
    calls the experts the gate left out (0: never). Measured on the 700/300 default: the worst shifted window falls
    from 6.44 to 5.80 bits per byte and the shifted mean from 3.163 to 3.113, for 0.43 more calls per byte."""
    escalate_window: int = 16
    """Bytes the escalation averages over (and the weights restart from when it fires)."""
    shortlist: int = 8
    """Experts each sequence probes, ranked without a call (moe.routing.shortlist): at most this many probes, k_best
    whole-sequence calls and k_best escalations per sequence however many experts serve (0, or at least as many as
    serve: probe all). benchmarks/scale.py at 1,024 experts: 8 is the smallest within 2% of the subnet oracle's bits
    per byte (1.65%; 6: 2.23%, 12: 1.30% for 41% more calls), at 10.7 calls a sequence against 95 probing all 64."""
    shortlist_prefix: int = 8
    """Leading bytes over which the shortlist grows (half of it at byte 0, the rest evenly after), so the mixture
    stays causal. Same benchmark: 8 (1.65% over the oracle) beats 4 (2.38%) and 16 (1.83%)."""
    generalist: bool = True
    """Always mix in the network's generalist (today its seed, fetched by hash and run locally): it bounds the damage
    on bytes where every chosen specialist fails (markup, another language, a domain nobody serves)."""
    audit_twins: int = 16
    """Spliced twins of the router's own sampled audit (moe.poi.causality) before it trusts the experts: catches an
    expert peeking on every position for certain, on 5% of positions with probability 0.56 (the validators' full
    audit takes 135); 0 skips it."""
    traffic_batches: int = 8
    """Sequences batches a router started ahead of the validators mixes first, so that they have its traffic to
    check (moe.roles.router)."""
    traffic_per_expert: int = 4
    """Calls per expert kept (a uniform sample, with the experts' signed receipts) and published for validators to
    re-check (moe.routing.traffic); 0 keeps none."""
    follow_validators: bool = True
    """Follow the validators through the DHT: never call an expert a stake majority of them flagged (or that the
    ledger does not know), and feed each expert's share of the last epoch's incentive to the gate as a prior whose
    weight the gate learns."""
    client: ClientConfig = field(default_factory=ClientConfig)
    """How the experts are called: timeouts, k_min, wire format, back-off."""
    price_weight: float = 0.0
    """Price-aware routing: gate-logit units one TAO per million bytes of an expert's price takes off its score when
    the top-k are chosen, trading expected quality against cost (0: price is ignored). The summary's `market.trade`
    shows bits per byte and TAO spent per million bytes at 0, this and ten times this."""
    escrow_tao: float = 0.0
    """TAO a node using this mixture (the router, each distiller) deposits in escrow on the ledger to pay priced
    experts (`expert.price_tao_per_mbyte`) for the calls they answer; the local network funds each such key with as
    much. 0 pays nobody, and a priced expert refuses the calls."""

    def __post_init__(self):
        require_at_least(self, 1, ["k_best", "probe_len", "batch_size", "d_gate", "eval_batches", "escalate_window"])
        require_at_least(self, 0, ["steps", "balance_coef", "switch_alpha", "audit_twins", "escalate_bits"])
        require_at_least(self, 0, ["traffic_per_expert", "traffic_batches", "shortlist", "escrow_tao", "price_weight"])
        require_at_least(self, 1, ["shortlist_prefix"])
        require_between(self, "switch_gate_weight", 0.0, 1.0)
        require_positive(self, ["generalist_share"])
        require_positive(self, ["lr"])
        if not self.switch_alpha < 1:
            raise ValueError(f"switch_alpha must be below 1, got {self.switch_alpha}")


def serve_mix(
    gate: Gate,
    x: torch.Tensor,
    entries: list[ExpertEntry],
    call: Caller,
    rc: RouterConfig,
    generalist: Callable[[torch.Tensor], torch.Tensor] | None = None,
    profiles: ExpertProfiles | None = None,
) -> MixOutput:
    """Route and mix (B, T) byte ids exactly as a router configured by `rc` serves them (shortlist, probe, gate,
    top-k, then byte-level switching with the generalist): shared by `Mixture.mix` and offline evaluation of a saved
    run. `profiles` (the router's, learned from its probes) ranks the shortlist's subnets."""
    return route_and_mix(
        gate,
        x,
        entries,
        call,
        rc.k_best,
        rc.probe_len,
        switch_alpha=rc.switch_alpha,
        generalist=generalist,
        gate_weight=rc.switch_gate_weight,
        generalist_share=rc.generalist_share,
        escalate_bits=rc.escalate_bits,
        escalate_window=rc.escalate_window,
        shortlist=rc.shortlist,
        shortlist_prefix=rc.shortlist_prefix,
        profiles=profiles,
        price_weight=rc.price_weight,
    )


def relative_log_trust(trust: dict[str, float], active: set[str]) -> dict[str, float]:
    """Log of each scored expert's share over the mean share of the scored experts routed to, floored at 5% of
    the mean (a zero share is an opinion, not a verdict), capped at 20 times it; {} when none has a positive share."""
    scored = {hk: trust[hk] for hk in active if hk in trust}
    mean = sum(scored.values()) / len(scored) if scored else 0.0
    if mean <= 0:
        return {}
    return {hk: math.log(min(20.0, max(0.05, share / mean))) for hk, share in scored.items()}


class Mixture:
    """Route-and-mix over the experts a directory knows; see the module docstring for failure behaviour."""

    def __init__(self, dht, directory: ExpertDirectory, client: SyncExpertClient, rc: RouterConfig, own_dht: bool):
        self.dht, self.directory, self.client, self.rc, self._own_dht = dht, directory, client, rc, own_dht
        challenge_timeout = min(IDENTITY_TIMEOUT_SECONDS, rc.client.forward_timeout_seconds)
        self.identities = ProvenIdentities(
            lambda peers: client.prove_identities([PeerID.from_base58(p) for p in peers], timeout=challenge_timeout)
        )
        self.gate = Gate(rc.d_gate)
        self.slots = ExpertSlots(self.gate.max_experts)
        self.generalist: torch.nn.Module | None = None
        self.profiles = ExpertProfiles()
        """What each expert predicts, learned from the probes; ranks subnets for the shortlist."""
        """A local model always mixed in (see RouterConfig.generalist); None until `set_generalist`."""
        self.trust: dict[str, float] = {}
        """Hotkey → the validators' consensus share (see `set_trust`); empty trusts every expert equally."""
        self.registered: set[str] | None = None
        """Hotkeys registered on the ledger, when the mixture follows one (None: no ledger, no filter)."""
        self.flagged: dict[str, list[str]] = {}
        """Hotkey → reasons, for experts the validators flagged (see `set_trust`)."""
        self.noncausal: set[str] = set()
        """Hotkeys this router's own causality audit caught: never routed to again."""
        self.traffic = TrafficLog(rc.traffic_per_expert)
        """A sample of the calls made, with the experts' receipts (moe.routing.traffic)."""
        self.unreceipted: set[str] = set()
        """Hotkeys whose replies came without a receipt signed by that hotkey: never routed to again."""
        self._hotkey_of_peer: dict[str, str] = {}
        self._routed = False
        client.client.on_receipt = self._on_reply

    @classmethod
    def from_dht(
        cls,
        initial_peers: list[str],
        netuids: Iterable[int],
        router: RouterConfig | None = None,
        network: NetworkConfig | None = None,
        dht=None,
    ) -> Mixture:
        """Join the network (or reuse `dht`) and start discovering the experts of `netuids`."""
        from moe.net.join import join_network

        rc, net = router or RouterConfig(), network or NetworkConfig()
        own = dht is None
        if own:
            dht = join_network(initial_peers, net)
        refresh = max(0.5, net.heartbeat_interval_seconds / 2)
        directory = ExpertDirectory(dht, list(netuids), refresh_interval=refresh).start()
        return cls(dht, directory, SyncExpertClient(rc.client, dht=dht), rc, own)

    def wait_for_experts(self, n: int, timeout: float) -> list[ExpertRecord]:
        """Block until `n` experts are discovered and have proved their identity; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        self.directory.wait_for(n, timeout)
        while len(records := self.records()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(records)} of {n} experts proved their identity within {timeout:.1f}s")
            time.sleep(0.5)
        return records

    def records(self) -> list[ExpertRecord]:
        """Discovered experts whose peer proved their hotkey (moe.net.identity_proof) and whose signature fits the
        gate; a record naming a peer that serves another hotkey, or several, is left out."""
        found = [r for r in self.directory.experts() if len(r.signature_centroid) == SIGNATURE_DIM]
        owner = self.identities.hotkey_of({r.peer_id for r in found})
        proven = [r for r in found if owner.get(r.peer_id) == r.hotkey]
        if self.client.client.payer is not None:  # each call pays the price the expert's latest record names
            self.client.client.prices = {
                PeerID.from_base58(r.peer_id): (r.hotkey, r.price_rao_per_mbyte) for r in proven
            }
        return proven

    def pay_with(self, payer: Payer) -> None:
        """Pay priced experts from `payer`'s account: every call to one carries a ticket (moe.net.payer) at the
        price its latest record announces; `shutdown` sends the closing tickets."""
        self.client.client.payer = payer
        self.records()

    def impostors(self) -> set[str]:
        """Hotkeys of discovered records whose named peer proved other hotkeys (a hijack, or one peer serving
        several hotkeys); a validator flags them `identity`."""
        self.records()  # asks any peer not asked yet
        return self.identities.impostors((r.peer_id, r.hotkey) for r in self.directory.experts())

    def entries(self) -> list[ExpertEntry]:
        """The experts the mixture routes over: every discovered one the validators have not ruled out."""
        records = [r for r in self.records() if self.routable(r.hotkey)]
        active = {r.hotkey for r in records}
        log_trust = self._log_trust(active)
        out = []
        for r in records:
            slot = self.slots.assign(r.hotkey, active)
            if slot is not None:
                trust = log_trust.get(r.hotkey, 0.0)
                entry = ExpertEntry(r.hotkey, slot, r.signature_centroid, r.subnet, trust, r.price_tao_per_mbyte)
                out.append(entry)
        return out

    def _wait_for_entries(self, timeout: float) -> list[ExpertEntry]:
        """The routable experts; once some were routed to, waits up to `timeout` seconds for some to come back (records
        lapse for a moment when heartbeats or the directory's refresh run late on a loaded machine). RuntimeError if
        none come, or at once if none ever did."""
        deadline = time.monotonic() + timeout
        while not (entries := self.entries()):
            if not self._routed:
                raise RuntimeError("no experts known yet; wait_for_experts first")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no routable experts for {timeout:.0f} s")
            time.sleep(0.5)
        self._routed = True
        return entries

    def set_trust(
        self,
        incentive: dict[str, float],
        registered: set[str] | None = None,
        flagged: dict[str, list[str]] | None = None,
    ) -> None:
        """Follow the validators: `flagged` experts (hotkey → reasons, by a stake majority) and, when given, hotkeys
        not in the ledger's `registered` set are never called; `incentive` (hotkey → share of the miners' emission at
        the last epoch) becomes each expert's prior in the gate. A zero share only lowers the prior: one epoch's
        sample can miss a specialist's domain, and a cheat is what the flags are for."""
        self.trust = dict(incentive) if any(v > 0 for v in incentive.values()) else {}
        self.registered = None if registered is None else set(registered)
        self.flagged = dict(flagged or {})
        if self.distrusted():
            logger.info("not routing to experts the validators ruled out: %s", sorted(self.distrusted()))

    def routable(self, hotkey: str) -> bool:
        if hotkey in self.noncausal or hotkey in self.flagged or hotkey in self.unreceipted:
            return False
        return self.registered is None or hotkey in self.registered

    def distrusted(self) -> set[str]:
        """Discovered experts the mixture does not call: flagged by the validators, unregistered on the ledger,
        caught by the router's own causality audit, or answering without their receipt."""
        return {r.hotkey for r in self.records() if not self.routable(r.hotkey)}

    def _log_trust(self, active: set[str]) -> dict[str, float]:
        """Log of each scored expert's share over the mean share of the scored experts routed to, floored at 5% of
        the mean (a zero share is an opinion, not a verdict), capped at 20 times it."""
        return relative_log_trust(self.trust, active)

    def audit_causality(self, x: torch.Tensor, donors: torch.Tensor, seed: int = 0) -> dict[str, str]:
        """Send the routable experts `x` with `rc.audit_twins` spliced twins (continued from `donors`) shuffled in;
        experts the audit flags are never routed to again. Returns {hotkey: flag}."""
        if self.rc.audit_twins == 0:
            return {}
        hotkeys = [r.hotkey for r in self.records() if self.routable(r.hotkey)]
        cfg = AuditConfig(twins=self.rc.audit_twins)
        query = functools.partial(query_windows, self.call, hotkeys, batch_size=self.rc.batch_size)
        *_, result = audited_query(query, x, donors, cfg, np.random.default_rng(seed))
        flags = {hotkeys[i]: reason for i, reason in result.flags(cfg).items()}
        if flags:
            logger.warning("causality audit: not routing to %s", {hk[:16]: r for hk, r in flags.items()})
        self.noncausal |= {hk for hk, reason in flags.items() if reason == NONCAUSAL}
        return flags

    def follow_ledger(self, host: str | None = None) -> bool:
        """Read the ledger head from the DHT and `set_trust` from it; False (nothing changed) when there is none."""
        from moe.net.ledger_client import flagged_by_validators, read_head

        head = read_head(self.dht, host)
        if head is None:
            return False
        self.set_trust(head.incentive(), head.registered(), flagged_by_validators(self.dht, head))
        return True

    def call(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{hotkey: x} -> {hotkey: log-probs} for the experts that answered validly within the timeouts."""
        by_peer = {r.hotkey: PeerID.from_base58(r.peer_id) for r in self.records() if r.hotkey in inputs}
        self._hotkey_of_peer.update({str(p): k for k, p in by_peer.items()})
        replies = self.client.call_many(list(by_peer.values()), {by_peer[k]: inputs[k] for k in by_peer})
        return {k: replies[p] for k, p in by_peer.items() if p in replies}

    def faults(self) -> list[FaultReport]:
        return list(self.client.faults)

    def _on_reply(self, peer_id: PeerID, request: bytes, receipt: Receipt | None) -> None:
        """Sample the call, or stop routing to an expert whose reply lacks a receipt signed by its own hotkey (it
        could otherwise answer this router unaccountably)."""
        hotkey = self._hotkey_of_peer.get(str(peer_id))
        if hotkey is None:
            return
        if receipt is None or receipt.address != hotkey:
            if hotkey not in self.unreceipted:
                logger.warning("expert %s answered without its receipt; not routing to it", hotkey[:16])
                self.unreceipted.add(hotkey)
            return
        self.traffic.offer(request, receipt)

    def set_generalist(self, model: torch.nn.Module | None) -> None:
        """Mix `model` (a byte LM run here, e.g. the network's seed) into every prediction; None stops it."""
        self.generalist = None if model is None else model.eval()

    def _generalist_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return byte_log_probs(self.generalist(x))

    @torch.no_grad()
    def mix(self, x: torch.Tensor) -> MixOutput:
        """Route and mix (B, T) byte ids: probe, gate, top-k, then byte-level switching with the generalist."""
        entries = self._wait_for_entries(ENTRIES_WAIT_SECONDS)
        generalist = self._generalist_log_probs if self.generalist is not None else None
        return serve_mix(self.gate, x, entries, self.call, self.rc, generalist, self.profiles)

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) byte ids -> (B, T, 256) next-byte log-probs of the mixture."""
        return self.mix(x).logp

    def generate(self, prompt: str | bytes, max_new_bytes: int, **kwargs) -> bytes:
        """All of `stream`'s bytes at once (same arguments)."""
        return bytes(self.stream(prompt, max_new_bytes, **kwargs))

    @torch.no_grad()
    def stream(
        self,
        prompt: str | bytes,
        max_new_bytes: int,
        temperature: float = 1.0,
        seed: int = 0,
        context_bytes: int = 128,
        reroute_every: int = 64,
        sessions: bool = True,
    ) -> Iterator[int]:
        """Yield sampled bytes after `prompt` as they come. With `sessions` (moe.routing.generation): route once per
        `reroute_every` bytes on the last `context_bytes` and step each chosen expert's KV-cached session one byte at
        a time; an expert whose session fails drops out and the mixture renormalises. Without: one full mixture call
        per byte on the last `context_bytes` bytes. `context_bytes` must not exceed the experts' max_seq_len (servers
        refuse longer windows and sessions)."""
        ids = list(prompt.encode() if isinstance(prompt, str) else bytes(prompt))
        if not sessions:
            yield from generate_stateless(
                self.log_probs, ids, max_new_bytes, context_bytes=context_bytes, temperature=temperature, seed=seed
            )
            return
        rc = self.rc
        remote = RemoteSessions(
            self.client,
            lambda: {r.hotkey: r.peer_id for r in self.records() if self.routable(r.hotkey)},
            generalist=self.generalist,
            on_unreceipted=self.unreceipted.add,
            max_context=context_bytes,
        )
        yield from generate_bytes(
            self.mix,
            remote,
            ids,
            max_new_bytes,
            context_bytes=context_bytes,
            reroute_every=reroute_every,
            temperature=temperature,
            seed=seed,
            switch_alpha=rc.switch_alpha,
            gate_weight=rc.switch_gate_weight,
            generalist_share=rc.generalist_share if self.generalist is not None else None,
        )

    def train_gate(
        self, batches: Iterable, steps: int, on_step: Callable[[int, float], None] | None = None
    ) -> list[float]:
        """Fit the gate on (x, y) batches by the mixture's own loss; experts are frozen and called remotely."""
        opt = torch.optim.AdamW(self.gate.parameters(), lr=self.rc.lr, weight_decay=0.0)
        losses = []
        it = iter(batches)
        for step in range(1, steps + 1):
            x, y = next(it)
            entries = self.entries()
            out = route_and_mix(self.gate, x, entries, self.call, self.rc.k_best, self.rc.probe_len, call_all=True)
            loss, nll = gate_loss(out, y, self.rc.probe_len, self.rc.balance_coef)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(nll.item())
            if on_step is not None:
                on_step(step, losses[-1])
        return losses

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous() for k, v in self.gate.state_dict().items()}, directory / "gate.safetensors"
        )
        meta = {
            "slots": self.slots.slot_of,
            "d_gate": self.rc.d_gate,
            "records": [r.payload() for r in self.records()],
        }
        write_json(directory / "gate.json", meta)  # last and atomic: its presence means the gate is complete

    def load(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.gate.load_state_dict(load_file(directory / "gate.safetensors"))
        self.slots.slot_of = {
            str(k): int(v) for k, v in json.loads((directory / "gate.json").read_text())["slots"].items()
        }

    def spent(self) -> dict[str, int]:
        """Expert -> rao this mixture's payer owes it for answered calls ({} when it pays nobody)."""
        payer = self.client.client.payer
        return payer.spent() if payer is not None else {}

    def shutdown(self) -> None:
        self.directory.stop()
        if self.client.client.payer is not None:
            self.client.close_accounts()
        self.client.shutdown()
        if self._own_dht:
            self.dht.shutdown()
