"""Tests for moe/poi/scoring.py: Shapley values → normalized non-negative weights."""

from __future__ import annotations

import pytest
import torch

from moe.poi.scoring import ScoringConfig, shapley_weights


def test_clip_flag_normalize():
    """Negative values and flagged uids get 0; the rest are proportional and sum to 1."""
    w = shapley_weights([5, 7, 9, 11], [0.3, -0.2, 0.1, 0.5], flagged={11})
    assert w == pytest.approx({5: 0.75, 7: 0.0, 9: 0.25, 11: 0.0})


def test_exponent_sharpens():
    """An exponent of 2 squares the ratio between two experts."""
    w = shapley_weights([0, 1], torch.tensor([2.0, 1.0]), config=ScoringConfig(exponent=2.0))
    assert w[0] / w[1] == pytest.approx(4.0)


def test_stderr_lower_bound():
    """With z = 2, an expert whose value is within two standard errors of 0 earns nothing."""
    w = shapley_weights([0, 1], [0.1, 0.1], stderr=[0.01, 0.06], config=ScoringConfig(stderr_z=2.0))
    assert w == {0: 1.0, 1: 0.0}


def test_all_zero_and_nonfinite():
    """No positive contribution gives all-zero weights; NaN/inf values score 0."""
    assert shapley_weights([1, 2], [-1.0, 0.0]) == {1: 0.0, 2: 0.0}
    assert shapley_weights([1, 2, 3], [float("nan"), float("inf"), 1.0]) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_bad_input_rejected():
    """Mismatched lengths, duplicate uids or a non-positive exponent raise ValueError."""
    with pytest.raises(ValueError, match="uids but"):
        shapley_weights([1], [1.0, 2.0])
    with pytest.raises(ValueError, match="distinct"):
        shapley_weights([1, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="exponent"):
        shapley_weights([1], [1.0], config=ScoringConfig(exponent=0.0))
    with pytest.raises(ValueError, match="standard errors"):
        shapley_weights([1], [1.0], stderr=[1.0, 2.0])
