"""The two-faced expert: a real model for validators, a free one for the router that serves paying users.

A router is easy to recognise: it probes every expert with the first `router.probe_len` bytes of each sequence,
a request length validators never send. This server remembers every peer that ever sent a probe-length request.
It answers probes with the network's seed (a fair model it did not have to train), so the router's gate picks it,
and the rest of a router's calls, the whole sequences it was picked for, with uniform bytes, which cost nothing;
every other caller, validators among them, gets the seed. Without served-traffic receipts it keeps the seed's reward
while the mixture gets noise from it where it was chosen; a validator re-sending a router's sampled whole-sequence
call from its own peer gets the seed's reply, which differs from the one the expert signed for the router
(moe.poi.traffic_check flags it `twofaced`; the router's sample keeps its widest calls: moe.routing.traffic).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable

import torch
from torch import nn

from moe.net.server import ExpertServer
from moe.net.wire import request_width

logger = logging.getLogger(__name__)


class TwoFacedLM(nn.Module):
    """The honest model or uniform logits, whichever face the serving thread has put on."""

    def __init__(self, honest: nn.Module):
        super().__init__()
        self.honest = honest.eval()
        self._face = threading.local()

    def show_honest(self, honest: bool) -> None:
        self._face.honest = honest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self._face, "honest", False):
            return self.honest(x)
        return torch.zeros(*x.shape, 256)  # uniform: no compute at all

    def __deepcopy__(self, memo: dict) -> TwoFacedLM:
        return self  # the server keeps two "copies"; the face is per thread


class TwoFacedServer(ExpertServer):
    """Serves a TwoFacedLM, showing the cheap face to the whole-sequence calls of peers it has seen probe."""

    def __init__(self, module: TwoFacedLM, probe_len: int, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.face_of, self.probe_len = module, probe_len
        self.routers: set[Hashable] = set()

    def _serve(self, raw: bytes, remote: Hashable) -> bytes:
        try:
            probe = request_width(raw) == self.probe_len  # headers only: the server decodes the request itself
        except ValueError:
            probe = False
        if probe and remote not in self.routers:
            logger.info("%s probes like a router: uniform answers to its other calls from now on", remote)
            self.routers.add(remote)
        self.face_of.show_honest(probe or remote not in self.routers)  # a good probe gets it picked
        return super()._serve(raw, remote)
