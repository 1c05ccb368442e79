"""Tests for moe/metrics.py: bits per byte over the 256 byte values, specials never scored."""

from __future__ import annotations

import math

import pytest
import torch

from moe.metrics import bits_per_byte, byte_log_probs, evaluate_model_bpb, target_log_probs
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
