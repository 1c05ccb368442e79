"""An expert node (miner): branch from the seed, train a specialist on one subnet, serve it to the network.

Training and serving run side by side: the server answers from its own copy of the weights, refreshed from the
trainer every `expert.weights_refresh_steps` steps, and announces itself in the DHT by heartbeat (uid, hotkey, peer
id, model shape, training step, claimed score, domain signature). Without initial peers it trains alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moe.config_checks import require_at_least, require_between, require_positive
from moe.corpus.batches import batches_at_step, blended_batches_at_step
from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, config_dict
from moe.net.expert_record import MAX_PRICE_TAO_PER_MBYTE
from moe.net.join import join_network
from moe.roles.layout import SERVING, RunLayout
from moe.roles.lm_job import run_lm_job
from moe.roles.miners import MinerSpec, parse_miners
from moe.roles.node import StatusBoard, wait_for_stop
from moe.roles.serving import (
    close_all,
    model_summary,
    register_if_ledger,
    serving_config,
    start_heartbeat,
    subnet_centroid,
)
from moe.training.checkpoint import load_checkpoint, load_model_bytes

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class ExpertConfig:
    """How an expert node serves while it trains."""

    weights_refresh_steps: int = 25
    """Training steps between copies of fresh weights into the served model."""
    replay_fraction: float = 0.0
    """Share of each training batch drawn from every subnet's training text (the seed's blend) instead of the
    expert's own, so a specialist forgets less of what the seed knew (forgetting control). Measured on the default
    run, 0.1 cuts the experts' off-domain bits per byte from 6.4-17.9 to 2.9-3.3 for +0.01-0.05 on their own domain,
    but the switching mixture, whose generalist already covers off-domain bytes, gets worse (2.198 vs 2.166 in
    distribution, 3.422 vs 3.200 shifted): so 0."""

    price_tao_per_mbyte: float = 0.0
    """What a call costs consumers, TAO per million bytes served (announced in the signed record; 0: free). A
    priced expert needs a ledger: it checks each call's ticket against the consumers' escrows and settles what it
    answered (moe.roles.settlement)."""
    settle_interval_seconds: float = 10.0
    """Seconds between a priced expert's settlements."""

    def __post_init__(self):
        require_at_least(self, 1, ["weights_refresh_steps"])
        require_between(self, "replay_fraction", 0.0, 1.0)
        require_between(self, "price_tao_per_mbyte", 0.0, MAX_PRICE_TAO_PER_MBYTE)
        require_positive(self, ["settle_interval_seconds"])


def claimed_score(bpb: float | None) -> float | None:
    """The score an expert claims in its record: its own eval bits per byte, or None (logged) when that eval is
    missing or not a finite number; a NaN would make every record invalid and the expert vanish from discovery."""
    if bpb is None or not math.isfinite(bpb):
        logger.warning("own eval is %s: announcing without a claimed score (check the training loss)", bpb)
        return None
    return float(bpb)


def _branch_from_seed(cfg: RunConfig, layout: RunLayout, dht) -> tuple[Callable[[ByteLM], None], str]:
    """How the model is initialised: a local seed checkpoint, the network's published seed (only the one the
    ledger host pins, in a ledger network), or from scratch."""
    expected = config_dict(cfg.model)
    if cfg.seed_checkpoint:

        def init_local(model: ByteLM) -> None:
            path = Path(cfg.seed_checkpoint)
            if path.is_file():
                load_model_bytes(model, path.read_bytes(), expected, source=f"seed {path}")
            else:
                load_checkpoint(path, model, expect_config=expected)

        return init_local, f"local seed {cfg.seed_checkpoint}"
    if dht is not None:
        from moe.net.ledger_client import pinned_seed_sha256
        from moe.net.seed_transfer import fetch_seed

        timeout = cfg.network.discovery_timeout_seconds
        blob = fetch_seed(dht, expected_sha256=pinned_seed_sha256(dht, cfg.ledger, timeout), timeout=timeout)

        def init_fetched(model: ByteLM) -> None:
            load_model_bytes(model, blob, expected, source="the network's seed")

        return init_fetched, f"network seed ({len(blob)} bytes, sha256-verified)"
    local = layout.seed_blob
    if local.is_file():
        return (lambda model: load_model_bytes(model, local.read_bytes(), expected, source=str(local))), str(local)
    logger.warning("no seed given: training from scratch (experts mix far better when branched from one seed)")
    return (lambda model: None), "scratch"


def miner_price(cfg: RunConfig, miner: MinerSpec) -> float:
    """TAO per million bytes this miner charges: its own `:price` in `miners`, else `expert.price_tao_per_mbyte`."""
    return cfg.expert.price_tao_per_mbyte if miner.price is None else miner.price


def this_miner(cfg: RunConfig) -> MinerSpec:
    """Which of the run's miners this node is (`miner=`, else the first on `subnet=`)."""
    miners = parse_miners(cfg.miners, cfg.subnets) if cfg.subnet in cfg.subnets else []
    own = [m for m in miners if m.subnet == cfg.subnet and (m.name == cfg.miner or (not cfg.miner and m.index == 0))]
    return own[0] if own else MinerSpec(cfg.miner or cfg.subnet, cfg.subnet, None, 0)


def run_expert(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    subnet = subnets[cfg.subnet]
    miner = this_miner(cfg)
    name = f"expert-{miner.name}"
    out = layout.expert(miner.name)
    status = StatusBoard(layout.status, name)
    hotkey = Hotkey.load_or_create(cfg.hotkey_path or layout.key(name))
    train_tokens = subnet_tokens(subnet, "train", cfg.data)
    train = cfg.expert_train if miner.steps is None else dataclasses.replace(cfg.expert_train, steps=miner.steps)
    centroid = subnet_centroid(train_tokens, train.seq_len, cfg.seed)

    dht = server = heartbeat = settler = None
    if cfg.initial_peers:
        status.update(phase="joining")
        dht = join_network(cfg.initial_peers, cfg.network)
    if cfg.ledger.enabled:
        status.update(phase="registering")
    uid, registered_at = register_if_ledger(dht, hotkey, cfg.ledger, cfg.uid, subnet.netuid)
    status.update(phase="fetching seed")
    init, origin = _branch_from_seed(cfg, layout, dht)
    logger.info("%s branches from %s", name, origin)
    progress = {"step": 0, "bpb": None}
    extra = {
        "subnet": subnet.name,
        "miner": miner.name,
        "netuid": subnet.netuid,
        "uid": uid,
        "hotkey": hotkey.address,
        "peer_id": None,
        "branched_from": origin,
        "signature_centroid": centroid,
        "price_tao_per_mbyte": miner_price(cfg, miner),
    }

    def init_and_serve(model: ByteLM) -> None:
        nonlocal server, heartbeat, settler
        init(model)
        if dht is None:
            return
        from moe.net.server import ExpertServer

        server = ExpertServer(model, serving_config(cfg.network), dht=dht).start()
        extra["peer_id"] = str(server.peer_id)
        price = miner_price(cfg, miner)
        if price > 0 and cfg.ledger.enabled:
            from moe.roles.settlement import start_paid_serving

            timeout = cfg.ledger.register_timeout_seconds
            interval = cfg.expert.settle_interval_seconds
            settler = start_paid_serving(dht, server, hotkey, cfg.ledger.host, price, interval, timeout)
        identity = {"uid": uid, "subnet": subnet, "centroid": centroid, "registered_at": registered_at}
        beat = lambda: (progress["step"], progress["bpb"])
        heartbeat = start_heartbeat(
            dht, server, hotkey, model_summary(model), cfg.network, beat, price_tao_per_mbyte=price, **identity
        )

    def refresh(step: int, model) -> None:
        progress["step"] = step
        if server is not None and (step % cfg.expert.weights_refresh_steps == 0 or step == train.steps):
            server.update_weights(model.state_dict())

    try:
        seed = cfg.seed + subnet.netuid + 1000 * miner.index  # each miner draws its own batches
        batches = batches_at_step(train_tokens, train.seq_len, train.batch_size, seed, train.grad_accum)
        r = cfg.expert.replay_fraction
        if r > 0:  # the own subnet, then every subnet of the run (its own included) at r between them
            replay = [subnet_tokens(subnets[s], "train", cfg.data) for s in cfg.subnets]
            weights = [1 - r] + [r / len(replay)] * len(replay)
            streams = [train_tokens, *replay]
            batches = blended_batches_at_step(
                streams, train.seq_len, train.batch_size, seed, train.grad_accum, weights
            )
        model, result = run_lm_job(
            cfg, subnets, layout, name, train, batches, out, init=init_and_serve, on_step=refresh, extra_result=extra
        )
        progress["bpb"] = claimed_score(result.eval_bpb.get(subnet.name))
        if server is not None:
            server.update_weights(model.state_dict())
            write_json(out / SERVING, {"peer_id": str(server.peer_id), "hotkey": hotkey.address})
            status.update(phase="serving")
            wait_for_stop()
    finally:
        close_all(heartbeat, settler, server, dht)
    return 0
