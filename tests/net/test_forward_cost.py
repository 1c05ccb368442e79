"""Tests for moe/net/forward_cost.py: the server's running estimate of what a forward costs."""

from __future__ import annotations

import pytest

from moe.net.forward_cost import ForwardCost


def test_nothing_is_short_before_a_forward_was_measured_or_with_a_zero_limit():
    cost = ForwardCost()
    assert cost.expected_seconds(100) is None and not cost.is_short(1, 1.0)
    cost.observe(100, 0.001)
    assert cost.is_short(100, 0.002) and not cost.is_short(100, 0.0)


def test_the_estimate_follows_recent_forwards_and_scales_with_positions():
    """Seconds per position, averaged: a forward that turns slow makes the same request long at once (one slow
    observation moves a 0.2-smoothed average far), and twice the positions cost twice the time."""
    cost = ForwardCost(smoothing=0.2)
    for _ in range(10):
        cost.observe(512, 0.001)
    assert cost.expected_seconds(1024) == pytest.approx(0.002)
    assert cost.is_short(512, 0.005)
    cost.observe(512, 1.5)
    assert cost.expected_seconds(512) == pytest.approx(0.8 * 0.001 + 0.2 * 1.5)
    assert not cost.is_short(512, 0.005)


def test_meaningless_observations_are_ignored():
    cost = ForwardCost()
    cost.observe(0, 1.0)
    cost.observe(10, -1.0)
    assert cost.expected_seconds(10) is None
