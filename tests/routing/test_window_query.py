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
        dists, present = query_windows(call, ["good", "bad", "silent"], x, batch_size=4)
    assert present[0].all() and not present[1].any() and not present[2].any()
    assert dists.shape == (3, 6, 8, 256)
    assert "reply of shape" in caplog.text
