"""Tests for the evaluation source of moe/roles/validator.py (config, pool, result) and its way into summary.json
(moe/roles/validation_summary.py)."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from moe.config_loader import ConfigError, parse_args
from moe.corpus.tokens import subnet_tokens
from moe.fileio import write_json
from moe.identity import Hotkey
from moe.poi.eval_source import PRIVATE, data_commitment, private_tokens, salt_commitment
from moe.roles.layout import RESULT, RunLayout
from moe.roles.run_config import RunConfig
from moe.roles.validation_summary import validation_summary
from moe.roles.validator import _eval_pool, _result

TINY = ["configs/tiny.yaml", "subnets=english,code"]


@pytest.fixture(scope="module")
def subnets():
    from subnets import all_subnets

    return all_subnets()


def config(*overrides: str) -> RunConfig:
    return parse_args(RunConfig, [*TINY, "role=validator", *overrides])


def test_default_is_salted_and_data_makes_it_private(tmp_path):
    """Without settings a validator salts; `public` is still there to choose; giving data evaluates on it."""
    (tmp_path / "mine.txt").write_text("text no miner holds. " * 10)
    assert config().validator.source == "salted"
    assert config("validator.eval_source=public").validator.source == "public"
    assert config(f"validator.data={tmp_path}").validator.source == PRIVATE
    assert config(f"validator.data={tmp_path}", "validator.eval_source=private").validator.source == PRIVATE


@pytest.mark.parametrize(
    "override,message",
    [
        ("validator.data={tmp}/nowhere", r"validator: data .*/nowhere does not exist"),
        ("validator.data={tmp}/empty.txt", r"validator: data .*/empty.txt holds no text \(empty\)"),
        ("validator.data={tmp}/short.txt", r"validator: data .*/short.txt holds 6 tokens, fewer than one evaluation"),
        ("validator.eval_source=private", r"validator: eval_source=private needs data=PATH"),
        ("validator.eval_source=secret", r"validator: eval_source must be one of public, salted, private"),
        ("validator.salt_fraction=0", r"validator: salt_fraction must be positive"),
    ],
)
def test_unusable_evaluation_settings_are_one_line_config_errors(tmp_path, override, message):
    """A missing, empty or too short data path, private without data, or an unknown source stops the validator
    before any work with a one-line config error naming the field."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("short")
    with pytest.raises(ConfigError, match=message) as e:
        config(override.format(tmp=tmp_path))
    assert "\n" not in str(e.value)


def test_salted_pool_uses_a_private_salt_next_to_the_hotkey(tmp_path, subnets):
    """A salted validator creates its salt beside its hotkey (0600), commits to its hash, draws from a part of val
    and route (knowing which token came from which), and gets the same pool after a restart."""
    key = tmp_path / "keys" / "validator-0.key"
    cfg = config()
    pool, commitment, origins = _eval_pool(cfg, subnets, key)
    salt_path = key.with_suffix(".salt")
    assert stat.S_IMODE(salt_path.stat().st_mode) == 0o600
    assert commitment == salt_commitment(bytes.fromhex(salt_path.read_text()))
    assert sorted(pool) == ["code", "english"]
    for s in pool:
        held_out = sum(len(subnet_tokens(subnets[s], k, cfg.data)) for k in ("val", "route"))
        assert 0.3 * held_out < len(pool[s]) < 0.7 * held_out
        assert len(origins[s]) == len(pool[s]) and set(np.unique(origins[s])) == {0, 1}
    again, same, _ = _eval_pool(cfg, subnets, key)
    assert same == commitment and all(np.array_equal(again[s], pool[s]) for s in pool)


def test_public_and_private_pools(tmp_path, subnets):
    """`public` draws from the val splits with nothing to commit to; private data is one domain bound by its hash."""
    cfg = config("validator.eval_source=public")
    pool, commitment, origins = _eval_pool(cfg, subnets, tmp_path / "v.key")
    assert commitment == b"" and origins is None and not (tmp_path / "v.salt").exists()
    assert np.array_equal(pool["code"], subnet_tokens(subnets["code"], "val", cfg.data))
    (tmp_path / "mine.txt").write_text("text no miner holds. " * 10)
    pool, commitment, origins = _eval_pool(
        config(f"validator.data={tmp_path / 'mine.txt'}"), subnets, tmp_path / "v.key"
    )
    assert (
        origins is None
        and list(pool) == [PRIVATE]
        and commitment == data_commitment(private_tokens(str(tmp_path / "mine.txt")))
    )


def test_summary_says_where_each_validator_evaluated(tmp_path):
    """Each validator's result names its evaluation source and summary.json carries it; a result from before the
    choice existed counts as public."""
    (tmp_path / "mine.txt").write_text("text no miner holds. " * 10)
    layout = RunLayout.create(tmp_path, "r")
    configs = [config(), config(f"validator.data={tmp_path / 'mine.txt'}"), config("validator.eval_source=public")]
    results = [_result(Hotkey.from_seed(bytes([i + 1]) * 32), i, c.validator, []) for i, c in enumerate(configs)]
    older = {k: v for k, v in results[0].items() if k != "eval_source"} | {
        "hotkey": Hotkey.from_seed(b"\x09" * 32).address
    }
    for i, result in enumerate([*results, older]):
        write_json(layout.validator(f"validator-{i}") / RESULT, result)
    s = validation_summary(layout, [])
    assert [v["eval_source"] for v in s["validators"].values()] == ["salted", PRIVATE, "public", "public"]
