"""Range checks for config dataclasses: each raises a one-line ValueError naming the field (and a NaN fails every
check), which the config loader turns into a `ConfigError` naming the section, before any work starts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_at_least(config: Any, minimum: float, names: Iterable[str]) -> None:
    """Every named field of `config` is >= `minimum`."""
    for name in names:
        value = getattr(config, name)
        if not value >= minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_positive(config: Any, names: Iterable[str]) -> None:
    """Every named field of `config` is > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def require_between(config: Any, name: str, lo: float, hi: float) -> None:
    """Field `name` of `config` lies in [lo, hi]."""
    value = getattr(config, name)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def require_one_of(config: Any, name: str, options: Iterable[Any]) -> None:
    """Field `name` of `config` is one of `options`."""
    options = tuple(options)
    if getattr(config, name) not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}, got {getattr(config, name)!r}")
