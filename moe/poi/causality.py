"""Causality audits: catch experts that read the byte they are asked to predict.

A request carries whole windows, so an expert asked for the next-byte distribution at position t can see byte t+1
in the same request and put its mass there ("peek-ahead"): near-zero bits per byte with no model at all. The audit
sends *spliced twins*: a copy of a query window that keeps its first d bytes and continues with other real text of
the same split from byte d on (d drawn at random, the byte at d differing). A causal expert's predictions at the
positions before d depend only on the shared prefix, so they must match between the window and its twin; at
position d-1 a peeker's prediction follows byte d, which differs. Twins have the shape of ordinary windows and go
out shuffled among them in ordinary batches, so an expert cannot answer them differently.

One twin tests one position (a set of n windows sharing prefixes has at most n-1 branch points), so catching an
expert that peeks on a fraction f of positions with probability c takes n = log(1-c) / log(1-f) twins: 135 for
f = 5%, c = 0.999. Pure functions on tensors: the validator and the router draw, query and judge with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moe.config_checks import require_at_least, require_between, require_positive

VOCAB = 256
"""Byte values; windows may also hold document markers (moe.model.tokenizer's BOS/EOS), which are not predicted."""
NONCAUSAL = "noncausal"
INCONSISTENT = "inconsistent"


@dataclass
class AuditConfig:
    """How hard a causality audit looks, and how much disagreement the wire format may cause."""

    twins: int = 0
    """Twins per audit; 0 sizes it from the two fields below (135 by default)."""
    min_peek_fraction: float = 0.05
    """The sparsest peeker (share of positions it peeks at) an audit must catch..."""
    confidence: float = 0.999
    """...with this probability; together they set the number of twins (`twins_needed`)."""
    max_logp_diff: float = 0.25
    """Largest |Δ log p| (nats) between a window and its twin at a shared-prefix position that counts as the same
    prediction: above q8's quantum (20/255 nats) and fp16 rounding, far below what moving mass to the next byte
    costs (a peeker that stays under it gains at most 0.36 bits at that byte)."""
    floor_nats: float = 15.0
    """Log-probs more than this below a position's maximum are compared as if at that floor (noise down there is
    not a prediction)."""
    max_inconsistent_fraction: float = 0.5
    """Flag an expert `inconsistent` when more than this share of its checked twins disagree already on the shared
    prefix (a model that answers the same bytes differently cannot be audited, or scored)."""

    def __post_init__(self):
        require_at_least(self, 0, ["twins"])
        require_between(self, "min_peek_fraction", 0.0, 1.0)
        require_between(self, "confidence", 0.0, 1.0)
        require_between(self, "max_inconsistent_fraction", 0.0, 1.0)
        require_positive(self, ["min_peek_fraction", "confidence", "max_logp_diff", "floor_nats"])
        if self.confidence >= 1.0:
            raise ValueError(f"confidence must be below 1, got {self.confidence}")

    def count(self) -> int:
        """Twins each audit sends."""
        return self.twins or twins_needed(self.min_peek_fraction, self.confidence)


def twins_needed(min_peek_fraction: float, confidence: float) -> int:
    """Twins per audit so a peeker on `min_peek_fraction` of positions is caught with probability `confidence`."""
    if min_peek_fraction >= 1.0:
        return 1
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - min_peek_fraction))


@dataclass
class Twin:
    """A spliced twin of row `original` of the query: the same bytes before `cut`, other real text from `cut` on."""

    original: int
    cut: int
    """First position where the twin's bytes differ (2 ≤ cut ≤ T-1: at least one shared position before cut-1
    shows whether the expert answered both with the same weights)."""


def splice_twins(
    x: torch.Tensor, donors: torch.Tensor, n: int, rng: np.random.Generator
) -> tuple[torch.Tensor, list[Twin]]:
    """n twins of the (W, T) windows `x`, continued from the (D, T) `donors` (real text of the same split).

    Each twin copies a random window up to a random cut and the donor's bytes from the cut on; cuts where the donor
    happens to continue with the same byte, or where either side holds a document marker, are skipped, so the first
    difference is exactly at the cut and between two bytes."""
    W, T = x.shape
    if T < 3 or len(donors) == 0:
        raise ValueError(f"twins need windows of 3 bytes or more and donor text, got T={T}, {len(donors)} donors")
    rows, twins = [], []
    while len(twins) < n:
        i, j, cut = int(rng.integers(W)), int(rng.integers(len(donors))), int(rng.integers(2, T))
        if donors[j, cut] == x[i, cut] or max(donors[j, cut], x[i, cut]) >= VOCAB:
            continue  # the first difference must be exactly at the cut, between two bytes (not a document marker)
        rows.append(torch.cat([x[i, :cut], donors[j, cut:]]))
        twins.append(Twin(original=i, cut=cut))
    return torch.stack(rows) if rows else x[:0], twins


@dataclass
class AuditResult:
    """Per expert: twins checked, twins showing a peek, twins that disagreed before the cut already."""

    checked: torch.Tensor
    violations: torch.Tensor
    inconsistent: torch.Tensor

    def flags(self, cfg: AuditConfig) -> dict[int, str]:
        """Expert index → flag: `noncausal` on any violation, else `inconsistent` past the configured share."""
        out = {}
        for e in range(len(self.checked)):
            if self.violations[e] > 0:
                out[e] = NONCAUSAL
            elif self.checked[e] and self.inconsistent[e] > cfg.max_inconsistent_fraction * self.checked[e]:
                out[e] = INCONSISTENT
        return out


def audit_twins(
    rows: torch.Tensor,
    dists: torch.Tensor,
    present: torch.Tensor,
    twins: list[Twin],
    twin_rows: list[int],
    cfg: AuditConfig,
) -> AuditResult:
    """Judge replies to the queried (R, T) `rows`: dists (E, R, T, 256) log-probs and present (E, R), where twin k
    sits in row `twin_rows[k]` and its original in row `twins[k].original`.

    A twin is inconsistent when the predictions differ before position cut-1 (weights changed between the two
    calls, or the expert is not deterministic: no verdict), and a violation when they agree there and, at cut-1,
    the original's prediction favours the original's next byte, or the twin's favours the twin's, by more than the
    tolerance: mass moved toward whichever byte the request shows next."""
    E = dists.shape[0]
    checked, violations, inconsistent = (torch.zeros(E, dtype=torch.long) for _ in range(3))
    for twin, row in zip(twins, twin_rows, strict=True):
        both = present[:, twin.original] & present[:, row]  # (E,)
        if not both.any():
            continue
        a = _floored(dists[:, twin.original, : twin.cut], cfg.floor_nats)  # (E, cut, 256)
        b = _floored(dists[:, row, : twin.cut], cfg.floor_nats)
        before = _nan_as_inf((a[:, :-1] - b[:, :-1]).abs().amax(-1)).amax(-1)  # (E,)
        mine, theirs = int(rows[twin.original, twin.cut]), int(rows[row, twin.cut])
        if max(mine, theirs) >= VOCAB:
            continue  # a document marker at the cut: nobody predicts it as a byte (splice_twins never makes these)
        toward = torch.maximum(a[:, -1, mine] - b[:, -1, mine], b[:, -1, theirs] - a[:, -1, theirs])  # (E,)
        same_prefix = before <= cfg.max_logp_diff
        checked += both
        inconsistent += both & ~same_prefix
        violations += both & same_prefix & (_nan_as_inf(toward) > cfg.max_logp_diff)
    return AuditResult(checked, violations, inconsistent)


def _nan_as_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), torch.full_like(x, math.inf), x)


def _floored(logp: torch.Tensor, floor_nats: float) -> torch.Tensor:
    top = logp.amax(-1, keepdim=True)
    return torch.maximum(logp.double(), top.double() - floor_nats)


def interleave(x: torch.Tensor, twins: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Shuffle windows and twins into one query: → (rows, position of each input row in the query), windows first
    in the input order, then twins."""
    rows = torch.cat([x, twins])
    order = rng.permutation(len(rows))  # query row k holds input row order[k]
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return rows[torch.from_numpy(order)], where


def audited_query(
    query: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    donors: torch.Tensor,
    cfg: AuditConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, AuditResult]:
    """Query the (W, T) windows `x` with spliced twins shuffled in; `query(rows)` → ((E, R, T, 256), (E, R)).

    Returns the replies to `x` alone (dists, present, in x's order) and the audit's result."""
    twins, plan = splice_twins(x, donors, cfg.count(), rng)
    rows, where = interleave(x, twins, rng)
    dists, present = query(rows)
    index = torch.from_numpy(where)
    dists, present = dists[:, index], present[:, index]  # back in input order: windows, then twins
    W = len(x)
    result = audit_twins(torch.cat([x, twins]), dists, present, plan, list(range(W, W + len(plan))), cfg)
    return dists[:, :W], present[:, :W], result
