"""Windows to every expert in ordinary batches: how validators and the router's audit query the network.

Every expert gets the same batches, in the order given, through one callable (normally `Mixture.call`), so what
an expert sees is indistinguishable from other traffic of that shape; a reply of the wrong shape is absent.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def query_windows(call, hotkeys: list[str], x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Send (W, T) windows to every expert in batches via `call({hotkey: x}) -> {hotkey: logp}`.

    Returns (E, W, T, 256) float32 log-probs (0 where absent) and (E, W) presence; a reply of the wrong shape or
    dtype counts as absent (logged), as does an expert that did not answer a batch in time.
    """
    W, T = x.shape
    E = len(hotkeys)
    dists = torch.zeros(E, W, T, 256)
    present = torch.zeros(E, W, dtype=torch.bool)
    for w0 in range(0, W, batch_size):
        xb = x[w0 : w0 + batch_size]
        replies = call({hk: xb for hk in hotkeys})
        for i, hk in enumerate(hotkeys):
            r = replies.get(hk)
            if r is None:
                continue
            if not isinstance(r, torch.Tensor) or tuple(r.shape) != (xb.shape[0], T, 256) or not r.is_floating_point():
                logger.warning("expert %s sent a reply of shape %s; windows counted missing", hk[:16], tuple(r.shape))
                continue
            dists[i, w0 : w0 + xb.shape[0]] = r.float()
            present[i, w0 : w0 + xb.shape[0]] = True
    return dists, present
