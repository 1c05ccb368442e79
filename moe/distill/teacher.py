"""The teacher: the live mixture, asked through the same routing path as any consumer, with a window cache.

Rows of a batch already in the cache are read from it; the rest go to the mixture in one call (probe, gate, top-k
over the network, the generalist mixed in locally) and are credited to the experts that served them. An expert that
stops answering mid-run drops out of the mixture, which renormalises over the rest; the teacher logs each change in
who answers, so a student's dip can be traced to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from moe.distill.attribution import DistillTraffic
from moe.distill.teacher_cache import TeacherCache
from moe.routing.mixing import MixOutput

logger = logging.getLogger(__name__)

WAIT_SECONDS = 120.0
"""Longest a distiller waits for a window another distiller claimed before paying for it itself."""


class CachedTeacher:
    """(B, T) windows -> (B, T, 256) teacher log-probs, each window paid for once."""

    def __init__(self, mix: Callable[[torch.Tensor], MixOutput], cache: TeacherCache, traffic: DistillTraffic):
        self.mix, self.cache, self.traffic = mix, cache, traffic
        self.positions_paid = 0
        """Positions the mixture was asked for (cache misses only)."""
        self.answering: set[str] | None = None
        self.wait_seconds = WAIT_SECONDS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.cache.get(w) for w in x]
        missing = [b for b, r in enumerate(rows) if r is None]
        mine = [b for b in missing if self.cache.claim(x[b])]
        self._pay(x, mine, rows)
        theirs = [b for b in missing if rows[b] is None]  # claimed by another distiller sharing the cache
        for b in theirs:
            rows[b] = self.cache.wait(x[b], self.wait_seconds)
        self._pay(x, [b for b in theirs if rows[b] is None], rows)
        return torch.stack(rows)

    def _pay(self, x: torch.Tensor, rows_to_ask: list[int], rows: list) -> None:
        """Ask the mixture for `rows_to_ask` of x in one call, credit who served them, and cache the answers."""
        if not rows_to_ask:
            return
        out = self.mix(x[rows_to_ask])
        self.traffic.record(out)
        self.positions_paid += len(rows_to_ask) * x.shape[1]
        self._note_answering(out)
        for b, logp in zip(rows_to_ask, out.logp, strict=True):
            rows[b] = self.cache.put(x[b], logp)

    def _note_answering(self, out: MixOutput) -> None:
        """Log when the set of experts that answered changes: one left (renormalised over the rest) or came back."""
        answering = {k for j, k in enumerate(out.keys) if bool(out.answered[:, :, j].any())}
        if self.answering is not None and answering != self.answering:
            gone, back = sorted(self.answering - answering), sorted(answering - self.answering)
            logger.warning(
                "teacher now mixes %d experts (renormalised): lost %s, gained %s",
                len(answering),
                [k[:12] for k in gone],
                [k[:12] for k in back],
            )
        self.answering = answering
