"""Tests for moe/model/tokenizer.py: byte encoding and forgiving decoding."""

from __future__ import annotations

import numpy as np

from moe.model.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, decode, encode


def test_roundtrip_and_framing():
    """Text survives encode/decode, and BOS/EOS frame it without changing the decoded text."""
    text = "Hamlet — حافظ — ∀x∈A"
    t = encode(text, bos=True, eos=True)
    assert t.dtype == np.uint16 and t[0] == BOS and t[-1] == EOS
    assert len(t) == len(text.encode()) + 2
    assert decode(t) == text
    assert max(BOS, EOS, PAD) < VOCAB_SIZE


def test_decode_never_fails():
    """Invalid UTF-8 (a window cut inside a character) decodes with replacement characters."""
    cut = encode("ب")[:1]
    assert decode(cut) == "\ufffd"
    assert decode([104, 105, PAD, 257]) == "hi"
