"""Tests for moe/metrics.py: bits per byte over the 256 byte values, specials never scored."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moe.metrics import (
    WindowScores,
    bits_per_byte,
    byte_log_probs,
    evaluate_model_bpb,
    evaluate_model_windows,
    score_sets,
    target_log_probs,
    window_bits,
)
from moe.model.tokenizer import EOS, PAD, VOCAB_SIZE
from moe.model.transformer import ByteLM, ModelConfig


def test_uniform_is_eight_bits_per_byte():
    """A uniform distribution over the 256 bytes costs exactly 8 bits per byte, whatever the specials' logits."""
    logits = torch.zeros(2, 5, VOCAB_SIZE)
    logits[..., 256:] = 7.0  # mass on specials is dropped and the bytes renormalized
    y = torch.randint(0, 256, (2, 5))
    bits, n = bits_per_byte(byte_log_probs(logits), y)
    assert n == 10 and bits / n == pytest.approx(8.0)


def test_specials_not_counted():
    """Targets >= 256 (EOS, PAD) add neither bits nor bytes."""
    logp = torch.log_softmax(torch.randn(1, 4, 256), -1)
    y = torch.tensor([[65, EOS, 66, PAD]])
    bits, n = bits_per_byte(logp, y)
    assert n == 2
    expected = -(logp[0, 0, 65] + logp[0, 2, 66]).item() / math.log(2)
    assert bits == pytest.approx(expected, rel=1e-6)
    picked, mask = target_log_probs(logp, y)
    assert mask.tolist() == [[True, False, True, False]] and picked[0, 1] == 0 and picked[0, 3] == 0


def test_perfect_prediction_costs_nothing():
    """A distribution that puts all mass on the target scores 0 bits."""
    y = torch.tensor([[3, 200]])
    logits = torch.full((1, 2, VOCAB_SIZE), -1e4)
    logits[0, 0, 3] = logits[0, 1, 200] = 0.0
    bits, n = bits_per_byte(byte_log_probs(logits), y)
    assert n == 2 and bits == pytest.approx(0.0, abs=1e-6)


def test_evaluate_model_bpb_pools_windows():
    """evaluate_model_bpb is total bits over total bytes across windows, NaN with no bytes, and keeps train mode."""
    torch.manual_seed(0)
    model = ByteLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=8)).train()
    x1, y1 = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))
    x2, y2 = torch.randint(0, 256, (1, 8)), torch.full((1, 8), PAD)
    y2[0, 0] = 5
    with torch.no_grad():
        b1, n1 = bits_per_byte(byte_log_probs(model(x1)), y1)
        b2, n2 = bits_per_byte(byte_log_probs(model(x2)), y2)
    got = evaluate_model_bpb(model, [(x1, y1), (x2, y2)])
    assert got == pytest.approx((b1 + b2) / (n1 + n2), rel=1e-5) and 7.0 < got < 9.0
    assert model.training
    assert math.isnan(evaluate_model_bpb(model, []))


def loop_window_bits(logp: torch.Tensor, targets: torch.Tensor) -> list[tuple[float, int]]:
    """Per window: bits summed over positions whose target is a byte, and how many there are (plain loop)."""
    out = []
    for w in range(targets.shape[0]):
        bits, n = 0.0, 0
        for t in range(targets.shape[1]):
            y = int(targets[w, t])
            if y < 256:
                bits -= float(logp[w, t, y]) / math.log(2)
                n += 1
        out.append((bits, n))
    return out


def random_windows(W: int, T: int, seed: int, empty: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, T, 256) log-probs and (W, T) targets with some specials; windows in `empty` score no byte at all."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(3.0 * torch.randn(W, T, 256, generator=g), -1)
    y = torch.randint(0, 256, (W, T), generator=g)
    y[torch.rand(W, T, generator=g) < 0.2] = EOS
    y[list(empty)] = PAD
    return logp, y


def test_window_bits_equals_loop():
    """window_bits gives each window's bits and scored-byte count, specials left out, as a plain loop."""
    logp, y = random_windows(5, 9, seed=1, empty=(3,))
    bits, n = window_bits(logp, y)
    ref = loop_window_bits(logp, y)
    assert n.tolist() == [c for _, c in ref] and n[3] == 0
    assert bits.tolist() == pytest.approx([b for b, _ in ref], rel=1e-6, abs=1e-9)


def test_window_scores_pool_and_keep_the_worst():
    """Over several add calls, WindowScores pools bits over bytes and keeps the highest per-window bits per byte,
    ignoring windows with no scored byte (NaN until some window scored one)."""
    scores = WindowScores()
    assert math.isnan(scores.bpb) and math.isnan(scores.worst_window_bpb)
    scores.add(*random_windows(2, 6, seed=2, empty=(0, 1)))  # nothing scored yet
    assert scores.count == 0 and math.isnan(scores.bpb) and math.isnan(scores.worst_window_bpb)
    seen = []
    for seed, W, empty in ((3, 3, (1,)), (4, 4, ()), (5, 2, (0,))):
        logp, y = random_windows(W, 7, seed, empty)
        if seed == 4:
            logp[2] = torch.log_softmax(-20.0 * F.one_hot(y[2].clamp(max=255), 256), -1)  # a terrible window
        scores.add(logp, y)
        seen += loop_window_bits(logp, y)
    worst = max(b / n for b, n in seen if n)
    assert scores.worst_window_bpb == pytest.approx(worst, rel=1e-6) and worst > 20
    assert scores.count == sum(n for _, n in seen)
    assert scores.bpb == pytest.approx(sum(b for b, _ in seen) / scores.count, rel=1e-6)


def tiny_model() -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=8))


def model_windows(seed: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randint(0, 256, (3, 8), generator=g)
        y = torch.cat([x[:, 1:], torch.full((3, 1), EOS)], 1)
        y[0] = PAD  # a window with nothing scored
        out.append((x, y))
    return out


def test_evaluate_model_windows_worst_window():
    """evaluate_model_windows pools like evaluate_model_bpb and reports its worst scored window, in any mode."""
    model = tiny_model().train()
    windows = model_windows(6, 2)
    got = evaluate_model_windows(model, windows)
    assert model.training
    with torch.no_grad():
        ref = [r for x, y in windows for r in loop_window_bits(byte_log_probs(model(x)), y)]
    assert got.bpb == pytest.approx(evaluate_model_bpb(model, windows), rel=1e-6)
    assert got.worst_window_bpb == pytest.approx(max(b / n for b, n in ref if n), rel=1e-5)


def test_score_sets_per_set_mean_and_worst():
    """score_sets gives each set's bits per byte as evaluate_model_bpb does, `all` as their plain mean, and the
    worst window over every set; no sets give NaN."""
    model = tiny_model().eval()
    sets = {"a": model_windows(7, 1), "b": model_windows(8, 3)}
    with torch.no_grad():
        per, worst = score_sets(
            lambda x: byte_log_probs(model(x)), {k: (lambda w=w: iter(w)) for k, w in sets.items()}
        )
    want = {k: evaluate_model_bpb(model, w) for k, w in sets.items()}
    assert set(per) == {"a", "b", "all"}
    assert per["a"] == pytest.approx(want["a"], rel=1e-6) and per["b"] == pytest.approx(want["b"], rel=1e-6)
    assert per["all"] == pytest.approx((want["a"] + want["b"]) / 2, rel=1e-6)
    assert worst == pytest.approx(max(evaluate_model_windows(model, w).worst_window_bpb for w in sets.values()))
    none, nothing = score_sets(lambda x: byte_log_probs(model(x)), {})
    assert math.isnan(none["all"]) and math.isnan(nothing)
