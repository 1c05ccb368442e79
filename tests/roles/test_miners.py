"""Tests for moe/roles/miners.py: the `miners=` list of a local network."""

from __future__ import annotations

import pytest

from moe.roles.miners import MinerSpec, parse_miners
from moe.roles.run_config import RunConfig

SUBNETS = ["english", "code", "math", "persian"]


def test_empty_list_is_one_miner_per_subnet_named_after_it():
    """No miners list starts one miner per subnet, named after the subnet (the folders one-miner runs always had)."""
    assert parse_miners([], SUBNETS) == [MinerSpec(s, s, None, 0) for s in SUBNETS]


def test_several_miners_per_subnet_get_distinct_names_steps_and_seeds():
    """The issue's example: two English and two code miners with 400 and 150 steps, math and persian at the
    default; a subnet's later miners are named subnet-2, subnet-3 and seed their own data order."""
    miners = parse_miners(["english@400", "english@150", "code@400", "code@150", "math", "persian"], SUBNETS)
    assert [(m.name, m.subnet, m.steps, m.index) for m in miners] == [
        ("english", "english", 400, 0),
        ("english-2", "english", 150, 1),
        ("code", "code", 400, 0),
        ("code-2", "code", 150, 1),
        ("math", "math", None, 0),
        ("persian", "persian", None, 0),
    ]


@pytest.mark.parametrize(
    "entries, match",
    [
        (["poetry", "english", "code", "math", "persian"], "names subnet 'poetry'"),
        (["english@", "code", "math", "persian"], "steps after '@'"),
        (["english@0", "code", "math", "persian"], "steps after '@'"),
        (["english@-5", "code", "math", "persian"], "steps after '@'"),
        (["english@1.5", "code", "math", "persian"], "steps after '@'"),
        (["english@99999999999", "code", "math", "persian"], "steps after '@'"),
        (["english", "code"], "without a miner"),
    ],
)
def test_bad_entries_are_one_line_errors(entries, match):
    """An unknown subnet, steps that are not a positive bounded integer, or a subnet left without a miner is a
    ValueError naming the problem (and RunConfig refuses it the same way)."""
    with pytest.raises(ValueError, match=match):
        parse_miners(entries, SUBNETS)
    with pytest.raises(ValueError, match=match):
        RunConfig(miners=entries)


def test_run_config_refuses_a_miner_name_the_run_does_not_start():
    """role=expert with miner=NAME must name one of the run's miners."""
    RunConfig(
        role="expert", subnet="english", miners=["english", "english@10", "code", "math", "persian"], miner="english-2"
    )
    with pytest.raises(ValueError, match="miner 'english-3'"):
        RunConfig(role="expert", subnet="english", miner="english-3")


def test_a_miner_may_name_its_price_and_a_bad_price_is_a_one_line_error():
    """`subnet[@steps][:price]`: the price is kept per miner (None: the run's default); a price that is not a number
    in range names the entry; `any_priced` sees a price from either source."""
    from moe.roles.miners import any_priced, entry_subnet

    miners = parse_miners(["english@400:2.5", "english:0", "code"], ["english", "code"])
    assert [(m.name, m.steps, m.price) for m in miners] == [
        ("english", 400, 2.5),
        ("english-2", None, 0.0),
        ("code", None, None),
    ]
    for bad in ("english:x", "english:-1", "english@4:1e9", "english:nan"):
        with pytest.raises(ValueError, match="price after ':'"):
            parse_miners([bad, "code"], ["english", "code"])
    assert not any_priced(["english", "code"], ["english", "code"], 0.0)
    assert any_priced(["english:1", "code"], ["english", "code"], 0.0)
    assert any_priced([], ["english"], 0.5)
    assert [entry_subnet(e) for e in ("english@400:2.5", "code:1", " math@3", "persian")] == [
        "english",
        "code",
        "math",
        "persian",
    ]
