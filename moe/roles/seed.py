"""The seed node: trains the network's shared seed model on a blend of every subnet, then publishes it.

Branch-Train-Merge starts every expert from these weights; experts branched from a common seed mix far better than
experts trained from scratch (2.42 against 2.71 bits per byte in our measurement at equal compute). The seed's
sha256 goes into the DHT, signed; its bytes are served over hivemind and verified by every fetcher.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from moe.fileio import write_json
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, config_dict
from moe.roles.layout import PUBLISHED, RESULT, RunLayout
from moe.roles.lm_job import run_lm_job, score_model, union_batches
from moe.roles.node import StatusBoard, Stream, wait_for_stop
from moe.training.checkpoint import load_checkpoint, model_to_bytes

if TYPE_CHECKING:
    from moe.corpus import Subnet
    from moe.roles.run_config import RunConfig

logger = logging.getLogger(__name__)


def seed_from_checkpoint(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> ByteLM:
    """The model at `cfg.seed_from` (verified, of this run's model shape), scored like a trained seed: the next
    round's seed is a previous round's distilled student. Its result names where it came from and counts no new
    training (the previous round's compute is that round's)."""
    model = ByteLM(cfg.model)
    state = load_checkpoint(cfg.seed_from, model, expect_config=config_dict(cfg.model))
    scores = score_model(cfg, subnets, model)
    record = {
        "name": "seed",
        "seed_from": str(cfg.seed_from),
        "source_step": state["step"],
        "params": model.num_params(),
    }
    write_json(layout.seed / RESULT, {**record, "train_steps": 0, "train_flops": 0.0, **scores})
    logger.info(
        "seed taken from %s: %s", cfg.seed_from, " ".join(f"{k}={v:.3f}" for k, v in scores["eval_bpb"].items())
    )
    return model


def run_seed(cfg: RunConfig, subnets: dict[str, Subnet], layout: RunLayout) -> int:
    """Train (or resume) the seed, write `seed/model.bin`, and when in a network publish it until told to stop."""
    if cfg.seed_from:
        model = seed_from_checkpoint(cfg, subnets, layout)
    else:
        batches = union_batches(cfg, subnets, cfg.seed_train, seed=cfg.seed + Stream.SEED)
        model, _ = run_lm_job(cfg, subnets, layout, "seed", cfg.seed_train, batches, layout.seed)
    blob = model_to_bytes(model, config_dict(cfg.model))
    layout.seed_blob.write_bytes(blob)
    if not cfg.initial_peers:
        return 0
    from moe.net.join import join_network
    from moe.net.seed_transfer import SeedPublisher

    status = StatusBoard(layout.status, "seed")
    hotkey = Hotkey.load_or_create(cfg.hotkey_path or layout.key("seed"))
    net = cfg.network
    dht = join_network(cfg.initial_peers, net)
    publisher = SeedPublisher(
        dht, hotkey, blob, interval=net.heartbeat_interval_seconds, ttl=net.announce_ttl_seconds
    ).start()
    sha = publisher.record.sha256
    write_json(layout.seed / PUBLISHED, {"sha256": sha, "bytes": len(blob), "publisher": hotkey.address})
    status.update(phase="publishing", sha256=sha[:16])
    logger.info("seed %s published (%d bytes); serving until stopped", sha[:16], len(blob))
    wait_for_stop()
    publisher.stop()
    dht.shutdown()
    return 0
