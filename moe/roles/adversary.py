"""Adversarial expert nodes for testing Proof of Intelligence: they register and announce like honest miners.

- copycat: serves another expert's outputs, fetched live through the ordinary client, plus tiny noise, hoping to
  share that expert's reward without training anything;
- noise: serves random distributions (the cheapest way to look busy).

Validators must give both (near) zero weight. Results go to `<run_dir>/adversaries/<kind>/result.json` with the
same fields as an honest expert's, plus `adversary`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from moe.corpus import Subnet
from moe.corpus.batches import ByteBatches
from moe.identity import Hotkey
from moe.model.transformer import ByteLM
from moe.roles.layout import StatusBoard, subnet_tokens, write_json
from moe.roles.run_config import RunConfig
from moe.roles.seed import wait_for_stop
from moe.routing.signature import domain_centroid

logger = logging.getLogger(__name__)


def adversary_dir(run_dir: Path, kind: str) -> Path:
    return run_dir / "adversaries" / kind


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


def run_adversary(cfg: RunConfig, subnets: dict[str, Subnet], run_dir: Path) -> int:
    from hivemind.p2p import PeerID

    from moe.net.client import ClientConfig, SyncExpertClient
    from moe.net.discovery import ExpertDirectory
    from moe.net.join import start_dht
    from moe.net.ledger_client import register_on_ledger
    from moe.net.server import ExpertServer
    from moe.roles.expert import model_summary, serving_config, start_heartbeat

    kind, subnet = cfg.adversary, subnets[cfg.subnet]
    name = f"expert-{subnet.name}-{kind}"
    out = adversary_dir(run_dir, kind)
    status = StatusBoard(run_dir, name)
    hotkey = Hotkey.load_or_create(cfg.hotkey_path or run_dir / "keys" / f"{name}.key")
    probe = ByteBatches(subnet_tokens(subnet, "train", cfg.data), 64, 256, seed=cfg.seed + 7).sample()[0].numpy()
    centroid = domain_centroid(probe)
    net = cfg.network
    status.update(phase="joining")
    dht = start_dht(cfg.initial_peers, net.host, net.port, attempts=net.join_attempts, timeout=net.join_timeout)
    client = server = heartbeat = directory = None
    try:
        uid, registered_at = cfg.uid, 0
        if cfg.ledger.enabled:
            uid, registered_at, _ = register_on_ledger(
                dht, hotkey, 0, cfg.ledger.register_timeout, cfg.ledger.host or None
            )
        if kind == "copycat":
            directory = ExpertDirectory(dht, [subnet.netuid], refresh_interval=max(0.5, net.heartbeat_interval / 2))
            victim = next(r for r in directory.start().wait_for(1, net.join_timeout * 4) if r.hotkey != hotkey.address)
            client = SyncExpertClient(
                ClientConfig(forward_timeout=cfg.router.forward_timeout, wire_format="fp32"), dht=dht
            )
            module: nn.Module = RelayLM(client, PeerID.from_base58(victim.peer_id), seed=cfg.seed)
            logger.info("copycat relays expert %s", victim.hotkey[:16])
        else:
            module = NoiseLM(cfg.seed)
        server = ExpertServer(module, serving_config(cfg.network), dht=dht).start()
        summary = model_summary(ByteLM(cfg.model))  # claims an honest expert's shape
        claims = (cfg.expert_train.steps, 1.0)  # and a trained expert's progress and score
        identity = {"uid": uid, "subnet": subnet, "centroid": centroid, "registered_at": registered_at}
        heartbeat = start_heartbeat(dht, server, hotkey, summary, net, lambda: claims, **identity)
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
        write_json(out / "result.json", result)
        status.update(phase="serving")
        wait_for_stop()
    finally:
        for part in (heartbeat, directory):
            if part is not None:
                part.stop()
        if server is not None:
            server.shutdown()
        if client is not None:
            client.shutdown()
        dht.shutdown()
    return 0
