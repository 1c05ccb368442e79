"""Which experts the gate picks for each kind of input: the share of top-k selections per input subnet.

    tally = RoutingTally()
    score_sets(lambda x: tally.add(mixture.mix(x)).logp, tally.track(windows_by_subnet))
    tally.shares()   # {"code": {hotkey: 0.61, ...}, "math": {...}}

The router records it during its final evaluation (`<run_dir>/router/routing.json`, summary `mixture.routing`), so a
run shows whether the gate sends each domain to its specialist. Only experts the gate could choose are counted; an
expert that never answered a probe gets no selections.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

from moe.routing.mixing import MixOutput


class RoutingTally:
    """Counts, per input subnet, how often each expert was among the top-k the gate chose for a sequence."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        """Input subnet → {expert hotkey: sequences it was chosen for}."""
        self.current = ""
        """The subnet whose windows are being scored (set by `track`)."""

    def track(self, sets: dict[str, Callable[[], Iterable]]) -> dict[str, Callable[[], Iterable]]:
        """`sets` (name → windows factory, as `moe.metrics.score_sets` takes them), each one recording its name as
        the current input subnet while it is iterated."""
        return {name: functools.partial(self._iterate, name, windows) for name, windows in sets.items()}

    def _iterate(self, name: str, windows: Callable[[], Iterable]) -> Iterator:
        self.current = name
        yield from windows()

    def add(self, out: MixOutput) -> MixOutput:
        """Count the experts `out` chose for each sequence under the current subnet; returns `out` for chaining."""
        row = self.counts.setdefault(self.current, {})
        for key, n in zip(out.keys, out.chosen.sum(0).tolist(), strict=True):  # chosen: (B, J)
            row[key] = row.get(key, 0) + int(n)
        return out

    def shares(self) -> dict[str, dict[str, float]]:
        """Input subnet → {hotkey: share of that subnet's selections}, every expert seen anywhere listed (0 where
        never chosen); a subnet with no selections at all maps every expert to 0."""
        keys = sorted({k for row in self.counts.values() for k in row})
        out = {}
        for subnet, row in self.counts.items():
            total = sum(row.values())
            out[subnet] = {k: round(row.get(k, 0) / total, 4) if total else 0.0 for k in keys}
        return out
