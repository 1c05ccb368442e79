"""Incremental decoding of a `ByteLM` with a key/value cache: generating a byte costs one position, not the context.

`forward_cached(model, idx, cache)` runs the new positions only, attending to the keys and values cached for the
earlier ones; it reuses the model's own modules, so its logits equal `model(whole sequence)`'s up to float rounding.
`IncrementalDecoder` feeds one sequence through it byte by byte. A cache holds at most `capacity` (<= max_seq_len)
positions, because RoPE tables and training stop there; past it the decoder slides: it keeps the last `keep` bytes,
re-prefills them from position 0 and goes on. Every logit it returns therefore equals the full forward's last logit
on `decoder.window` (the bytes since the last slide), which is always between `keep` and `capacity` bytes long.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe.model.transformer import ByteLM, apply_rope


@dataclass
class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated for `capacity` positions so its memory
    is known (and reserved) before anything is computed."""

    k: list[torch.Tensor]
    """Per layer (B, nh, capacity, hs)."""
    v: list[torch.Tensor]
    """Per layer (B, nh, capacity, hs)."""
    length: int = 0

    @classmethod
    def empty(cls, model: ByteLM, capacity: int, batch: int = 1) -> KVCache:
        cfg = model.config
        if not 1 <= capacity <= cfg.max_seq_len:
            raise ValueError(f"cache capacity {capacity} outside 1..max_seq_len={cfg.max_seq_len}")
        w = model.embed_tokens.weight
        shape = (batch, cfg.n_heads, capacity, cfg.d_model // cfg.n_heads)
        k = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(cfg.n_layers)]
        v = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(cfg.n_layers)]
        return cls(k, v)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @staticmethod
    def bytes_per_position(model: ByteLM, batch: int = 1) -> int:
        """Cache bytes one position of `batch` sequences takes: keys and values of every layer."""
        cfg = model.config
        return 2 * cfg.n_layers * cfg.d_model * model.embed_tokens.weight.element_size() * batch


@torch.no_grad()
def forward_cached(model: ByteLM, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (B, n, V) of `idx` (B, n), the bytes that follow the `cache.length` cached ones; appends them to the
    cache. Raises ValueError (cache unchanged) when they do not fit in its capacity."""
    B, n = idx.shape
    L = cache.length
    if n == 0 or L + n > cache.capacity:
        raise ValueError(f"{n} new positions after {L} cached do not fit a cache of {cache.capacity}")
    dtype = model.embed_tokens.weight.dtype
    cos, sin = model.rope_cos[L : L + n].to(dtype), model.rope_sin[L : L + n].to(dtype)
    # a new position i sees every cached one and the new ones up to itself
    mask = None if n == 1 or L == 0 else torch.ones(n, L + n, dtype=torch.bool, device=idx.device).tril(L)
    x = model.embed_tokens(idx)  # (B, n, C)
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        C = h.shape[-1]
        nh, hs = attn.n_heads, C // attn.n_heads
        q = attn.q_proj(h).view(B, n, nh, hs).transpose(1, 2)  # (B, nh, n, hs)
        k = attn.k_proj(h).view(B, n, nh, hs).transpose(1, 2)  # (B, nh, n, hs)
        v = attn.v_proj(h).view(B, n, nh, hs).transpose(1, 2)  # (B, nh, n, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.k[i][:, :, L : L + n] = k
        cache.v[i][:, :, L : L + n] = v
        keys, values = cache.k[i][:, :, : L + n], cache.v[i][:, :, : L + n]  # (B, nh, L+n, hs)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=L == 0 and n > 1)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, n, C))
        out = layer.mlp(layer.post_attention_layernorm(x))
        x = x + (out if isinstance(out, torch.Tensor) else out.y)  # a MoE FFN returns (y, losses, load)
    cache.length = L + n
    return model.lm_head(model.norm(x))  # (B, n, V)


class IncrementalDecoder:
    """One byte sequence through `model` with a KV cache of `capacity` positions (default: max_seq_len), sliding to
    its last `keep` bytes (default: half the capacity) when full; see the module docstring for what each logit is."""

    def __init__(self, model: ByteLM, capacity: int | None = None, keep: int | None = None):
        self.model = model
        cap = min(capacity or model.config.max_seq_len, model.config.max_seq_len)
        self.cache = KVCache.empty(model, cap)
        self.keep = cap // 2 if keep is None else keep
        if not 1 <= self.keep < cap:
            raise ValueError(f"keep={self.keep} must be in 1..capacity-1={cap - 1}")
        self.window: list[int] = []
        """The bytes the cache holds: the context of the next prediction."""

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes

    def feed(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Append bytes (1-D); returns their logits (n, V), each the next-byte prediction after it."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().to(self.model.embed_tokens.weight.device)
        out = []
        while len(ids):
            room = self.capacity - self.cache.length
            if room == 0:
                self._slide(self.window[-self.keep :])
                room = self.capacity - self.cache.length
            take, ids = ids[:room], ids[room:]
            out.append(forward_cached(self.model, take[None], self.cache)[0])
            self.window += take.tolist()
        return torch.cat(out) if out else torch.empty(0, self.model.config.vocab_size)

    def refill(self, model: ByteLM | None = None) -> None:
        """Recompute the cache of the current window (with `model`'s weights, e.g. after they were updated)."""
        if model is not None:
            self.model = model
        self._slide(self.window)

    def _slide(self, keep: list[int]) -> None:
        self.cache.length, self.window = 0, list(keep)
        if keep:
            forward_cached(self.model, torch.tensor([keep], device=self.cache.k[0].device), self.cache)


__all__ = ["IncrementalDecoder", "KVCache", "forward_cached"]
