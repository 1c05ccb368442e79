"""Tests for moe/routing/window_query.py: what counts as an expert's reply to a batch of windows."""

from __future__ import annotations

import logging

import torch

from moe.routing.window_query import query_windows


def test_query_windows_drops_malformed_and_missing_replies(caplog):
    """Replies of the wrong shape and experts that did not answer count as absent for exactly those windows."""
    x = torch.randint(0, 256, (6, 8))

    def call(inputs):
        out = {}
        for hk, xb in inputs.items():
            if hk == "good":
                out[hk] = torch.log_softmax(torch.zeros(xb.shape[0], 8, 256), -1)
            elif hk == "bad":
                out[hk] = torch.zeros(xb.shape[0], 8, 3)
        return out

    with caplog.at_level(logging.WARNING):
        dists, present = query_windows(call, ["good", "bad", "silent"], x, batch_size=4, retry_pause_seconds=0)
    assert present[0].all() and not present[1].any() and not present[2].any()
    assert dists.shape == (3, 6, 8, 256)
    assert "reply of shape" in caplog.text


def uniform(xb: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.zeros(xb.shape[0], xb.shape[1], 256), -1)


def test_a_missed_batch_is_asked_again_and_a_transient_failure_costs_nothing():
    """An expert that misses each batch the first time it is sent (a timeout, a busy reply) is asked again after the
    other batches and counts as present for every window; a silent expert is asked 1 + retries times a batch, a
    malformed one once."""
    x = torch.randint(0, 256, (6, 8))
    asked: dict[str, list[int]] = {"flaky": [], "silent": [], "bad": []}

    def call(inputs):
        out = {}
        for hk, xb in inputs.items():
            asked[hk].append(xb.shape[0])
            if hk == "flaky" and asked[hk].count(xb.shape[0]) > 1:
                out[hk] = uniform(xb)
            elif hk == "bad":
                out[hk] = torch.zeros(xb.shape[0], 8, 3)
        return out

    dists, present = query_windows(call, ["flaky", "silent", "bad"], x, batch_size=4, retries=2, retry_pause_seconds=0)
    assert present[0].all() and not present[1:].any()
    assert torch.allclose(dists[0], uniform(x))
    assert asked["flaky"] == [4, 2, 4, 2]  # every batch once, then each again after the pass (answered this time)
    assert asked["silent"] == [4, 2] * 3 and asked["bad"] == [4, 2]


def test_without_retries_a_missed_batch_is_absent():
    """With retries=0 a batch missed once is absent, as before retries existed."""
    x = torch.randint(0, 256, (4, 8))
    calls = []

    def call(inputs):
        calls.append(len(calls))
        return {hk: uniform(xb) for hk, xb in inputs.items()} if len(calls) > 1 else {}

    _, present = query_windows(call, ["e"], x, batch_size=2, retries=0)
    assert present.tolist() == [[False, False, True, True]]
