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


class CachedTeacher:
    """(B, T) windows -> (B, T, 256) teacher log-probs, each window paid for once."""

    def __init__(self, mix: Callable[[torch.Tensor], MixOutput], cache: TeacherCache, traffic: DistillTraffic):
        self.mix, self.cache, self.traffic = mix, cache, traffic
        self.positions_paid = 0
        """Positions the mixture was asked for (cache misses only)."""
        self.answering: set[str] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.cache.get(w) for w in x]
        missing = [b for b, r in enumerate(rows) if r is None]
        if missing:
            out = self.mix(x[missing])
            self.traffic.record(out)
            self.positions_paid += len(missing) * x.shape[1]
            self._note_answering(out)
            for b, logp in zip(missing, out.logp, strict=True):
                rows[b] = self.cache.put(x[b], logp)
        return torch.stack(rows)

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
