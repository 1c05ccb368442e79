"""JSON from strangers: the one parser for signed DHT values and stored ledger blocks.

Python's json accepts NaN, Infinity, floats that overflow to infinity (1e400) and duplicate keys, none of which a
canonical encoding can reproduce, and raises RecursionError on deep nesting. Here every one of those is a
`StrictJSONError` (a ValueError) with a one-line reason, which each caller turns into its own rejection.
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJSONError(ValueError):
    """Bytes that are not JSON a canonical encoder could have written."""


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN, Infinity, overflowing floats, duplicate keys, ints past Python's digit limit and
    nesting deeper than the recursion limit allows."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_object)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError("nested too deeply") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError, undecodable bytes, ints past the digit limit
        raise StrictJSONError(f"not valid JSON ({str(e).splitlines()[0][:80]})") from None


def _refuse_constant(name: str) -> float:
    raise StrictJSONError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"non-finite number {text[:24]}")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise StrictJSONError("duplicate key in an object")
    return out
