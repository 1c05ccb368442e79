"""Tests for moe/poi/causality.py: spliced twins catch peek-ahead experts, and leave honest ones alone.

The attack first: an expert that reads the byte it predicts from the request beats every honest expert under the
epoch's scoring; then the audit that catches it, also when it peeks on only 5% of positions, also through q8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.metrics import byte_log_probs
from moe.model.tokenizer import BOS, EOS
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.wire import decode_logp, encode_logp
from moe.poi.causality import (
    INCONSISTENT,
    NONCAUSAL,
    AuditConfig,
    Twin,
    audit_twins,
    interleave,
    splice_twins,
    twins_needed,
)
from moe.poi.cheats import CheatConfig
from moe.poi.epoch import score_experts
from moe.roles.adversary import PeekLM

MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
T = 32


def text_windows(n: int, seed: int) -> torch.Tensor:
    """(n, T) windows of English-like bytes (a repeated sentence at random offsets: real structure to predict)."""
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog; " * 40, dtype=np.uint8).astype(np.int64)
    offsets = np.random.default_rng(seed).integers(0, len(text) - T, n)
    return torch.from_numpy(np.stack([text[o : o + T] for o in offsets]))


class BigramLM(torch.nn.Module):
    """An honest causal expert that knows the text: next-byte counts given the current byte (smoothed)."""

    def __init__(self):
        super().__init__()
        text = text_windows(64, seed=99).flatten()
        counts = torch.ones(256, 256)
        counts.index_put_((text[:-1], text[1:]), torch.ones(len(text) - 1), accumulate=True)
        self.table = counts.log() - counts.sum(-1, keepdim=True).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]


def honest_lm(seed: int = 0) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(MODEL).eval()


def query(models, rows: torch.Tensor, batch_size: int = 8, wire: str | None = None) -> torch.Tensor:
    """(E, R, T, 256) log-probs of each model over `rows` in ordinary batches, optionally through a wire format."""
    out = []
    for m in models:
        parts = []
        for b0 in range(0, len(rows), batch_size):
            with torch.no_grad():
                logp = byte_log_probs(m(rows[b0 : b0 + batch_size]).float())
            if wire is not None:
                logp = decode_logp(encode_logp(logp, wire), wire, tuple(logp.shape[:2]))
            parts.append(logp)
        out.append(torch.cat(parts))
    return torch.stack(out)


def run_audit(models, n_twins: int, seed: int = 0, wire: str | None = None, cfg: AuditConfig | None = None):
    rng = np.random.default_rng(seed)
    x, donors = text_windows(16, seed), text_windows(64, seed + 1)
    twins, plan = splice_twins(x, donors, n_twins, rng)
    rows, where = interleave(x, twins, rng)
    dists = query(models, rows, wire=wire)[:, torch.from_numpy(where)]  # back in input order
    plan_rows = [len(x) + k for k in range(len(plan))]
    present = torch.ones(len(models), len(x) + len(plan), dtype=torch.bool)
    return audit_twins(torch.cat([x, twins]), dists, present, plan, plan_rows, cfg or AuditConfig())


def test_the_attack_a_peeker_beats_honest_experts_without_an_audit():
    """Without an audit, an expert that puts its mass on the next byte of the request takes most of the weight."""
    x = text_windows(32, seed=3)
    y = torch.cat([x[:, 1:], x[:, :1]], 1)  # the scored targets are the next bytes (the last is a stand-in)
    dists = query([BigramLM(), PeekLM(fraction=1.0)], x)
    hotkeys = ["a" * 64, "b" * 64]
    s = score_experts(hotkeys, [(1.0, 0), (2.0, 1)], dists, y, torch.ones(2, 32, dtype=torch.bool), CheatConfig())
    assert s.bpb[hotkeys[1]] < 1.0 < s.bpb[hotkeys[0]]
    assert s.contribution[hotkeys[1]] > 0.5 and not s.flags


def test_twins_share_the_prefix_and_differ_exactly_at_the_cut():
    """Each twin equals its original before the cut, differs at the cut, and continues with donor text."""
    x, donors = text_windows(8, 0), text_windows(8, 1)
    twins, plan = splice_twins(x, donors, 50, np.random.default_rng(0))
    assert twins.shape == (50, T)
    for row, t in zip(twins, plan, strict=True):
        assert 2 <= t.cut < T
        assert torch.equal(row[: t.cut], x[t.original, : t.cut]) and row[t.cut] != x[t.original, t.cut]
    rows, where = interleave(x, twins, np.random.default_rng(1))
    assert torch.equal(rows[torch.from_numpy(where)], torch.cat([x, twins]))


def test_twins_needed_meets_the_confidence():
    """135 twins catch a 5% peeker with probability 0.999 (134 would not); a full peeker needs one."""
    n = twins_needed(0.05, 0.999)
    assert n == 135 and 1 - 0.95**n >= 0.999 > 1 - 0.95 ** (n - 1)
    assert twins_needed(1.0, 0.999) == 1


@pytest.mark.parametrize("wire", [None, "q8", "fp16"])
def test_an_honest_expert_passes_every_twin(wire):
    """A deterministic causal model answers each shared prefix the same in different batches, through q8 too."""
    result = run_audit([honest_lm(0), honest_lm(1)], n_twins=60, wire=wire)
    assert result.checked.tolist() == [60, 60]
    assert result.violations.tolist() == [0, 0] and result.inconsistent.tolist() == [0, 0]
    assert result.flags(AuditConfig()) == {}


@pytest.mark.parametrize("wire", [None, "q8"])
def test_a_full_peeker_is_flagged_noncausal(wire):
    """A peeker on every position fails (almost) every twin and is flagged; the honest expert beside it is not."""
    result = run_audit([honest_lm(), PeekLM(fraction=1.0)], n_twins=20, wire=wire)
    assert result.violations[0] == 0 and result.violations[1] == 20
    assert result.flags(AuditConfig()) == {1: NONCAUSAL}


def test_a_five_percent_peeker_is_caught_by_the_sized_audit():
    """Over 20 epochs with the sized audit (135 twins), a peeker on 5% of positions is caught every time (expected
    misses at 0.999: 0.02), while an audit of 20 twins misses it often."""
    peeker = PeekLM(fraction=0.05)
    caught = [run_audit([peeker], twins_needed(0.05, 0.999), seed=s).violations[0] > 0 for s in range(20)]
    small = [run_audit([peeker], 20, seed=s).violations[0] > 0 for s in range(20)]
    assert all(caught)
    assert sum(small) < 20


def test_an_expert_whose_answers_change_is_inconsistent_not_noncausal():
    """Different weights for the twin than for its original make the shared prefix disagree: no peek verdict, but
    the expert is flagged inconsistent (it cannot be audited)."""
    rng = np.random.default_rng(0)
    x, donors = text_windows(16, 0), text_windows(64, 1)
    twins, plan = splice_twins(x, donors, 30, rng)
    retrained = BigramLM()
    retrained.table = torch.log_softmax(retrained.table + 0.3 * torch.randn(256, 256), -1)  # a few steps later
    dists = torch.cat([query([BigramLM()], x), query([retrained], twins)], 1)
    present = torch.ones(1, len(x) + len(plan), dtype=torch.bool)
    rows = torch.cat([x, twins])
    result = audit_twins(rows, dists, present, plan, [len(x) + k for k in range(len(plan))], AuditConfig())
    assert result.violations[0] == 0 and result.inconsistent[0] == 30
    assert result.flags(AuditConfig()) == {0: INCONSISTENT}


def test_missing_replies_are_not_checked():
    """A twin whose original or twin row is missing for an expert is skipped for that expert only."""
    x, donors = text_windows(4, 0), text_windows(4, 1)
    twins, plan = splice_twins(x, donors, 6, np.random.default_rng(2))
    rows = torch.cat([x, twins])
    dists = query([honest_lm(), PeekLM(fraction=1.0)], rows)
    present = torch.ones(2, 10, dtype=torch.bool)
    present[1, :4] = False  # the peeker never answered the originals
    result = audit_twins(rows, dists, present, plan, list(range(4, 10)), AuditConfig())
    assert result.checked.tolist() == [6, 0] and result.flags(AuditConfig()) == {}


@pytest.mark.parametrize(
    "field,value", [("min_peek_fraction", 0.0), ("confidence", 1.0), ("max_logp_diff", 0.0), ("floor_nats", -1.0)]
)
def test_audit_config_range_checks_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AuditConfig(**{field: value})


def test_document_markers_are_never_the_cut_and_never_crash_the_judge():
    """Windows of the validation split hold EOS/BOS markers (ids 256, 257): twins never cut at one, and a twin that
    does (built by hand) is skipped rather than indexing past the 256 bytes of a reply."""
    x, donors = text_windows(8, 0), text_windows(8, 1)
    x[:, ::3], donors[:, 1::3] = EOS, BOS  # markers everywhere, on both sides
    twins, plan = splice_twins(x, donors, 40, np.random.default_rng(0))
    assert all(x[t.original, t.cut] < 256 and row[t.cut] < 256 for row, t in zip(twins, plan, strict=True))
    rows = torch.cat([x, twins])
    dists = query([PeekLM(fraction=1.0)], rows.clamp(max=255))
    marked = Twin(original=0, cut=3)  # x[0, 3] is EOS
    result = audit_twins(
        rows, dists, torch.ones(1, len(rows), dtype=torch.bool), [*plan, marked], [*range(8, 48), 9], AuditConfig()
    )
    assert result.checked[0] == 40 and result.violations[0] == 40
