"""Tests for moe/routing/usage.py: routing shares per input subnet, against counts by hand."""

from __future__ import annotations

import torch

from moe.metrics import score_sets
from moe.routing.mixing import MixOutput
from moe.routing.usage import RoutingTally


def mix_output(chosen: list[list[bool]], keys: list[str]) -> MixOutput:
    c = torch.tensor(chosen)
    B, J = c.shape
    return MixOutput(torch.zeros(B, 1, 256), torch.zeros(B, 1, J), c, torch.zeros(B, 1, J, dtype=torch.bool), keys)


def test_shares_follow_the_windows_being_scored():
    """While score_sets iterates a subnet's windows, each batch's top-k selections count for that subnet; shares are
    selections over the subnet's total, with every expert seen anywhere listed."""
    tally = RoutingTally()
    batches = {
        "code": [mix_output([[True, False], [True, True]], ["a", "b"])],
        "math": [mix_output([[False, True, False]], ["a", "b", "c"]), mix_output([[False]], ["c"])],
    }
    outputs = iter([o for outs in batches.values() for o in outs])

    def windows(n):
        return lambda: [(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))] * n

    score_sets(lambda x: tally.add(next(outputs)).logp, tally.track({"code": windows(1), "math": windows(2)}))
    assert tally.counts == {"code": {"a": 2, "b": 1}, "math": {"a": 0, "b": 1, "c": 0}}
    assert tally.shares() == {
        "code": {"a": round(2 / 3, 4), "b": round(1 / 3, 4), "c": 0.0},
        "math": {"a": 0.0, "b": 1.0, "c": 0.0},
    }
