"""Tests for moe/routing/signature.py: the running bigram signature is causal and normalized; domains separate."""

from __future__ import annotations

import inspect
import json

import numpy as np
import torch

from moe.model.tokenizer import EOS, encode
from moe.routing.signature import SIGNATURE_DIM, domain_centroid, running_signature


def windows(text: str, T: int = 64) -> np.ndarray:
    tok = encode(text)
    n = len(tok) // T
    return tok[: n * T].reshape(n, T)


def test_rows_sum_to_one_and_shape():
    """Each position's signature is a (S,) distribution."""
    x = torch.randint(0, 256, (3, 17))
    sig = running_signature(x)
    assert sig.shape == (3, 17, SIGNATURE_DIM)
    torch.testing.assert_close(sig.sum(-1), torch.ones(3, 17))
    assert (sig >= 0).all()


def test_causal():
    """Changing bytes at positions >= t leaves signatures before t unchanged."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 30), generator=g)
    for t in (1, 10, 29):
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, 256, x2[:, t:].shape, generator=g)
        assert torch.equal(running_signature(x)[:, :t], running_signature(x2)[:, :t])


def test_domains_differ_more_than_halves():
    """English prose and Python code have centroids farther apart than two halves of the same domain."""
    english = " ".join(
        ["the quick brown fox jumps over the lazy dog while the king and queen walk in the garden of roses"] * 40
    )
    code = inspect.getsource(json.decoder) + inspect.getsource(json.encoder)
    e, c = windows(english), windows(code)
    e1, e2 = np.asarray(domain_centroid(e[::2])), np.asarray(domain_centroid(e[1::2]))
    c1, c2 = np.asarray(domain_centroid(c[: len(c) // 2])), np.asarray(domain_centroid(c[len(c) // 2 :]))
    across = np.linalg.norm(np.asarray(domain_centroid(e)) - np.asarray(domain_centroid(c)))
    assert across > 3 * max(np.linalg.norm(e1 - e2), np.linalg.norm(c1 - c2))
    assert abs(sum(domain_centroid(c)) - 1.0) < 1e-4 and len(domain_centroid(c)) == SIGNATURE_DIM


def test_centroid_accepts_specials_and_is_deterministic():
    """Special ids are clamped (no index error) and the same windows always publish the same centroid."""
    w = windows("abc" * 100, T=16)
    w[:, 0] = EOS
    assert domain_centroid(w) == domain_centroid(torch.as_tensor(w.astype(np.int64)))
