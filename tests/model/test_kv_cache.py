"""Tests for moe/model/kv_cache.py: cached incremental logits against the model's full forward."""

from __future__ import annotations

import pytest
import torch

from moe.model.kv_cache import IncrementalDecoder, KVCache, forward_cached
from moe.model.transformer import ByteLM, ModelConfig

ATOL = 1e-5


def tiny_model(**overrides) -> ByteLM:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_seq_len": 24, **overrides})
    return ByteLM(cfg).eval()


@pytest.mark.parametrize("moe_experts", [0, 4])
def test_byte_by_byte_logits_equal_the_full_forward(moe_experts):
    """Feeding a sequence one byte at a time through the cache gives the full forward's logits at every position
    (dense and MoE feed-forward blocks)."""
    model = tiny_model(moe_experts=moe_experts)
    x = torch.randint(0, 256, (1, 24))
    cache = KVCache.empty(model, 24)
    steps = torch.cat([forward_cached(model, x[:, t : t + 1], cache) for t in range(24)], dim=1)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(steps, full, atol=ATOL, rtol=0)


def test_prefill_then_chunks_equal_the_full_forward():
    """A prefill followed by multi-byte chunks (which need the block-causal mask) matches the full forward."""
    model = tiny_model()
    x = torch.randint(0, 256, (2, 20))
    cache = KVCache.empty(model, 24, batch=2)
    parts = [forward_cached(model, x[:, a:b], cache) for a, b in [(0, 7), (7, 8), (8, 13), (13, 20)]]
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=ATOL, rtol=0)
    assert cache.length == 20


def test_a_chunk_past_the_capacity_is_refused_and_leaves_the_cache_unchanged():
    """Positions beyond the cache's capacity raise ValueError and do not advance it."""
    model = tiny_model()
    cache = KVCache.empty(model, 8)
    forward_cached(model, torch.zeros(1, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="do not fit"):
        forward_cached(model, torch.zeros(1, 3, dtype=torch.long), cache)
    assert cache.length == 6
    with pytest.raises(ValueError, match="capacity"):
        KVCache.empty(model, 25)


def test_decoder_past_max_seq_len_equals_the_full_forward_on_its_window():
    """Past the capacity the decoder slides; every logit still equals the full forward's last logit on its window,
    which stays between keep and capacity bytes."""
    model = tiny_model()
    decoder = IncrementalDecoder(model, keep=10)
    x = torch.randint(0, 256, (70,))
    got = decoder.feed(x[:5])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x[None, :5])[0], atol=ATOL, rtol=0)
        for t in range(5, 70):
            step = decoder.feed(x[t : t + 1])[0]
            window = decoder.window
            assert (
                (t < 24 or 10 < len(window))
                and len(window) <= 24
                and window == x[t + 1 - len(window) : t + 1].tolist()
            )
            torch.testing.assert_close(step, model(torch.tensor([window]))[0, -1], atol=ATOL, rtol=0)


def test_a_long_prompt_slides_while_prefilling():
    """A prompt longer than the capacity is fed in chunks; the last logit matches the full forward on the window."""
    model = tiny_model()
    decoder = IncrementalDecoder(model, capacity=16, keep=4)
    x = torch.randint(0, 256, (50,))
    last = decoder.feed(x)[-1]
    assert decoder.window == x[-len(decoder.window) :].tolist()
    with torch.no_grad():
        torch.testing.assert_close(last, model(torch.tensor([decoder.window]))[0, -1], atol=ATOL, rtol=0)


def test_refill_with_new_weights_matches_the_new_model():
    """After `refill(new_model)` the next logit is the new model's on the same window."""
    model, other = tiny_model(), tiny_model()
    torch.manual_seed(1)
    other.load_state_dict({k: torch.randn_like(v) * 0.02 for k, v in model.state_dict().items()})
    decoder = IncrementalDecoder(model)
    x = torch.randint(0, 256, (12,))
    decoder.feed(x[:11])
    decoder.refill(other)
    with torch.no_grad():
        torch.testing.assert_close(decoder.feed(x[11:])[0], other(x[None])[0, -1], atol=ATOL, rtol=0)


def test_cache_memory_is_reserved_up_front():
    """A cache's bytes are fixed at creation: 2 x layers x d_model x itemsize per position."""
    model = tiny_model()
    cache = KVCache.empty(model, 24)
    assert cache.nbytes == KVCache.bytes_per_position(model) * 24 == 2 * 2 * 32 * 4 * 24
