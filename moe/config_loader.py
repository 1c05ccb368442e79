"""Typed configuration: nested dataclasses filled from YAML files and `key=value` overrides.

Every mistake (an unknown key, a value of the wrong type) is a `ConfigError` naming the dotted key, raised before
any work starts, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that names an unknown key or gives a value of the wrong type."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _CliText(str):
    """A command-line value: its raw text, plus what YAML reads it as (`parsed`).

    String fields take the raw text (so `run_id=0123` stays "0123", not YAML's octal 83); every other type takes
    the parsed value.
    """

    parsed: Any

    def __new__(cls, text: str) -> _CliText:
        obj = super().__new__(cls, text)
        obj.parsed = _parse_scalar(text)
        return obj


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Check `value` against the annotation `tp`, converting only where the conversion is lossless; a mapping for a
    dataclass field merges into `default` (the field's current value)."""
    origin = typing.get_origin(tp)
    if isinstance(value, _CliText):
        if tp is str:
            return str(value)
        if origin in (list, tuple) and not isinstance(value.parsed, (list, tuple)):
            value = str(value)  # `a,b` (or empty) is split below, item by item, as raw text
        elif origin not in (typing.Union, types.UnionType) or value.parsed is None:
            value = value.parsed
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_name(tp)})")
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, key): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=f"{key}.", base=default)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(cls: type[T], values: dict[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Construct dataclass `cls` from a (nested) mapping, rejecting unknown keys and wrong types.

    Fields the mapping leaves out keep their values in `base` when given, else the field's own default; a nested
    section merges into its default the same way, so `seed_train: {cpu_threads: 2}` changes one field of the seed's
    training and keeps the rest of it (not the plain `TrainConfig` defaults).
    """
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(fields))})")
        nested = _default_of(fields[key], base) if _is_dataclass_type(hints[key]) else None
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", nested)
    if base is not None:
        kwargs = {**{n: getattr(base, n) for n in fields}, **kwargs}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    return obj


def _default_of(f: dataclasses.Field, base: Any) -> Any:
    """The value a field has when a config does not mention it: from `base` if given, else its default."""
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _parse_scalar(text: str) -> Any:
    """Read a command-line value as YAML (so `3`, `0.1`, `true`, `[a,b]` and `null` mean what they look like)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_args(cls: type[T], argv: list[str]) -> T:
    """`[FILE.yaml ...] [key=value ...]` -> a validated `cls`; later files and overrides win."""
    tree: dict[str, Any] = {}
    for arg in argv:
        if "=" in arg:
            key, _, text = arg.partition("=")
            if not key:
                raise ConfigError(f"malformed override '{arg}': expected key=value")
            overrides: dict[str, Any] = {}
            value = _CliText(text)
            # a mapping merges into the section like a YAML file would; anything else keeps its raw text
            _set_dotted(overrides, key, value.parsed if isinstance(value.parsed, dict) else value)
            tree = _merge(tree, overrides)
        elif arg.endswith((".yaml", ".yml")):
            tree = _merge(tree, load_yaml(arg))
        else:
            raise ConfigError(f"unexpected argument '{arg}': expected a .yaml file or key=value")
    return build(cls, tree)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
