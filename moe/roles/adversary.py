"""Adversarial expert nodes for testing Proof of Intelligence: they register and announce like honest miners.

- copycat: serves another expert's outputs, fetched live through the ordinary client, plus tiny noise, hoping to
  share that expert's reward without training anything;
- noise: serves random distributions (the cheapest way to look busy);
- peek: reads the byte it is asked to predict from the request itself and puts its mass there (no model at all);
  only a causality audit (moe.poi.causality) tells it from a superb expert;
- hijack: announces records under its own hotkey that name another expert's peer and claim the earliest
  registration, hoping to be paid for the victim's work and to make the victim look like its copy; the victim's
  peer proves only the victim's hotkey (moe.net.identity_proof), and the ledger, not the record, says who came first;
- flood: serves noise and keeps an honest expert of its subnet loaded with maximum-size requests for the rest of the
  run (`Flooder`), hoping the victim times out on validators; the server's per-peer caps answer it "busy"
  (moe.net.server.RequestGate) and validators ask a missed batch again (moe.routing.window_query);
- memorizer: serves a lookup of every subnet's public val split (moe.roles.memorizer.MemorizerLM), uniform
  elsewhere: it beats every honest expert on windows drawn from that split, gains only on the val blocks of a salted
  pool and nothing on private text (moe.poi.eval_source); the summary's `validators[].eval_source` says which;
- twofaced: answers a router's probes and everyone else (validators) with the network's seed, and the whole
  sequences a router then sends it with uniform bytes (moe.roles.two_faced); validators re-send calls the router
  sampled, widest first, with their signed receipts and catch the difference (moe.poi.traffic_check);
- nearcopy: a copycat that mixes the relayed distribution with 3% uniform bytes (`NearCopyLM`): about 50× past the
  copy detector's threshold at a cost of 0.03 bits per byte; novelty scoring (moe.poi.novelty) pays it only for what
  it adds beyond the earlier-registered victim, which is nothing, and leaves the victim its full share.

Validators must give both (near) zero weight. Results go to `<run_dir>/adversaries/<kind>/result.json` with the
same fields as an honest expert's, plus `adversary`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.model.transformer import ByteLM
from moe.net.join import join_network
from moe.roles.layout import RESULT, RunLayout
from moe.roles.memorizer import MemorizerLM
from moe.roles.node import StatusBoard, wait_for_stop
from moe.roles.router import load_generalist
from moe.roles.serving import (
    close_all,
    model_summary,
    register_if_ledger,
    serving_config,
    start_heartbeat,
    subnet_centroid,
)
from moe.roles.two_faced import TwoFacedLM, TwoFacedServer

if TYPE_CHECKING:
    from hivemind.dht import DHT
    from hivemind.p2p import PeerID

    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)

ADVERSARIES = ("copycat", "noise", "peek", "hijack", "flood", "memorizer", "nearcopy", "twofaced")
"""The attacks `role=adversary adversary=KIND` (and the local network's `adversaries=`) can run."""


class NoiseLM(nn.Module):
    """Random logits for every position: an uninformative expert (about 8.7 bits per byte)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        return torch.randn(B, T, 256, generator=self.gen)  # (B, T, 256)

    def __deepcopy__(self, memo: dict) -> NoiseLM:
        return self  # the server keeps two "copies"; a generator is fine to share


class PeekLM(nn.Module):
    """Puts `mass` of each position's distribution on the byte that follows it in the request, at a `fraction` of
    positions chosen by a hash of the last bytes seen (so the same prefix is always treated the same way); uniform
    elsewhere. The last position has nothing to peek at."""

    def __init__(self, fraction: float = 1.0, mass: float = 0.99):
        super().__init__()
        self.fraction, self.mass = fraction, mass

    def peeks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the positions this peeker cheats at, a function of x[:t+1] only."""
        B, T = x.shape
        h = torch.zeros_like(x)
        for lag, mult in enumerate((2654435761, 40503, 9973, 131)):
            h = h + mult * F.pad(x, (lag, 0))[:, :T]
        h = h + 7919 * torch.arange(T)
        return (h % 10007).float() < self.fraction * 10007

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        p = torch.full((B, T, 256), (1 - self.mass) / 256)
        nxt = F.pad(x[:, 1:], (0, 1))  # (B, T); the last position's "next byte" is unknown
        peek = self.peeks(x) & (torch.arange(T) < T - 1)
        p.scatter_add_(-1, nxt.clamp(0, 255).unsqueeze(-1), (self.mass * peek.float()).unsqueeze(-1))
        p[~peek] = 1 / 256
        return p.log()


class RelayLM(nn.Module):
    """Answers with another expert's log-probs fetched through `client`, plus tiny noise; errors propagate (the
    request then fails like any expert's timeout)."""

    def __init__(self, client, peer_id, noise: float = 1e-3, seed: int = 0):
        super().__init__()
        self.client, self.peer_id, self.noise = client, peer_id, noise
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = self.client.call(self.peer_id, x).float()  # (B, T, 256)
        return logp + self.noise * torch.randn(logp.shape, generator=self.gen)

    def __deepcopy__(self, memo: dict) -> RelayLM:
        return self  # shares the live client


class NearCopyLM(nn.Module):
    """Answers log((1 − uniform) p + uniform / 256), p the distribution of the wrapped `relay` (a RelayLM): the
    victim's outputs blurred just enough to pass the copy detector."""

    def __init__(self, relay: nn.Module, uniform: float = 0.03):
        super().__init__()
        self.relay, self.uniform = relay, uniform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.relay(x).float(), -1)  # (B, T, 256)
        return torch.logaddexp(logp + math.log1p(-self.uniform), torch.tensor(math.log(self.uniform / 256)))

    def __deepcopy__(self, memo: dict) -> NearCopyLM:
        return self  # shares the live relay


class Flooder:
    """Keeps `concurrency` maximum-size forwards ((max_tokens // seq_len, seq_len) bytes each) in flight to the expert
    on peer `victim` over raw P2P, from a background loop thread of its own, until `stop()`. Replies and refusals are
    ignored (an attacker has no back-off); after a refusal it pauses `pause_after_refusal_seconds`, since the attack
    is the victim's queue, not the CPU it may share with the victim in a local network."""

    def __init__(
        self,
        dht: DHT,
        victim: PeerID,
        seq_len: int,
        max_tokens: int = 4096,
        concurrency: int = 32,
        pause_after_refusal_seconds: float = 0.01,
    ):
        from moe.net.loop import LoopThread, replicate_p2p
        from moe.net.wire import encode_request

        self.victim, self.concurrency, self.pause = victim, concurrency, pause_after_refusal_seconds
        ids = torch.zeros(max(1, max_tokens // seq_len), seq_len, dtype=torch.uint8)
        self.request = encode_request(ids, "topk", 16)  # a small reply for the flooder, a full forward for the victim
        self.sent = self.answered = 0
        self._stopping, self._senders = False, []
        self._loop = LoopThread(name="flood")
        try:
            self._p2p = self._loop.run(replicate_p2p(dht), timeout=30)
        except BaseException:
            self._loop.stop()
            raise

    def start(self) -> Flooder:
        self._senders = [self._loop.submit(self._keep_sending()) for _ in range(self.concurrency)]
        return self

    async def _keep_sending(self) -> None:
        from hivemind.proto import runtime_pb2

        from moe.net.server import forward_handle

        request = runtime_pb2.ExpertRequest(metadata=self.request)
        while not self._stopping:
            self.sent += 1
            try:
                await self._p2p.call_protobuf_handler(
                    self.victim, forward_handle(None), request, runtime_pb2.ExpertResponse
                )
                self.answered += 1
            except Exception:  # busy, refused or unreachable: send the next one
                await asyncio.sleep(self.pause)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the requests in flight finish (up to `timeout` seconds: cancelling them mid-call trips hivemind's P2P
        client), then close the P2P connection; idempotent."""
        self._stopping = True
        concurrent.futures.wait(self._senders, timeout)
        try:
            self._loop.run(self._p2p.shutdown(), timeout=10)  # a replica only closes its connection
        except Exception as e:
            logger.debug("flooder shutdown: %r", e)
        self._loop.stop()


def run_adversary(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    from hivemind.p2p import PeerID

    from moe.net.client import SyncExpertClient
    from moe.net.discovery import ExpertDirectory
    from moe.net.server import ExpertServer

    kind, subnet = cfg.adversary, subnets[cfg.subnet]
    name = f"expert-{subnet.name}-{kind}"
    status = StatusBoard(layout.status, name)
    hotkey = Hotkey.load_or_create(cfg.hotkey_path or layout.key(name))
    centroid = subnet_centroid(subnet_tokens(subnet, "train", cfg.data), cfg.expert_train.seq_len, cfg.seed)
    net = cfg.network
    status.update(phase="joining")
    dht = join_network(cfg.initial_peers, net)
    client = server = heartbeat = directory = flooder = None
    try:
        uid, registered_at = register_if_ledger(dht, hotkey, cfg.ledger, cfg.uid, subnet.netuid)
        claimed_peer = None
        if kind in ("copycat", "hijack", "flood", "nearcopy"):
            refresh = max(0.5, net.heartbeat_interval_seconds / 2)
            directory = ExpertDirectory(dht, [subnet.netuid], refresh_interval=refresh).start()
            victims = directory.wait_for(1, net.discovery_timeout_seconds)
            victim = next(r for r in victims if r.hotkey != hotkey.address)
        if kind == "hijack":
            module: nn.Module = NoiseLM(cfg.seed)
            claimed_peer, registered_at = victim.peer_id, 1
            logger.info("hijacker names the peer of expert %s", victim.hotkey[:16])
        elif kind in ("copycat", "nearcopy"):
            client = SyncExpertClient(dataclasses.replace(cfg.router.client, wire_format="fp32"), dht=dht)
            module = RelayLM(client, PeerID.from_base58(victim.peer_id), seed=cfg.seed)
            module = NearCopyLM(module) if kind == "nearcopy" else module
            logger.info("%s relays expert %s", kind, victim.hotkey[:16])
        elif kind == "peek":
            module = PeekLM()
        elif kind == "memorizer":
            module = MemorizerLM([subnet_tokens(subnets[s], "val", cfg.data) for s in cfg.subnets])
        elif kind == "twofaced":
            module = TwoFacedLM(load_generalist(cfg, dht))
        else:
            module = NoiseLM(cfg.seed)
        if kind == "twofaced":
            server = TwoFacedServer(module, cfg.router.probe_len, serving_config(net), dht=dht).start()
        else:
            server = ExpertServer(module, serving_config(net), dht=dht).start()
        if kind == "flood":
            flooder = Flooder(dht, PeerID.from_base58(victim.peer_id), cfg.model.max_seq_len).start()
            logger.info("flooding expert %s", victim.hotkey[:16])
        summary = model_summary(ByteLM(cfg.model))  # claims an honest expert's shape
        claims = (cfg.expert_train.steps, 1.0)  # and a trained expert's progress and score
        identity = {"uid": uid, "subnet": subnet, "centroid": centroid, "registered_at": registered_at}
        heartbeat = start_heartbeat(
            dht, server, hotkey, summary, net, lambda: claims, **identity, claimed_peer=claimed_peer
        )
        result = {
            "uid": uid,
            "hotkey": hotkey.address,
            "subnet": subnet.name,
            "peer_id": str(server.peer_id),
            "params": summary["params"],
            "train_steps": 0,
            "train_flops": 0.0,
            "eval_bpb": {},
            "adversary": kind,
        }
        write_json(layout.adversary(kind) / RESULT, result)
        status.update(phase="serving")
        wait_for_stop()
    finally:
        close_all(flooder, heartbeat, directory, server, client, dht)
    return 0
