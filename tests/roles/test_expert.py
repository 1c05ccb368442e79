"""Tests for moe/roles/expert.py: an expert node trained offline (no initial peers) from a local seed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from moe.config_loader import ConfigError, parse_args
from moe.corpus.tokens import subnet_tokens
from moe.identity import Hotkey
from moe.model.transformer import ByteLM, ModelConfig, config_dict
from moe.net.expert_record import ExpertRecord, validate_expert_payload
from moe.roles.expert import ExpertConfig, claimed_score, run_expert
from moe.roles.layout import CHECKPOINT, RESULT, SERVING, RunLayout
from moe.roles.run_config import RunConfig
from moe.roles.serving import subnet_centroid
from moe.training.checkpoint import CheckpointError, load_checkpoint, model_to_bytes, save_checkpoint


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


def expert_cfg(tmp_path: Path, *overrides: str) -> RunConfig:
    """A tiny expert on the code subnet, scored on english and code only."""
    args = ["configs/tiny.yaml", f"out_dir={tmp_path}", "run_id=r", "role=expert", "subnet=code"]
    return parse_args(RunConfig, [*args, "subnets=english,code", *overrides])


def seed_model(cfg: RunConfig, seed: int = 123) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(cfg.model)


def write_seed_blob(cfg: RunConfig, path: Path) -> ByteLM:
    model = seed_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_to_bytes(model, config_dict(cfg.model)))
    return model


def trained_weights(cfg: RunConfig, layout: RunLayout) -> dict[str, torch.Tensor]:
    model = ByteLM(cfg.model)
    load_checkpoint(layout.expert("code") / CHECKPOINT, model, expect_config=config_dict(cfg.model))
    return model.state_dict()


def test_offline_expert_branches_from_local_seed_and_trains(tmp_path, subnets):
    """Offline with seed_checkpoint=<blob>, the expert trains its steps and result.json names its subnet, netuid,
    configured uid, persistent hotkey, the seed it branched from and its data's centroid; nothing is served."""
    blob = tmp_path / "seed.bin"
    cfg = expert_cfg(tmp_path, f"seed_checkpoint={blob}", "expert_train.steps=2", "uid=5")
    write_seed_blob(cfg, blob)
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    assert run_expert(cfg, subnets, layout) == 0
    out = layout.expert("code")
    r = json.loads((out / RESULT).read_text())
    assert r["name"] == "expert-code" and r["train_steps"] == 2
    assert (r["subnet"], r["netuid"], r["uid"]) == ("code", subnets["code"].netuid, 5)
    assert r["hotkey"] == Hotkey.load_or_create(layout.key("expert-code")).address
    assert r["branched_from"] == f"local seed {blob}"
    assert r["peer_id"] is None and not (out / SERVING).exists()
    tokens = subnet_tokens(subnets["code"], "train", cfg.data)
    assert r["signature_centroid"] == subnet_centroid(tokens, cfg.expert_train.seq_len, cfg.seed)
    assert set(r["eval_bpb"]) == {"english", "code", "all"}


def test_branch_starts_from_exactly_the_seed(tmp_path, subnets):
    """An expert given zero training steps holds exactly the seed blob's weights (the branch copies the seed)."""
    blob = tmp_path / "seed.bin"
    cfg = expert_cfg(tmp_path, f"seed_checkpoint={blob}", "expert_train.steps=0")
    seed = write_seed_blob(cfg, blob)
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    assert run_expert(cfg, subnets, layout) == 0
    got = trained_weights(cfg, layout)
    for k, v in seed.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_branch_from_a_seed_checkpoint_folder(tmp_path, subnets):
    """seed_checkpoint may name a checkpoint folder (as the seed node leaves one): its weights are the start."""
    folder = tmp_path / "seed-ckpt"
    cfg = expert_cfg(tmp_path, f"seed_checkpoint={folder}", "expert_train.steps=0")
    seed = seed_model(cfg, seed=7)
    save_checkpoint(folder, seed, 30, config_dict(cfg.model))
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    assert run_expert(cfg, subnets, layout) == 0
    assert json.loads((layout.expert("code") / RESULT).read_text())["branched_from"] == f"local seed {folder}"
    got = trained_weights(cfg, layout)
    for k, v in seed.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_branch_from_the_runs_own_seed(tmp_path, subnets):
    """Without seed_checkpoint or peers, the expert branches from the run's seed/model.bin when it is there."""
    cfg = expert_cfg(tmp_path, "expert_train.steps=0")
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    seed = write_seed_blob(cfg, layout.seed_blob)
    assert run_expert(cfg, subnets, layout) == 0
    assert json.loads((layout.expert("code") / RESULT).read_text())["branched_from"] == str(layout.seed_blob)
    got = trained_weights(cfg, layout)
    for k, v in seed.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_no_seed_trains_from_scratch_with_a_warning(tmp_path, subnets, caplog):
    """With no seed anywhere, the expert trains from scratch and warns that it does."""
    cfg = expert_cfg(tmp_path, "expert_train.steps=1")
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    with caplog.at_level(logging.WARNING, logger="moe.roles.expert"):
        assert run_expert(cfg, subnets, layout) == 0
    assert json.loads((layout.expert("code") / RESULT).read_text())["branched_from"] == "scratch"
    assert "training from scratch" in caplog.text


@pytest.mark.parametrize("case", ["garbage-file", "missing-path"])
def test_corrupt_seed_checkpoint_raises(tmp_path, subnets, case):
    """A seed_checkpoint that is not a model blob, or names nothing, raises CheckpointError naming the path, and
    the expert writes no result."""
    seed = tmp_path / "seed.bin"
    if case == "garbage-file":
        seed.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    cfg = expert_cfg(tmp_path, f"seed_checkpoint={seed}", "expert_train.steps=1")
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    with pytest.raises(CheckpointError, match=str(seed)):
        run_expert(cfg, subnets, layout)
    assert not (layout.expert("code") / RESULT).exists()


def test_seed_of_another_architecture_raises(tmp_path, subnets):
    """A seed blob made for another model shape is refused with CheckpointError, never loaded partially."""
    blob = tmp_path / "seed.bin"
    other = ModelConfig(d_model=48, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
    blob.write_bytes(model_to_bytes(ByteLM(other), config_dict(other)))
    cfg = expert_cfg(tmp_path, f"seed_checkpoint={blob}", "expert_train.steps=1")
    with pytest.raises(CheckpointError, match="another model config"):
        run_expert(cfg, subnets, RunLayout.create(cfg.out_dir, cfg.run_id))


def test_weights_refresh_steps_must_be_positive():
    """ExpertConfig refuses weights_refresh_steps=0 (the served weights would never refresh), also from a config."""
    with pytest.raises(ValueError, match="weights_refresh_steps"):
        ExpertConfig(weights_refresh_steps=0)
    with pytest.raises(ConfigError, match="weights_refresh_steps"):
        parse_args(RunConfig, ["expert.weights_refresh_steps=0"])
    assert ExpertConfig(weights_refresh_steps=1).weights_refresh_steps == 1


def test_replay_changes_what_the_expert_learns_and_zero_is_the_plain_specialist(tmp_path, subnets):
    """With expert.replay_fraction > 0 the expert trains on a blend of its own and every subnet's text (different
    weights from the same seed); 0 gives exactly the plain specialist; values outside [0, 1] are refused."""
    blob = tmp_path / "seed.bin"
    runs = {}
    for r in (0.0, 0.5):
        cfg = expert_cfg(tmp_path, f"seed_checkpoint={blob}", "expert_train.steps=3", f"run_id=r{r}")
        cfg.expert.replay_fraction = r
        write_seed_blob(cfg, blob)
        layout = RunLayout.create(cfg.out_dir, cfg.run_id)
        assert run_expert(cfg, subnets, layout) == 0
        runs[r] = trained_weights(cfg, layout)
    plain = expert_cfg(tmp_path, f"seed_checkpoint={blob}", "expert_train.steps=3", "run_id=again")
    layout = RunLayout.create(plain.out_dir, plain.run_id)
    assert run_expert(plain, subnets, layout) == 0
    again = trained_weights(plain, layout)
    assert all(torch.equal(again[k], runs[0.0][k]) for k in again)
    assert any(not torch.equal(runs[0.5][k], runs[0.0][k]) for k in again)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="replay_fraction"):
            ExpertConfig(replay_fraction=bad)


def test_a_joining_expert_loads_only_the_seed_the_ledger_host_pins(tmp_path):
    """In a ledger network whose host pins the seed's sha256 in its signed head, an expert never loads a seed that
    another hotkey announced (alone it is ignored and the fetch fails; beside the honest one it is skipped), and
    branches from exactly the pinned seed."""
    import hashlib

    from moe.net.dht_records import publish_signed
    from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs
    from moe.net.ledger_client import HEAD_CONTEXT, HEAD_KEY
    from moe.net.seed_transfer import SeedError, SeedPublisher
    from moe.roles.expert import _branch_from_seed

    host, publisher, mallory = (Hotkey.from_seed(bytes([i]) * 32) for i in (31, 32, 33))
    cfg = expert_cfg(
        tmp_path, "ledger.enabled=true", f"ledger.host={host.address}", "network.discovery_timeout_seconds=5"
    )
    honest, forged = (model_to_bytes(seed_model(cfg, s), config_dict(cfg.model)) for s in (1, 2))
    head = {
        "height": 3,
        "head_hash": "ab" * 32,
        "epoch": 0,
        "tempo": 10,
        "block_interval": 0.1,
        "subnets": {},
        "stakes": {},
        "seed_sha256": hashlib.sha256(honest).hexdigest(),
        "total_issuance": 0,
        "chain": "00" * 32,
        "escrow": {},
    }
    layout = RunLayout.create(cfg.out_dir, cfg.run_id)
    expert = start_bootstrap_dht()  # the joining expert's peer; the seed publishers each have their own
    peers = [start_dht(visible_maddrs(expert)) for _ in range(2)]
    try:
        assert publish_signed(expert, HEAD_KEY, host, head, HEAD_CONTEXT, ttl=60)
        with SeedPublisher(peers[0], mallory, forged):
            with pytest.raises(SeedError, match="no valid seed record"):
                _branch_from_seed(cfg, layout, expert)
            with SeedPublisher(peers[1], publisher, honest):
                init, _ = _branch_from_seed(cfg, layout, expert)
        model = ByteLM(cfg.model)
        init(model)
        for k, v in seed_model(cfg, 1).state_dict().items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    finally:
        for peer in [*peers, expert]:
            peer.shutdown()


@pytest.mark.parametrize("bpb", [float("nan"), float("inf"), None])
def test_an_expert_whose_eval_is_not_a_number_says_so_and_stays_announceable(bpb, caplog):
    """A NaN (or missing) eval becomes no claimed score, with a warning, instead of a record every reader refuses;
    the record it announces then passes the readers' own validation."""
    with caplog.at_level(logging.WARNING, logger="moe.roles.expert"):
        claim = claimed_score(bpb)
    assert claim is None and "announcing without a claimed score" in caplog.text
    record = ExpertRecord(
        uid=1,
        hotkey="a" * 64,
        subnet="code",
        netuid=2,
        peer_id="12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
        model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=260, params=9000),
        claimed_eval_bpb=claim,
        signature_centroid=[0.25] * 4,
        expiration=1e9,
    )
    assert validate_expert_payload(record.payload()).claimed_eval_bpb is None
    assert claimed_score(2.5) == 2.5
