"""Tests for moe/config_checks.py: range checks accept their boundaries, reject what lies just outside and NaN,
and name the field."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from moe.config_checks import require_at_least, require_between, require_one_of, require_positive
from moe.config_loader import ConfigError, parse_args
from moe.roles.run_config import RunConfig

NAN, INF = float("nan"), float("inf")


def below(x: float) -> float:
    return math.nextafter(x, -INF)


def above(x: float) -> float:
    return math.nextafter(x, INF)


def rejects(check, value, field: str = "knob") -> str:
    """The one-line message `check` raises for `knob=value`, after asserting it names the field."""
    with pytest.raises(ValueError) as e:
        check(SimpleNamespace(**{field: value}))
    msg = str(e.value)
    assert msg.startswith(f"{field} ") and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "minimum, ok, bad", [(0, [0, 0.0, -0.0, 1, INF], [-1, below(0.0), -INF]), (1, [1, 1.0, 2], [0, below(1.0)])]
)
def test_require_at_least(minimum, ok, bad):
    """require_at_least accepts the minimum itself and above; anything below, and NaN, is refused naming the field."""
    check = lambda c: require_at_least(c, minimum, ["knob"])
    for v in ok:
        check(SimpleNamespace(knob=v))
    for v in [*bad, NAN]:
        assert rejects(check, v) == f"knob must be >= {minimum}, got {v}"


def test_require_positive():
    """require_positive accepts the smallest positive float; zero, -0.0, negatives and NaN are refused by name."""
    check = lambda c: require_positive(c, ["knob"])
    for v in (5e-324, 1, 1e-9, INF):
        check(SimpleNamespace(knob=v))
    for v in (0, 0.0, -0.0, -5e-324, NAN):
        assert "must be positive" in rejects(check, v)


@pytest.mark.parametrize("lo, hi", [(0, 65535), (0.0, 1.0), (-1.5, 2.5)])
def test_require_between(lo, hi):
    """require_between accepts both ends of [lo, hi]; the nearest values outside, and NaN, are refused by name."""
    check = lambda c: require_between(c, "knob", lo, hi)
    for v in (lo, hi, (lo + hi) / 2):
        check(SimpleNamespace(knob=v))
    outside = [lo - 1, hi + 1] if isinstance(lo, int) else [below(lo), above(hi)]
    for v in [*outside, NAN]:
        assert rejects(check, v) == f"knob must be in [{lo}, {hi}], got {v}"


def test_require_one_of():
    """require_one_of accepts each option and refuses anything else (NaN too), listing the options."""
    options = ("fp32", "q8", 3)
    check = lambda c: require_one_of(c, "knob", iter(options))  # any iterable, even a one-shot one
    for v in options:
        check(SimpleNamespace(knob=v))
    for v in ("FP32", "q8 ", 3.5, None, NAN):
        assert rejects(check, v) == f"knob must be one of fp32, q8, 3, got {v!r}"


def test_first_bad_field_is_named():
    """With several fields checked at once, the error names the first one out of range, not a later one."""
    cfg = SimpleNamespace(a=1, b=-1, c=NAN)
    with pytest.raises(ValueError, match="^b must be >= 0"):
        require_at_least(cfg, 0, ["a", "b", "c"])
    with pytest.raises(ValueError, match="^c must be positive"):
        require_positive(cfg, ["a", "c", "b"])
    require_at_least(cfg, 0, [])  # nothing to check


@pytest.mark.parametrize(
    "override, message",
    [
        ("router.lr=nan", "router: lr must be positive, got nan"),
        ("router.k_best=0", "router: k_best must be >= 1, got 0"),
        ("router.client.tol=-1", "router.client: tol must be positive, got -1.0"),
        ("network.port=65536", "network: port must be in [0, 65535], got 65536"),
        ("seed_train.lr=0", "seed_train: lr must be positive, got 0.0"),
    ],
)
def test_config_loader_reports_the_section_and_field(override, message):
    """A value a check refuses on the command line is a one-line ConfigError naming the section and the field."""
    with pytest.raises(ConfigError) as e:
        parse_args(RunConfig, [override])
    assert str(e.value) == message
