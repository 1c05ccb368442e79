"""Windows to every expert in ordinary batches: how validators and the router's audit query the network.

Every expert gets the same batches, in the order given, through one callable (normally `Mixture.call`), so what
an expert sees is indistinguishable from other traffic of that shape; a reply of the wrong shape is absent. A batch
an expert did not answer is asked again after the others, so one slow moment (or a flooder loading the expert) does
not count as the expert's absence.
"""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger(__name__)


def query_windows(
    call,
    hotkeys: list[str],
    x: torch.Tensor,
    batch_size: int,
    retries: int = 2,
    retry_pause_seconds: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Send (W, T) windows to every expert in batches via `call({hotkey: x}) -> {hotkey: logp}`.

    Returns (E, W, T, 256) float32 log-probs (0 where absent) and (E, W) presence. A reply of the wrong shape or
    dtype counts as absent (logged). A batch an expert did not answer in time is sent to it again once every batch has
    been sent, `retry_pause_seconds` later (past the client's first back-off), up to `retries` times; only then do
    its windows count as absent.
    """
    W, T = x.shape
    E = len(hotkeys)
    dists = torch.zeros(E, W, T, 256)
    present = torch.zeros(E, W, dtype=torch.bool)
    unanswered = {w0: list(range(E)) for w0 in range(0, W, batch_size)}
    for attempt in range(retries + 1):
        if attempt:
            logger.info("asking again for %d unanswered batches (retry %d)", len(unanswered), attempt)
            time.sleep(retry_pause_seconds)
        asked, unanswered = unanswered, {}
        for w0, experts in asked.items():
            silent = _query_batch(call, hotkeys, experts, x[w0 : w0 + batch_size], dists[:, w0:], present[:, w0:])
            if silent:
                unanswered[w0] = silent
        if not unanswered:
            break
    return dists, present


def _query_batch(
    call, hotkeys: list[str], experts: list[int], xb: torch.Tensor, dists: torch.Tensor, present: torch.Tensor
) -> list[int]:
    """Send batch `xb` to `experts` (indices into `hotkeys`) and write the valid replies into the leading rows of
    `dists` / `present`; returns the experts that did not answer (a malformed reply is an answer, not retried)."""
    B, T = xb.shape
    replies = call({hotkeys[i]: xb for i in experts})
    silent = []
    for i in experts:
        r = replies.get(hotkeys[i])
        if r is None:
            silent.append(i)
        elif not isinstance(r, torch.Tensor) or tuple(r.shape) != (B, T, 256) or not r.is_floating_point():
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            logger.warning("expert %s sent a reply of shape %s; windows counted missing", hotkeys[i][:16], shape)
        else:
            dists[i, :B] = r.float()
            present[i, :B] = True
    return silent
