"""An expert node (miner): branch from the seed, train a specialist on one subnet, serve it to the network.

Training and serving run side by side: the server answers from its own copy of the weights, refreshed from the
trainer every `network.refresh_interval` steps, and announces itself in the DHT by heartbeat (uid, hotkey, peer id,
model shape, training step, claimed score, domain signature). Without initial peers it trains alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from moe.corpus import Subnet
from moe.corpus.batches import ByteBatches
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import StatusBoard, batches_from, subnet_tokens, write_json
from moe.roles.lm_job import run_lm_job
from moe.roles.run_config import NetworkConfig, RunConfig
from moe.roles.seed import seed_dir, wait_for_stop
from moe.routing.signature import domain_centroid
from moe.training.checkpoint import load_checkpoint, load_model_bytes

logger = logging.getLogger(__name__)


def expert_dir(run_dir: Path, subnet: str) -> Path:
    return run_dir / "experts" / subnet


def serving_config(network: NetworkConfig):
    """How a node serves its LM: the direct TCP path listens where the node does; a wildcard host cannot be
    advertised to peers, so such a node is reached over P2P only."""
    from moe.net.server import ServerConfig

    direct_host = None if network.host in ("0.0.0.0", "::", "") else network.host
    return ServerConfig(kind="lm", direct_host=direct_host)


def start_heartbeat(
    dht,
    server,
    hotkey: Hotkey,
    summary: dict,
    network: NetworkConfig,
    progress,
    *,
    uid,
    subnet,
    centroid,
    registered_at,
):
    """Announce a served expert in the DHT by heartbeat; `progress()` gives (train_step, claimed bpb) at each beat."""
    from hivemind.utils import get_dht_time

    from moe.net.discovery import Heartbeat
    from moe.net.expert_record import ExpertRecord

    def record() -> ExpertRecord:
        step, bpb = progress()
        return ExpertRecord(
            uid=uid,
            hotkey=hotkey.address,
            subnet=subnet.name,
            netuid=subnet.netuid,
            peer_id=str(server.peer_id),
            model=summary,
            train_step=step,
            claimed_eval_bpb=bpb,
            signature_centroid=centroid,
            registered_at=float(registered_at),
            expiration=get_dht_time() + network.announce_ttl,
        )

    return Heartbeat(dht, record, hotkey, interval=network.heartbeat_interval, ttl=network.announce_ttl).start()


def model_summary(model: ByteLM) -> dict:
    c = model.config
    return {
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "d_ff": c.d_ff,
        "vocab_size": c.vocab_size,
        "params": model.num_params(),
    }


def _branch_from_seed(cfg: RunConfig, run_dir: Path, dht) -> tuple[callable, str]:
    """How the model is initialised: a local seed checkpoint, the network's published seed, or from scratch."""
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
        from moe.net.seed_transfer import fetch_seed

        blob = fetch_seed(dht, timeout=cfg.network.join_timeout * 4)

        def init_fetched(model: ByteLM) -> None:
            load_model_bytes(model, blob, expected, source="the network's seed")

        return init_fetched, f"network seed ({len(blob)} bytes, sha256-verified)"
    local = seed_dir(run_dir) / "model.bin"
    if local.is_file():
        return (lambda model: load_model_bytes(model, local.read_bytes(), expected, source=str(local))), str(local)
    logger.warning("no seed given: training from scratch (experts mix far better when branched from one seed)")
    return (lambda model: None), "scratch"


def run_expert(cfg: RunConfig, subnets: dict[str, Subnet], run_dir: Path, uid: int = 0) -> int:
    if cfg.adversary:
        from moe.roles.adversary import run_adversary

        return run_adversary(cfg, subnets, run_dir)
    subnet = subnets[cfg.subnet]
    name = f"expert-{subnet.name}"
    out = expert_dir(run_dir, subnet.name)
    status = StatusBoard(run_dir, name)
    hotkey = Hotkey.load_or_create(cfg.hotkey_path or run_dir / "keys" / f"{name}.key")
    train_tokens = subnet_tokens(subnet, "train", cfg.data)
    train = cfg.expert_train
    probe = ByteBatches(train_tokens, train.seq_len, 256, seed=cfg.seed + 7).sample()[0].numpy()
    centroid = domain_centroid(probe)

    dht = server = heartbeat = None
    if cfg.initial_peers:
        from moe.net.join import start_dht

        status.update(phase="joining")
        net = cfg.network
        dht = start_dht(cfg.initial_peers, net.host, net.port, attempts=net.join_attempts, timeout=net.join_timeout)
    registered_at = 0
    if dht is not None and cfg.ledger.enabled:  # the ledger gives the uid this expert announces
        from moe.net.ledger_client import register_on_ledger

        status.update(phase="registering")
        try:
            lc = cfg.ledger
            uid, registered_at, _ = register_on_ledger(dht, hotkey, 0, lc.register_timeout, lc.host or None)
        except TimeoutError as e:
            logger.warning("%s; serving as uid %d, unregistered (validators give it no weight)", e, uid)
    status.update(phase="fetching seed")
    init, origin = _branch_from_seed(cfg, run_dir, dht)
    logger.info("%s branches from %s", name, origin)
    progress = {"step": 0, "bpb": None}
    extra = {
        "subnet": subnet.name,
        "netuid": subnet.netuid,
        "uid": uid,
        "hotkey": hotkey.address,
        "peer_id": None,
        "branched_from": origin,
        "signature_centroid": centroid,
    }

    def serve(model: ByteLM) -> None:
        nonlocal server, heartbeat
        if dht is None:
            return
        from moe.net.server import ExpertServer

        server = ExpertServer(model, serving_config(cfg.network), dht=dht).start()
        extra["peer_id"] = str(server.peer_id)
        identity = {"uid": uid, "subnet": subnet, "centroid": centroid, "registered_at": registered_at}
        heartbeat = start_heartbeat(
            dht,
            server,
            hotkey,
            model_summary(model),
            cfg.network,
            lambda: (progress["step"], progress["bpb"]),
            **identity,
        )

    def init_and_serve(model: ByteLM) -> None:
        init(model)
        serve(model)

    def refresh(step: int, model) -> None:
        progress["step"] = step
        if server is not None and (step % cfg.network.refresh_interval == 0 or step == train.steps):
            server.update_weights(model.state_dict())

    try:
        model, result = run_lm_job(
            cfg,
            subnets,
            run_dir,
            name,
            train,
            batches_from(train_tokens, train.seq_len, train.batch_size, cfg.seed + subnet.netuid, train.grad_accum),
            out,
            init=init_and_serve,
            on_step=refresh,
            extra_result=extra,
        )
        progress["bpb"] = float(result.eval_bpb.get(subnet.name, np.nan))
        if server is not None:
            server.update_weights(model.state_dict())
            write_json(out / "serving.json", {"peer_id": str(server.peer_id), "hotkey": hotkey.address})
            status.update(phase="serving")
            wait_for_stop()
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if server is not None:
            server.shutdown()
        if dht is not None:
            dht.shutdown()
    return 0
