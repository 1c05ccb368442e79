"""Every model of a saved run scored on one token stream in a single pass, with the mixture's view of its experts.

Per window batch: each single model's log-probs (experts, seed, baselines, students) and the offline mixture's go
through `moe.metrics.WindowScores`, the accumulator every score of a run goes through, so on a subnet's validation
windows the numbers are the run's own. Besides bits per byte it reports, for each expert:
- `contribution`: its share of the positive Shapley credit in the validators' game (moe.poi: causal Bayesian
  mixture per window, uniform bytes as the reference), played on this text with the replies the validators would get
  (the run's wire format); `shapley_bits` is the credit itself, in bits per byte saved;
- `gate_share`: the gate's softmax weight on it, averaged over the scored bytes (0 for experts the router did not
  route to), i.e. how much of this text the gate thinks is the expert's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from moe.evaluation.offline_mixture import OfflineMixture, through_wire
from moe.evaluation.saved_run import SavedRun
from moe.evaluation.text_windows import text_windows
from moe.metrics import WindowScores, byte_log_probs, target_log_probs
from moe.poi.scoring import shapley_weights
from moe.poi.shapley import ShapleyConfig, shapley
from moe.poi.value import UNIFORM_LOGP, MixtureGame


@dataclass
class ExpertTextScore:
    subnet: str
    bpb: float
    contribution: float
    """Share of the positive Shapley credit (the experts' shares sum to 1 unless nobody helps)."""
    shapley_bits: float
    """Shapley value in bits per byte saved over uniform bytes."""
    gate_share: float
    """Mean gate softmax weight over the scored bytes."""


@dataclass
class TextScores:
    """A run's models on one text; bits per byte throughout."""

    mixture_bpb: float
    worst_window_bpb: float
    """The mixture's highest single-window score."""
    seed_bpb: float
    experts: dict[str, ExpertTextScore]
    """By hotkey."""
    baselines: dict[str, float] = field(default_factory=dict)
    students: dict[str, float] = field(default_factory=dict)
    scored_bytes: int = 0
    windows: int = 0

    @property
    def best_single(self) -> str:
        """Hotkey of the expert with the lowest bits per byte on this text."""
        return min(self.experts, key=lambda hk: self.experts[hk].bpb)

    @property
    def best_single_bpb(self) -> float:
        return self.experts[self.best_single].bpb

    def to_json(self) -> dict:
        """The `hivemoe eval --json` object."""
        return {
            "mixture_bpb": self.mixture_bpb,
            "best_single_bpb": self.best_single_bpb,
            "worst_window_bpb": self.worst_window_bpb,
            "seed_bpb": self.seed_bpb,
            "baselines": dict(self.baselines),
            "experts": {
                hk: {"subnet": e.subnet, "bpb": e.bpb, "contribution": e.contribution, "gate_share": e.gate_share}
                for hk, e in self.experts.items()
            },
            "students": {kind: {"bpb": bpb} for kind, bpb in self.students.items()},
        }


def _contributions(target_logp: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> tuple[list[float], list[float]]:
    """(E, W, T) each expert's log-prob of the (W, T) targets -> (shares, Shapley bits) in the validators' game."""
    ref = torch.where(targets < 256, UNIFORM_LOGP, 0.0).double()  # the reference scores the same bytes
    est = shapley(MixtureGame(target_logp, reference_logp=ref), ShapleyConfig(seed=seed))
    E = target_logp.shape[0]
    shares = shapley_weights(list(range(E)), est.values, est.stderr)
    return [shares[i] for i in range(E)], [float(v) for v in est.values]


@torch.no_grad()
def score_text(
    run: SavedRun,
    tokens: np.ndarray,
    max_windows: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> TextScores:
    """Score every model of `run` on `tokens` in windows of the run's seq_len and batch size (`max_windows` spread
    evenly, as the run's validation does; None scores every byte). `on_batch(n_windows)` after each batch.
    Raises EvalTextError for a stream too short to score."""
    rc, t = run.router, run.train
    mixture = OfflineMixture(
        run.gate, run.entries, {e.hotkey: e.model for e in run.experts}, rc, run.seed if run.generalist else None
    )
    singles = {"seed": run.seed}
    singles |= {f"baseline:{k}": m for k, m in run.baselines.items()}
    singles |= {f"student:{k}": m for k, m in run.students.items()}
    scores = {name: WindowScores() for name in singles}
    expert_scores = [WindowScores() for _ in run.experts]
    mix_scores = WindowScores()
    slot_of = {e.key: j for j, e in enumerate(run.entries)}
    gate_mass = torch.zeros(len(run.entries), dtype=torch.float64)
    wired: list[list[torch.Tensor]] = [[] for _ in run.experts]  # per expert, (B, T) log-probs of each target
    ys: list[torch.Tensor] = []
    windows = 0
    for x, y in text_windows(tokens, t.seq_len, t.batch_size, max_windows):
        for name, model in singles.items():
            scores[name].add(byte_log_probs(model(x)), y)
        for i, e in enumerate(run.experts):
            logp = byte_log_probs(e.model(x))  # (B, T, 256)
            expert_scores[i].add(logp, y)
            wire = through_wire(logp, rc.client.wire_format, rc.client.topk)
            wired[i].append(target_log_probs(wire, y)[0])
        out = mixture.mix(x)
        mix_scores.add(out.logp, y)
        is_byte = (y < 256).double().unsqueeze(-1)  # (B, T, 1)
        gate_mass += (torch.softmax(out.gate_logits.double(), -1) * is_byte).sum((0, 1))  # (J,)
        ys.append(y)
        windows += x.shape[0]
        if on_batch is not None:
            on_batch(x.shape[0])
    target_logp = torch.stack([torch.cat(w) for w in wired])  # (E, W, T)
    shares, bits = _contributions(target_logp, torch.cat(ys))
    n = max(1, mix_scores.count)
    experts = {
        e.hotkey: ExpertTextScore(
            subnet=e.subnet,
            bpb=expert_scores[i].bpb,
            contribution=shares[i],
            shapley_bits=bits[i],
            gate_share=float(gate_mass[slot_of[e.hotkey]] / n) if e.hotkey in slot_of else 0.0,
        )
        for i, e in enumerate(run.experts)
    }
    return TextScores(
        mixture_bpb=mix_scores.bpb,
        worst_window_bpb=mix_scores.worst_window_bpb,
        seed_bpb=scores["seed"].bpb,
        experts=experts,
        baselines={k: scores[f"baseline:{k}"].bpb for k in run.baselines},
        students={k: scores[f"student:{k}"].bpb for k in run.students},
        scored_bytes=mix_scores.count,
        windows=windows,
    )
