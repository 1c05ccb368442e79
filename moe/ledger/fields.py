"""Exact-type checks of JSON values, and strict JSON parsing: the ledger's first line against crafted records.

Records arrive from peers and from ledger files someone else may have written, so every field is checked for its
exact JSON type before anything else touches it: an int is an `int` (never a `bool` or a `float` that happens to be
whole), a float is finite, a list is a list, an address is 64 lowercase hex characters. Every check is flat (no
recursion into values), so a 100000-deep list is just "not an integer". Failures raise RecordError with one line
naming the field; descriptions of bad values are short and never recurse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from moe.strict_json import StrictJSONError, loads_strict

HEX_DIGITS = "0123456789abcdef"
U16_MAX = 0xFFFF
U64_MAX = 2**64 - 1
_INT_ONLY = {int}
_FLAT_TYPES = frozenset({int, str, bool, type(None)})
"""Types compared by list equality in `exactly_equal` (not float: a list's == takes a NaN as equal to itself)."""
_CONTAINER_TYPES = frozenset({list, dict})

FieldCheck = Callable[[object, str], object]
"""check(value, where): returns the value or raises RecordError naming `where`."""


class RecordError(ValueError):
    """A record that is malformed, forged, or not valid against the current ledger state."""


def describe(value: object) -> str:
    """A short one-line description of any value, safe on huge ints, long strings and deep containers."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if type(value) is int:
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if type(value) is str:
        return repr(value) if len(value) <= 24 else f"{value[:16]!r}... ({len(value)} characters)"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def exact_int(value: object, where: str, lo: int | None = None, hi: int | None = None) -> int:
    """`value` if it is an int (bools refused) in [lo, hi] (None: unbounded); raises RecordError naming `where`."""
    if type(value) is not int:
        raise RecordError(f"{where} must be an integer, got {describe(value)}")
    if lo is not None and value < lo:
        raise RecordError(f"{where} must be >= {lo}, got {describe(value)}")
    if hi is not None and value > hi:
        raise RecordError(f"{where} must be <= {hi}, got {describe(value)}")
    return value


def finite_number(value: object, where: str, lo: float, hi: float) -> float:
    """`value` as a float if it is a finite int or float (bools refused) in [lo, hi]; raises RecordError otherwise."""
    if type(value) is int and value.bit_length() <= 64:
        number = float(value)
    elif type(value) is float and math.isfinite(value):
        number = value
    else:
        raise RecordError(f"{where} must be a finite number, got {describe(value)}")
    if not lo <= number <= hi:
        raise RecordError(f"{where} must be in [{lo}, {hi}], got {describe(value)}")
    return number


def exact_str(value: object, where: str, max_len: int = 256) -> str:
    """`value` if it is a str of at most `max_len` characters; raises RecordError otherwise."""
    if type(value) is not str or len(value) > max_len:
        raise RecordError(f"{where} must be a string of at most {max_len} characters, got {describe(value)}")
    return value


def is_hex(value: object, n_chars: int) -> bool:
    """True for a str of exactly `n_chars` lowercase hex digits."""
    return type(value) is str and len(value) == n_chars and not value.strip(HEX_DIGITS)


def is_address(value: object) -> bool:
    """True for a 64-character lowercase hex string (a 32-byte Ed25519 public key)."""
    return is_hex(value, 64)


def hex_str(value: object, where: str, n_chars: int) -> str:
    """`value` if it is `n_chars` lowercase hex digits; raises RecordError otherwise."""
    if not is_hex(value, n_chars):
        raise RecordError(f"{where} must be {n_chars} lowercase hex characters, got {describe(value)}")
    return value


def int_list(value: object, where: str, lo: int, hi: int) -> list[int]:
    """`value` if it is a list of ints in [lo, hi]; raises RecordError naming the first bad item."""
    if type(value) is not list:
        raise RecordError(f"{where} must be a list, got {describe(value)}")
    if value and (set(map(type, value)) != _INT_ONLY or min(value) < lo or max(value) > hi):
        for i, item in enumerate(value):  # some item is bad: find and name the first
            exact_int(item, f"{where}[{i}]", lo, hi)
    return value


def exact_dict(value: object, where: str) -> dict:
    """`value` if it is a dict; raises RecordError otherwise."""
    if type(value) is not dict:
        raise RecordError(f"{where} must be an object, got {describe(value)}")
    return value


def exact_keys(value: dict, where: str, required: set[str], optional: set[str] | None = None) -> None:
    """Raise RecordError naming the first missing or unknown key of `value`."""
    missing = sorted(required - value.keys())
    if missing:
        raise RecordError(f"{where} lacks field {missing[0]!r}")
    for key in value:
        if key not in required and (optional is None or key not in optional):
            raise RecordError(f"{where} has unknown field {describe(key)}")


def check_object(
    value: object, where: str, required: Mapping[str, FieldCheck], optional: Mapping[str, FieldCheck] | None = None
) -> dict:
    """`value` if it is a dict with all `required` keys, no others but `optional` ones, each passing its check;
    raises RecordError naming the first problem (as "<where> field '<key>' ...")."""
    if type(value) is not dict or value.keys() != required.keys():  # else exactly the required keys: nothing to name
        exact_keys(exact_dict(value, where), where, set(required), set(optional or ()))
    for key, check in required.items():
        check(value[key], f"{where} field {key!r}")
    for key, check in (optional or {}).items():
        if key in value:
            check(value[key], f"{where} field {key!r}")
    return value


def u16(value: object, where: str) -> int:
    return exact_int(value, where, 0, U16_MAX)


def u64(value: object, where: str) -> int:
    return exact_int(value, where, 0, U64_MAX)


def address(value: object, where: str) -> str:
    """A hotkey address or a block hash: 32 bytes as lowercase hex."""
    return hex_str(value, where, 64)


def signature(value: object, where: str) -> str:
    """An Ed25519 signature: 64 bytes as lowercase hex."""
    return hex_str(value, where, 128)


def u16_list(value: object, where: str) -> list[int]:
    return int_list(value, where, 0, U16_MAX)


def exactly_equal(got: object, want: object) -> bool:
    """`got == want` with JSON types compared too, so 5.0 or true never pass for 5 or 1.

    Recurses only as deep as `want` (a record the ledger built itself), never into the depth of `got`.
    """
    if type(want) is list:
        if type(got) is not list or len(got) != len(want):
            return False
        if set(map(type, want)) <= _FLAT_TYPES:  # flat: compare the types item by item, then the values, in C
            return list(map(type, got)) == list(map(type, want)) and got == want
        return all(map(exactly_equal, got, want))
    if type(want) is dict:
        if type(got) is not dict or got.keys() != want.keys():
            return False
        for key, w in want.items():
            g = got[key]
            if type(w) in _CONTAINER_TYPES:
                if not exactly_equal(g, w):
                    return False
            elif type(g) is not type(w) or g != w:
                return False
        return True
    return type(got) is type(want) and got == want


def strict_json(text: str | bytes) -> Any:
    """Parse JSON with moe.strict_json (no NaN, Infinity, 1e400, duplicate keys, too deep nesting); raises
    RecordError with a one-line reason."""
    try:
        return loads_strict(text)
    except StrictJSONError as e:
        raise RecordError(f"JSON {e}") from None
