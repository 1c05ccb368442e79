"""Tests for moe/corpus/batches.py: training windows, eval coverage, blends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.corpus.batches import IGNORE, BlendedBatches, ByteBatches, blended_batches_at_step, iter_eval_windows


def test_windows_shapes_and_shift():
    """Batches are (B, T) int64 and y is x shifted by one position of the stream."""
    tok = np.arange(5000, dtype=np.int64)  # a window's values reveal its offset
    x, y = ByteBatches(tok, seq_len=32, batch_size=8, seed=0).sample()
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(32))
    assert int(x.min()) >= 0 and int(y.max()) <= 4999


def test_sampler_is_deterministic_per_seed():
    """The same seed gives the same batches, another seed different ones, and a saved state resumes exactly."""
    tok = np.arange(10_000, dtype=np.int64)
    a, b, c = (ByteBatches(tok, 16, 4, seed=s) for s in (1, 1, 2))
    xa, xb, xc = a.sample()[0], b.sample()[0], c.sample()[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    state = a.state_dict()
    want = [a.sample()[0] for _ in range(3)]
    b.load_state_dict(state)
    assert all(torch.equal(w, b.sample()[0]) for w in want)


@pytest.mark.parametrize("n, T", [(1001, 100), (1000, 100), (777, 64), (65, 64)])
def test_eval_windows_score_every_target_once(n, T):
    """The scored targets of all eval windows are exactly positions 1..N-1 of the stream, each once."""
    tok = np.arange(n, dtype=np.int64) + 1000  # values above every special id, so IGNORE marks only skipped targets
    scored = []
    for x, y in iter_eval_windows(tok, T, batch_size=3):
        assert x.shape[1] == T and torch.equal(y[y != IGNORE], (x + 1)[y != IGNORE])
        scored += y[y != IGNORE].tolist()
    assert sorted(scored) == list(range(1001, n + 1000))


def test_eval_windows_capped_are_spread_and_disjoint():
    """With max_windows, that many windows spread over the split are used and no target is scored twice."""
    tok = np.arange(10_001, dtype=np.int64) + 1000
    batches = list(iter_eval_windows(tok, 100, batch_size=4, max_windows=10))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (10, 100)
    scored = y[y != IGNORE].tolist()
    assert len(scored) == len(set(scored))
    assert int(x[0, 0]) == 1000 and int(x[-1, -1]) > 10_000
    assert len(batches) == 3  # batches of 4, 4, 2


def test_blend_follows_weights():
    """Rows come from each source in proportion to its weight, and each row really is a window of that source."""
    a = ByteBatches(np.arange(0, 1000, dtype=np.int64), 16, 1, seed=0)
    b = ByteBatches(np.arange(100_000, 101_000, dtype=np.int64), 16, 1, seed=1)
    blend = BlendedBatches([a, b], [3.0, 1.0], batch_size=64, seed=0)
    counts = np.zeros(2)
    for _ in range(100):
        x, y, src = blend.sample()
        assert torch.equal(y, x + 1)
        assert bool(((x < 1000) == (src == 0)[:, None]).all())
        counts += np.bincount(src.numpy(), minlength=2)
    assert abs(counts[0] / counts.sum() - 0.75) < 0.03


def test_bad_sampler_arguments():
    """Too-short streams and bad blend weights are rejected with a clear message."""
    with pytest.raises(ValueError, match="too short"):
        ByteBatches(np.arange(10), seq_len=10, batch_size=1)
    s = ByteBatches(np.arange(100), 8, 2)
    with pytest.raises(ValueError, match="weights"):
        BlendedBatches([s, s], [1.0, -1.0], batch_size=4)
    with pytest.raises(ValueError, match="too short"):
        next(iter_eval_windows(np.arange(5), 8, 2))


def test_weighted_blend_at_step_draws_rows_by_weight_and_resumes():
    """blended_batches_at_step with weights draws each stream's rows at about its weight (a zero weight never), and a
    stream started at step s yields what the step-0 stream yields after s batches."""
    streams = [np.full(5000, i, dtype=np.uint16) for i in range(3)]  # each stream's bytes name it
    start = blended_batches_at_step(streams, 16, 32, seed=7, weights=[0.8, 0.2, 0.0])
    it = start(0)
    rows = torch.cat([next(it)[0][:, 0] for _ in range(50)])  # first byte of every row: its source
    share = torch.bincount(rows, minlength=3).double() / len(rows)
    assert abs(share[0] - 0.8) < 0.05 and abs(share[1] - 0.2) < 0.05 and share[2] == 0
    late = start(3)
    skipped = start(0)
    for _ in range(3):
        next(skipped)
    x1, y1 = next(late)
    x2, y2 = next(skipped)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
