"""Tests for moe/roles/run_config.py: what a run's configuration refuses, and that its defaults are the default run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moe.config_loader import ConfigError, load_yaml, parse_args
from moe.distill.config import DistillConfig
from moe.roles.run_config import DEFAULT_SUBNETS, ROLES, RunConfig
from moe.training.loop import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"role": "miner"}, "role must be one of"),
        ({"role": "expert"}, "role=expert needs subnet=NAME"),
        ({"role": "adversary", "adversary": "noise"}, "role=adversary needs subnet=NAME"),
        ({"role": "adversary", "subnet": "code"}, "role=adversary needs adversary=KIND"),
        ({"role": "adversary", "subnet": "code", "adversary": "sybil"}, "unknown adversary 'sybil'"),
        ({"adversaries": ["noise", "sybil"]}, "unknown adversary 'sybil'"),
        ({"role": "baseline", "baseline": "huge"}, "baseline must be one of"),
        ({"subnets": ["code", "math", "code"]}, "without repeats"),
        ({"subnets": []}, "non-empty"),
        ({"validator_stakes_tao": [1000.0, 0.0]}, "must all be positive"),
        ({"validator_stakes_tao": [-5.0]}, "must all be positive"),
        ({"validator_stakes_tao": [float("nan")]}, "must all be positive"),
        ({"uid": -1}, "uid must be in 0..65535"),
        ({"uid": 65536}, "uid must be in 0..65535"),
        ({"role": "distiller", "student": "giant"}, "students must be distinct, each one of dense, btx"),
        ({"students": ["dense", "dense"]}, "students must be distinct"),
        ({"distill": DistillConfig(seq_len=256)}, "distill.seq_len=256 exceeds model.max_seq_len=128"),
    ],
)
def test_invalid_configs_are_refused(kwargs, message):
    """Each inconsistent setting is a ValueError saying what is wrong, raised when the config is built."""
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)


def test_invalid_setting_from_command_line_is_a_config_error():
    """The same checks run for `key=value` overrides and surface as a one-line ConfigError."""
    with pytest.raises(ConfigError, match="role=expert needs subnet=NAME"):
        parse_args(RunConfig, ["role=expert"])
    with pytest.raises(ConfigError, match="uid must be in"):
        parse_args(RunConfig, ["role=expert", "subnet=code", "uid=70000"])
    with pytest.raises(ConfigError, match="ledger: ledger.host must be 64 lowercase hex .* needs the ledger host's"):
        parse_args(RunConfig, ["role=router", "ledger.enabled=true"])  # no host would trust any signer's head


@pytest.mark.parametrize(
    "kwargs",
    [
        {"role": "expert", "subnet": "code", "uid": 65535},
        {"role": "adversary", "subnet": "math", "adversary": "copycat"},
        {"role": "baseline", "baseline": "dense"},
        {"adversaries": ["copycat", "noise"], "validator_stakes_tao": []},
        {"uid": 0, "subnets": ["persian"]},
    ],
)
def test_valid_edge_configs_are_accepted(kwargs):
    """Settings at the edges of what is allowed (uid 65535, no validators, one subnet) build without error."""
    RunConfig(**kwargs)


def test_every_role_builds_with_what_it_needs():
    """Each listed role has a valid configuration (so none is listed but unreachable)."""
    needs = {"expert": {"subnet": "code"}, "adversary": {"subnet": "code", "adversary": "noise"}}
    for role in ROLES:
        assert RunConfig(role=role, **needs.get(role, {})).role == role


def test_default_yaml_changes_only_cpu_threads():
    """configs/default.yaml resolves to the dataclass defaults except the CPU thread counts it sets, and sets
    nothing else: the defaults are the default run."""
    assert load_yaml(CONFIGS / "default.yaml") == {
        "seed_train": {"cpu_threads": 2},
        "expert_train": {"cpu_threads": 1},
        "distill": {"cpu_threads": 1},
    }
    from_file = parse_args(RunConfig, [str(CONFIGS / "default.yaml")])
    defaults = RunConfig()
    defaults.seed_train = dataclasses.replace(defaults.seed_train, cpu_threads=2)
    defaults.expert_train = dataclasses.replace(defaults.expert_train, cpu_threads=1)
    defaults.distill = dataclasses.replace(defaults.distill, cpu_threads=1)
    assert from_file == defaults
    assert from_file.subnets == DEFAULT_SUBNETS and from_file.role == "network"


def test_partial_section_keeps_the_seed_defaults():
    """Setting one field of seed_train keeps the seed's own defaults (700 steps, lr 3e-3), not TrainConfig's."""
    seed_defaults = RunConfig().seed_train
    assert (seed_defaults.steps, seed_defaults.lr, seed_defaults.warmup_steps) == (700, 3e-3, 30)
    assert seed_defaults != TrainConfig()  # otherwise this test could not tell the two apart
    cfg = parse_args(RunConfig, ["seed_train.cpu_threads=2"])
    assert cfg.seed_train == dataclasses.replace(seed_defaults, cpu_threads=2)
    assert cfg.expert_train == TrainConfig(steps=300)


def test_yaml_section_merges_into_the_seed_defaults():
    """A YAML seed_train section that omits lr (configs/tiny.yaml) trains the seed at the seed's lr, and the
    expert section at the experts' lr it sets."""
    cfg = parse_args(RunConfig, [str(CONFIGS / "tiny.yaml")])
    assert cfg.seed_train.lr == RunConfig().seed_train.lr == 3e-3
    assert cfg.seed_train.steps == 30 and cfg.expert_train.lr == 0.003


def test_list_defaults_are_not_shared():
    """Changing one config's subnets or stakes list leaves every other config's defaults untouched."""
    a, b = RunConfig(), RunConfig()
    a.subnets.append("extra")
    a.validator_stakes_tao.append(1.0)
    assert b.subnets == DEFAULT_SUBNETS and b.validator_stakes_tao == [1000.0, 300.0]
    assert RunConfig().subnets == DEFAULT_SUBNETS
