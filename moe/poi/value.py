"""Coalition value for Proof of Intelligence: the bits per byte a mixture of some experts saves over a reference.

Validators score experts by how much each one adds to a mixture on held-out windows. The input is, per expert e, the
natural-log probability it gave each actual next byte: `logp` (E, W, T) for W windows of T positions; a 2-D (E, N)
is read as one window of N positions. v(S) = bpb(reference) − bpb(mixture of S) over all W·T positions, so v(∅) = 0
and a coalition worse than the reference (uniform bytes, 8 bits/byte, unless given) has v(S) < 0.

Two mixtures, both with prior weights π (uniform unless given):
- "bayes": the causal Bayesian mixture, per window. Each byte is predicted with weights ∝ π_e × likelihood of the bytes
  already seen in that window, so the window's total code length telescopes to −log Σ_e π_e Π_t p_e(x_t).
- "equal": fixed weights π at every position, −Σ_t log Σ_e π_e p_e(x_t).

An expert absent from a window (timeout, malformed reply) is left out of every coalition there; a window where no
member of S is present is coded with the reference and so adds 0 to v(S). All sums are shifted (stable) in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from moe.metrics import LN2, target_log_probs

logger = logging.getLogger(__name__)

UNIFORM_LOGP = -math.log(256.0)
MAX_EXACT_PLAYERS = 20
_MAX_SPREAD = 600.0  # nats; exp(−600) is still a normal float64
_CHUNK_ELEMENTS = 1 << 22  # bound on the (coalitions × units) working set: 32 MiB of float64


@dataclass
class ValueConfig:
    """How coalition values are computed."""

    mixture: str = "bayes"
    """"bayes" (causal posterior weights, reset per window) or "equal" (fixed prior weights)."""
    min_logp: float = -20.0
    """Floor on each log-probability (nats): one zero-probability byte must not make a value infinite."""
    max_logp: float = 1e-4
    """Log-probabilities above this claim p > 1; such input is rejected as malformed."""


def as_windows(logp: torch.Tensor, present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, N) or (E, W, T) log-probs and an optional (E,) / (E, W) presence mask → float64 (E, W, T), bool (E, W).

    Raises ValueError (one line) on a wrong shape. Values in absent windows are ignored (set to 0), so a missing
    reply may be filled with anything, NaN included.
    """
    lp = torch.as_tensor(logp).detach().to(torch.float64)
    if lp.ndim == 2:
        lp = lp.unsqueeze(1)  # (E, 1, N)
    if lp.ndim != 3:
        raise ValueError(f"logp must be (E, N) or (E, W, T), got shape {tuple(lp.shape)}")
    E, W, T = lp.shape
    if present is None:
        pr = torch.ones(E, W, dtype=torch.bool)
    else:
        pr = torch.as_tensor(present).to(torch.bool)
        if pr.ndim == 1:
            pr = pr.unsqueeze(1).expand(E, W)
        if tuple(pr.shape) != (E, W):
            raise ValueError(f"present must be (E,) or (E, W) = {(E, W)}, got shape {tuple(pr.shape)}")
    lp = torch.where(pr.unsqueeze(-1), lp, torch.zeros((), dtype=torch.float64))
    return lp, pr.clone()


def check_logp(lp: torch.Tensor, config: ValueConfig) -> torch.Tensor:
    """Reject impossible log-probabilities (NaN, > 0) with a one-line ValueError; floor the rest at `min_logp`."""
    if torch.isnan(lp).any():
        e = int(torch.isnan(lp).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"logp of expert {e} has NaN; screen replies (moe.poi.cheats.screen_replies) first")
    if (lp > config.max_logp).any():
        e = int((lp > config.max_logp).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"logp of expert {e} exceeds 0 (probability > 1); replies must be normalized")
    return lp.clamp(min=config.min_logp)


def expert_bpb(logp: torch.Tensor, present: torch.Tensor | None = None, min_logp: float = -20.0) -> torch.Tensor:
    """(E,) each expert's own bits per byte over the windows where it answered; NaN for an expert that never did."""
    lp, pr = as_windows(logp, present)
    lp = lp.nan_to_num(nan=min_logp).clamp(min=min_logp)
    T = lp.shape[-1]
    n = (pr.sum(1) * T).to(torch.float64)  # (E,) positions answered
    nats = -(lp * pr.unsqueeze(-1)).sum((1, 2))  # (E,)
    return torch.where(n > 0, nats / (n.clamp(min=1) * LN2), torch.full_like(nats, float("nan")))


def gather_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Experts' (E, W, T, 256) raw outputs and (W, T) next bytes → (E, W, T) log p_e(target).

    Outputs are re-normalized with log_softmax here, so an expert cannot gain by returning unnormalized scores
    (−inf logits are allowed: zero probability). A window with NaN, +inf or an all −inf row is malformed: its
    log-probs are NaN, for moe.poi.cheats.screen_replies to mark absent and flag (the value function rejects NaN).
    """
    x = torch.as_tensor(logits).detach().to(torch.float64)
    tg = torch.as_tensor(targets).long()
    if x.ndim != 4 or x.shape[-1] != 256 or tuple(x.shape[1:3]) != tuple(tg.shape):
        raise ValueError(
            f"logits must be (E, W, T, 256) matching targets (W, T), got {tuple(x.shape)}, {tuple(tg.shape)}"
        )
    if tg.numel() and (tg.min() < 0 or tg.max() > 255):
        raise ValueError("targets must be bytes in [0, 255]")
    lq = torch.log_softmax(x, dim=-1)  # (E, W, T, 256); NaN rows wherever the input was malformed
    bad = torch.isnan(lq).flatten(2).any(-1)  # (E, W)
    lp, _ = target_log_probs(lq, tg)  # (E, W, T)
    return torch.where(bad.unsqueeze(-1), torch.full((), float("nan"), dtype=torch.float64), lp)


def _column_shift(x: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """(E, u) → ((u,) max finite term per column, widest span of finite terms in nats), or None if that span exceeds
    _MAX_SPREAD (probability space could underflow; the log-space path is used instead)."""
    if x.shape[0] == 0:
        return None
    fin = torch.isfinite(x)
    any_fin = fin.any(0)  # (u,)
    hi = torch.where(fin, x, float("-inf")).amax(0)  # (u,)
    lo = torch.where(fin, x, float("inf")).amin(0)  # (u,)
    spread = float(torch.where(any_fin, hi - lo, 0.0).max()) if x.numel() else 0.0
    if spread > _MAX_SPREAD:
        return None
    return torch.where(any_fin, hi, 0.0), spread


def _subset_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """(E, u) terms → (2^E, u) logsumexp over the members of every coalition (row = bitmask; row 0 is −inf).

    The doubling recursion: adding player i to every coalition of players < i costs one logaddexp each.
    """
    E, u = x.shape
    out = torch.full((1, u), float("-inf"), dtype=torch.float64)  # (1, u)
    for i in range(E):  # after player i, row index = bitmask over players 0..i
        out = torch.cat([out, torch.logaddexp(out, x[i])])  # (2^(i+1), u)
    return out


def _subset_sums(p: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(E, u) → (2^E, u) sums over the members of every coalition, the same doubling recursion with additions,
    written in place into `out` (reused across chunks: fresh 32 MiB buffers cost more in page faults than the sums)."""
    E, u = p.shape
    out = torch.empty(1 << E, u, dtype=torch.float64) if out is None else out[:, :u]
    out[0] = 0.0
    for i in range(E):
        torch.add(out[: 1 << i], p[i], out=out[1 << i : 2 << i])  # rows with bit i = rows without it + p_i
    return out


def _sum_log(s: torch.Tensor, span: float, has_zeros: bool) -> torch.Tensor:
    """(..., u) positive sums (0 = no member present, counted as log 1) → (...) Σ log s, with 1 log per g entries.

    Each entry lies in [e^−span, 2^20], so products of g ≤ 700 / span entries cannot over- or underflow float64;
    multiplying before the log cuts the number of logs, the costly part, by g. `has_zeros` False skips the fill.
    """
    if has_zeros:
        s = s.masked_fill(s == 0, 1.0)
    u = s.shape[-1]
    g = int(max(1, min(32, 700 // max(span, 15.0))))
    full = u - u % g
    out = s[..., :full].unflatten(-1, (full // g, g)).prod(-1).log().sum(-1)  # (...)
    return out + s[..., full:].log().sum(-1)


class MixtureGame:
    """The coalition game v(S) of a set of experts' log-probs; players are the E experts, coalitions are bitmasks.

    `value(S)` takes a bitmask or an iterable of expert indices and is memoized; `all_values()` gives every one of
    the 2^E values at once (a subset recursion, 2^E − 1 vector additions over the data, chunked to bound memory);
    `prefix_values(perms)` gives v of every prefix of a batch of permutations, for sampled Shapley. Sums run in
    probability space after a per-unit shift when the terms span ≤ 600 nats, in log space otherwise.
    Raises ValueError on malformed input (see `check_logp`).
    """

    def __init__(
        self,
        logp: torch.Tensor,
        present: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
        reference_logp: torch.Tensor | None = None,
        config: ValueConfig | None = None,
    ):
        self.config = cfg = config or ValueConfig()
        if cfg.mixture not in ("bayes", "equal"):
            raise ValueError(f"mixture must be 'bayes' or 'equal', got {cfg.mixture!r}")
        lp, pr = as_windows(logp, present)
        lp = check_logp(lp, cfg)
        E, W, T = lp.shape
        self.n_players = E
        self.n_positions = W * T
        if prior is None:
            la = torch.zeros(E, dtype=torch.float64)  # (E,) log π up to a constant, which cancels in num − den
        else:
            pi = torch.as_tensor(prior, dtype=torch.float64)
            if tuple(pi.shape) != (E,) or not torch.isfinite(pi).all() or (pi < 0).any() or (E and pi.sum() <= 0):
                raise ValueError(f"prior must be {E} finite non-negative weights, not all zero")
            la = pi.log()  # (E,); a zero prior leaves that expert out of every mixture
        if reference_logp is None:
            ref = torch.full((W, T), UNIFORM_LOGP, dtype=torch.float64)
        else:
            ref = torch.as_tensor(reference_logp, dtype=torch.float64)
            if ref.numel() != W * T:
                raise ValueError(f"reference_logp must hold W·T = {W * T} log-probs, got shape {tuple(ref.shape)}")
            ref = ref.reshape(W, T)
            if not torch.isfinite(ref).all() or (ref > cfg.max_logp).any():
                raise ValueError("reference_logp must be finite log-probabilities ≤ 0")
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
        # A unit is one term of the total log-likelihood: a window ("bayes") or a position ("equal"); K per window.
        if cfg.mixture == "bayes":
            num = torch.where(pr, la[:, None] + lp.sum(-1), neg_inf)  # (E, W) log π_e Π_t p_e(x_t)
            self._ref, self._K = ref.sum(-1), 1  # (W,)
        else:
            num = torch.where(pr.unsqueeze(-1), la[:, None, None] + lp, neg_inf).reshape(E, W * T)  # (E, W*T)
            self._ref, self._K = ref.reshape(W * T), T  # (W*T,)
        self._num = num.contiguous()  # (E, U)
        self._den = torch.where(pr, la[:, None], neg_inf)  # (E, W) log π_e of present members, per window
        self._cache: dict[int, float] = {}
        self._all: torch.Tensor | None = None

    # -- helpers -------------------------------------------------------------------------------------------------

    def _num_gain(self, num: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(..., u) log Σ_S π p over units → (...) Σ (num − ref) in nats over units where some member is present."""
        return (num - ref).nan_to_num_(neginf=0.0).sum(-1)  # −inf only where no member is present

    def _shift_gain(self, valid: torch.Tensor, shift: torch.Tensor, u0: int) -> torch.Tensor:
        """Σ (shift − ref) over units [u0, u0 + u) in windows where a coalition is present: (..., W) → (...)."""
        u = shift.shape[0]
        win = torch.arange(u0, u0 + u) // self._K  # (u,) window of each unit
        per_window = torch.zeros(valid.shape[-1], dtype=torch.float64)
        per_window.index_add_(0, win, shift - self._ref[u0 : u0 + u])  # (W,)
        return valid @ per_window

    def _den_cost(self, den: torch.Tensor) -> torch.Tensor:
        """(..., W) log Σ_S π per window → (...) the prior normalization, K units per window, in nats."""
        return self._K * torch.where(torch.isfinite(den), den, torch.zeros((), dtype=torch.float64)).sum(-1)

    def _to_bits(self, nats: torch.Tensor) -> torch.Tensor:
        return nats / (self.n_positions * LN2)

    @staticmethod
    def to_mask(coalition: int | Iterable[int]) -> int:
        """A bitmask from a bitmask or an iterable of player indices (frozenset, list)."""
        if isinstance(coalition, int):
            return coalition
        m = 0
        for i in coalition:
            m |= 1 << int(i)
        return m

    # -- public --------------------------------------------------------------------------------------------------

    def value(self, coalition: int | Iterable[int]) -> float:
        """v(S) in bits per byte saved over the reference; memoized by bitmask."""
        m = self.to_mask(coalition)
        if m >> self.n_players:
            raise ValueError(f"coalition {m:#x} names players beyond the {self.n_players} experts")
        if m not in self._cache:
            if self._all is not None:
                self._cache[m] = float(self._all[m])
            elif m == 0:
                self._cache[m] = 0.0
            else:
                idx = [i for i in range(self.n_players) if m >> i & 1]
                num = torch.logsumexp(self._num[idx], 0)  # (U,)
                den = torch.logsumexp(self._den[idx], 0)  # (W,)
                self._cache[m] = float(self._to_bits(self._num_gain(num, self._ref) - self._den_cost(den)))
        return self._cache[m]

    def all_values(self) -> torch.Tensor:
        """(2^E,) v of every coalition, indexed by bitmask (bit i = expert i). Raises for E > MAX_EXACT_PLAYERS."""
        if self._all is not None:
            return self._all
        E = self.n_players
        if E > MAX_EXACT_PLAYERS:
            raise ValueError(f"{E} experts means 2^{E} coalitions; use sampled Shapley above {MAX_EXACT_PLAYERS}")
        C, U = 1 << E, self._num.shape[1]
        den = _subset_logsumexp(self._den)  # (C, W)
        valid = torch.isfinite(den).to(torch.float64)  # (C, W) some member present in the window
        out = -self._den_cost(den)  # (C,)
        step = max(1, _CHUNK_ELEMENTS // C)
        buf = None
        for u0 in range(0, U, step):
            x = self._num[:, u0 : u0 + step]  # (E, u)
            shifted = _column_shift(x)
            if shifted is None:  # terms too far apart for probability space
                out += self._num_gain(_subset_logsumexp(x), self._ref[u0 : u0 + step])  # (C, u) → (C,)
            else:
                shift, span = shifted
                buf = torch.empty(C, x.shape[1], dtype=torch.float64) if buf is None else buf
                s = _subset_sums(torch.exp(x - shift), buf)  # (C, u) Σ_S π p / e^shift
                s[0] = 1.0  # the empty coalition: log 1 = 0, its value is set below
                has_zeros = bool(torch.isinf(x).any())  # an absent expert: some coalitions have no member
                out += _sum_log(s, span, has_zeros) + self._shift_gain(valid, shift, u0)
        out = self._to_bits(out)
        out[0] = 0.0
        self._all = out
        return out

    def prefix_values(self, perms: torch.Tensor) -> torch.Tensor:
        """(P, E) permutations → (P, E+1) v of each prefix (column 0 is v(∅) = 0, column E is v(all))."""
        perms = torch.as_tensor(perms).long()
        P, E = perms.shape
        out = torch.zeros(P, E + 1, dtype=torch.float64)
        den = torch.logcumsumexp(self._den[perms], dim=1)  # (P, E, W) log Σ π over each prefix
        valid = torch.isfinite(den).to(torch.float64)  # (P, E, W)
        out[:, 1:] -= self._den_cost(den)
        U = self._num.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(1, P * E))
        for u0 in range(0, U, step):
            x = self._num[:, u0 : u0 + step]  # (E, u)
            shifted = _column_shift(x)
            if shifted is None:
                num = torch.logcumsumexp(x[perms], dim=1)  # (P, E, u) log Σ over each prefix
                out[:, 1:] += self._num_gain(num, self._ref[u0 : u0 + step])
            else:
                shift, span = shifted
                px = torch.exp(x - shift)  # (E, u)
                s = torch.empty(P, E, x.shape[1], dtype=torch.float64)  # (P, E, u) prefix sums
                s[:, 0] = px[perms[:, 0]]
                for k in range(1, E):  # a loop of adds: torch's cumsum over a strided axis is far slower
                    torch.add(s[:, k - 1], px[perms[:, k]], out=s[:, k])
                out[:, 1:] += _sum_log(s, span, bool(torch.isinf(x).any())) + self._shift_gain(valid, shift, u0)
        return self._to_bits(out)


def coalition_values(
    logp: torch.Tensor,
    present: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    reference_logp: torch.Tensor | None = None,
    config: ValueConfig | None = None,
) -> torch.Tensor:
    """(2^E,) v of every coalition by bitmask; shorthand for MixtureGame(...).all_values()."""
    return MixtureGame(logp, present, prior, reference_logp, config).all_values()


def mixture_bpb(
    logp: torch.Tensor,
    coalition: int | Iterable[int] | None = None,
    present: torch.Tensor | None = None,
    config: ValueConfig | None = None,
) -> float:
    """Bits per byte of the mixture of `coalition` (all experts if None) against the uniform byte reference."""
    game = MixtureGame(logp, present, config=config)
    m = (1 << game.n_players) - 1 if coalition is None else coalition
    return -UNIFORM_LOGP / LN2 - game.value(m)
