"""What every node that serves a model to the network does, honest or not: join, register, announce, serve.

Experts and adversaries share these steps so an adversary looks exactly like a miner from the outside: it registers
on the ledger the same way, announces the same record by the same heartbeat, and is reached through the same server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from moe.corpus.batches import ByteBatches
from moe.identity import Hotkey
from moe.model.transformer import ByteLM
from moe.net.join import NetworkConfig
from moe.net.ledger_client import LedgerAccessConfig
from moe.roles.node import Stream
from moe.routing.signature import domain_centroid

if TYPE_CHECKING:
    from moe.corpus import Subnet

logger = logging.getLogger(__name__)

CENTROID_WINDOWS = 256
"""Training windows an expert's published domain centroid is averaged over."""


def serving_config(network: NetworkConfig):
    """How a node serves its LM: the direct TCP path listens where the node does; a wildcard host cannot be
    advertised to peers, so such a node is reached over P2P only."""
    from moe.net.server import ServerConfig

    direct_host = None if network.host in ("0.0.0.0", "::", "") else network.host
    return ServerConfig(kind="lm", direct_host=direct_host)


def model_summary(model: ByteLM) -> dict:
    """The architecture an expert record announces."""
    c = model.config
    return {
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "d_ff": c.d_ff,
        "vocab_size": c.vocab_size,
        "params": model.num_params(),
    }


def subnet_centroid(train_tokens: np.ndarray, seq_len: int, run_seed: int) -> list[float]:
    """The domain signature centroid a node publishes for its subnet, from its training split."""
    windows = ByteBatches(train_tokens, seq_len, CENTROID_WINDOWS, seed=run_seed + Stream.CENTROID_PROBE).sample()[0]
    return domain_centroid(windows.numpy())


def register_if_ledger(dht, hotkey: Hotkey, ledger: LedgerAccessConfig, uid: int, netuid: int) -> tuple[int, int]:
    """(uid, registration block) on ledger subnet `netuid` when the network has a ledger, else (`uid`, 0).

    A registration that does not land in time is logged, and the node serves unregistered (validators give an
    unregistered hotkey no weight).
    """
    if dht is None or not ledger.enabled:
        return uid, 0
    from moe.net.ledger_client import register_on_ledger

    try:
        mine, _ = register_on_ledger(
            dht, hotkey, 0, ledger.register_timeout_seconds, host=ledger.host, netuids=[netuid]
        )
    except TimeoutError as e:
        logger.warning("%s; serving as uid %d, unregistered (validators give it no weight)", e, uid)
        return uid, 0
    return mine[netuid]


def start_heartbeat(
    dht,
    server,
    hotkey: Hotkey,
    summary: dict,
    network: NetworkConfig,
    progress,
    *,
    uid: int,
    subnet: Subnet,
    centroid: list[float],
    registered_at: int,
    claimed_peer: str | None = None,
    price_tao_per_mbyte: float = 0.0,
):
    """Announce a served expert in the DHT by heartbeat; `progress()` gives (train_step, claimed bpb) at each beat.
    The server answers identity challenges for `hotkey`, which is what makes the records count. The records name
    the server's own peer, or `claimed_peer` (only the hijack adversary names someone else's)."""
    from hivemind.utils import get_dht_time

    from moe.net.discovery import Heartbeat
    from moe.net.expert_record import ExpertRecord

    server.prove_identity(hotkey)

    def record() -> ExpertRecord:
        step, bpb = progress()
        return ExpertRecord(
            uid=uid,
            hotkey=hotkey.address,
            subnet=subnet.name,
            netuid=subnet.netuid,
            peer_id=claimed_peer or str(server.peer_id),
            model=summary,
            train_step=step,
            claimed_eval_bpb=bpb,
            signature_centroid=centroid,
            registered_at=float(registered_at),
            expiration=get_dht_time() + network.announce_ttl_seconds,
            price_tao_per_mbyte=price_tao_per_mbyte,
        )

    interval, ttl = network.heartbeat_interval_seconds, network.announce_ttl_seconds
    return Heartbeat(dht, record, hotkey, interval=interval, ttl=ttl).start()


def close_all(*parts) -> None:
    """Stop or shut down each part (heartbeat, directory, server, client, DHT) in the order given; None is skipped,
    so a node's `finally` can close whatever it got as far as starting; a part that fails to close is logged and the
    rest are still closed."""
    for part in parts:
        if part is None:
            continue
        try:
            (getattr(part, "shutdown", None) or part.stop)()
        except Exception:  # one part failing to close must not leave the rest running
            logger.exception("closing %s failed", type(part).__name__)
