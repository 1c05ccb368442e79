"""Catching a memoriser: an expert far better on held-out text a miner can rebuild than on held-out text it cannot.

Why it works. The val and route splits are both held out from training and cut from the same documents by a public
hash, so to an honest expert they are the same kind of unseen text: within a domain its bits per byte on windows from
one differ from the other only by noise. A miner that stored the val split (what `public` evaluation asks for, and free
to build: moe.roles.memorizer) predicts val-origin windows far better than any honest model and route-origin ones no
better than whatever it falls back on. The salted pool mixes blocks of both; the validator knows each window's origin
(moe.poi.eval_source.salted_pool_origin) and the miner does not, so a large gap between the two means exposes the
lookup without the validator knowing how it was built. On the default run the val memoriser scores about 1.3 bits a
byte on val windows and 5.5 on route ones (route shares many short contexts with val), a gap of about 4.3; honest
experts' gaps stay within ±1 (`benchmarks/memorisation_gap.py`).

What it does not catch.
- A memoriser of every public held-out byte, val *and* route: it is as good on one kind as on the other, so there is
  no gap. The salt only hides which public bytes are asked, never the bytes; text no miner holds
  (`validator.data=PATH`, the `private` source) is the one defence against that.
- A lookup laid over a good honest model, whose edge on val stays below `max_gap_bits`: the threshold caps what
  memorising can buy, it does not make it zero. (An even mixture of the val memoriser and the default run's seed
  shows a gap of 1.0 to 2.4, mostly unflagged, while beating the seed by about 1.3 bits a byte on val windows.)
- The `public` source (every window is public: nothing to compare against) and the `private` one (none is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moe.config_checks import require_at_least, require_positive
from moe.metrics import LN2, target_log_probs
from moe.poi.value import UNIFORM_LOGP

MEMORISED = "memorised"
UNIFORM_BITS = -UNIFORM_LOGP / LN2
"""8 bits a byte: what guessing uniformly costs."""


@dataclass
class MemorisationConfig:
    """When an expert's edge on public text counts as memorisation."""

    min_windows: int = 4
    """Answered windows of each kind (public, not public) below which an expert is never flagged: too few to judge."""
    max_gap_bits: float = 2.0
    """Largest allowed advantage (bits per byte, compared within each domain) on public windows over the others. On
    the default run's 32 windows of 64 bytes: honest experts and seed 0.0 ± 0.25, at most +0.7 in 500 epoch-draws; a
    val memoriser +4.3 ± 0.4, at least +3.2 (benchmarks/memorisation_gap.py --salts 10 --draws 10)."""
    min_logp: float = -20.0
    """Floor on each log-probability (nats), as in scoring: a zero-probability byte must not make a window infinite."""

    def __post_init__(self):
        require_at_least(self, 1, ["min_windows"])
        require_positive(self, ["max_gap_bits"])
        if not self.min_logp < 0:
            raise ValueError(f"min_logp must be negative, got {self.min_logp}")


_DEFAULTS = MemorisationConfig()


def window_bpb(
    dists: torch.Tensor, y: torch.Tensor, present: torch.Tensor, min_logp: float = _DEFAULTS.min_logp
) -> torch.Tensor:
    """(E, W) each expert's bits per byte on each window, from dists (E, W, T, 256) log-probs, y (W, T) targets and
    present (E, W). Special-token targets (EOS) are not bytes and are skipped; each log-prob is floored at `min_logp`.
    NaN where the expert is absent, where its reply held NaN (malformed), or where a window has no byte to score."""
    picked, mask = target_log_probs(dists, y)  # (E, W, T), specials 0 and unmasked
    bits = -picked.double().clamp(min=min_logp).sum(-1) / LN2  # (E, W)
    n = mask.sum(-1)  # (E, W) scored bytes
    ok = torch.as_tensor(present, dtype=torch.bool) & (n > 0)
    return torch.where(ok, bits / n.clamp(min=1), torch.full_like(bits, float("nan")))


def memorisation_gap(
    bpb: torch.Tensor,
    public: torch.Tensor,
    min_windows: int = _DEFAULTS.min_windows,
    groups: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """(E,) mean bits per byte on the windows that are not `public` minus that on the `public` ones, over the windows
    each expert answered (finite bpb). With `groups` (W,) (each window's domain), the difference is taken within each
    domain and averaged, weighted by the windows compared: a specialist's bpb differs by several bits between domains,
    so a chance excess of its own domain among the public windows would otherwise read as a gap. Only domains where
    the expert answered both kinds count; NaN for an expert left with fewer than `min_windows` of either kind.
    A window counts at most 8 bits a byte (uniform guessing): past that it says only that the text is outside the
    expert's domain, and a specialist's 12-bit windows elsewhere would add noise, not evidence."""
    bpb = torch.as_tensor(bpb, dtype=torch.float64).clamp(max=UNIFORM_BITS)  # NaN stays NaN
    pub = torch.as_tensor(public, dtype=torch.bool).expand_as(bpb)  # (E, W)
    grp = torch.zeros(bpb.shape[1], dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    answered = torch.isfinite(bpb)  # (E, W)
    E = bpb.shape[0]
    weighted, weight = torch.zeros(E, dtype=torch.float64), torch.zeros(E, dtype=torch.float64)
    counts = torch.zeros(2, E, dtype=torch.long)  # windows of each kind in the domains compared
    for g in grp.unique().tolist():
        means, ns = [], []
        for kind in (pub, ~pub):
            m = answered & kind & (grp == g)  # (E, W)
            n = m.sum(1)  # (E,)
            means.append(torch.where(m, bpb, 0.0).sum(1) / n.clamp(min=1))
            ns.append(n)
        both = (ns[0] > 0) & (ns[1] > 0)  # (E,)
        w = torch.where(both, ns[0] + ns[1], 0).double()
        weighted += w * torch.where(both, means[1] - means[0], 0.0)
        weight += w
        counts += torch.stack(ns) * both
    enough = (counts >= min_windows).all(0) & (weight > 0)
    return torch.where(enough, weighted / weight.clamp(min=1), float("nan"))


def flag_memorised(
    bpb: torch.Tensor,
    public: torch.Tensor,
    min_windows: int = _DEFAULTS.min_windows,
    max_gap_bits: float = _DEFAULTS.max_gap_bits,
    groups: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """(E,) bool: True for experts whose mean bpb on `public` windows (W,) is lower than on the others by more than
    `max_gap_bits` (within each domain of `groups`, if given: see `memorisation_gap`), counting only windows they
    answered, and only with at least `min_windows` of each kind (an expert short of either is never flagged)."""
    return memorisation_gap(bpb, public, min_windows, groups) > max_gap_bits  # NaN compares False


def public_windows(
    origins: Mapping[str, np.ndarray], drawn: Sequence[tuple[str, int]], length: int, public_split: int = 0
) -> torch.Tensor:
    """(W,) bool: True for each drawn (subnet, offset) window of `length` tokens (seq_len + 1, as passed to
    `draw_windows`) most of whose tokens came from `public_split` (0 = val) of that subnet's pool, per `origins`
    (moe.poi.eval_source.salted_pools_origin). A window straddling two runs goes with its majority."""
    return torch.tensor(
        [bool(2 * np.count_nonzero(origins[s][o : o + length] == public_split) > length) for s, o in drawn],
        dtype=torch.bool,
    )
