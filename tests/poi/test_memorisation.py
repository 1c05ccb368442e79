"""Tests for moe/poi/memorisation.py (flagging an expert far better on public windows than on the others) and for the
origin map of salted pools it relies on (moe/poi/eval_source.py `salted_pool_origin`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from moe.metrics import byte_log_probs
from moe.model.tokenizer import EOS
from moe.poi.commit import draw_windows
from moe.poi.eval_source import salted_pool, salted_pool_origin, salted_pools, salted_pools_origin
from moe.poi.memorisation import (
    MemorisationConfig,
    flag_memorised,
    memorisation_gap,
    public_windows,
    window_bpb,
)
from moe.roles.memorizer import MemorizerLM

BLOCK = 64
SALT = bytes(range(32))
SEQ_LEN = 64


def _language(seed: int, n: int, alphabet: int = 32, successors: int = 6) -> np.ndarray:
    """`n` tokens of a fixed order-1 Markov "language" (the same for every seed) sampled with `seed`, with an EOS
    closing each ~1000-token document: a stand-in for one subnet's text, with ~2 bits a byte of real structure."""
    lang = np.random.default_rng(1234)
    nxt = np.stack([lang.choice(alphabet, successors, replace=False) for _ in range(alphabet)])  # (A, S)
    probs = lang.dirichlet(np.ones(successors), alphabet)  # (A, S)
    rng = np.random.default_rng(seed)
    out, c = np.empty(n, np.uint16), 0
    for i in range(n):
        if i % 1000 == 999:
            out[i] = EOS
            continue
        c = nxt[c, rng.choice(successors, p=probs[c])]
        out[i] = 97 + c
    return out


VAL, ROUTE, OTHER = _language(1, 8000), _language(2, 8000), _language(3, 8000)


def _epoch(models: list[torch.nn.Module], salt: bytes, seed: bytes, n_windows: int = 32):
    """One salted validator epoch over a single subnet: (E, W) bpb of each model and the (W,) public mask."""
    held_out = {"lang": [VAL, ROUTE]}
    pools = salted_pools(held_out, salt, 0.5)
    drawn = draw_windows(seed, {k: len(v) for k, v in pools.items()}, n_windows, SEQ_LEN + 1)
    rows = torch.from_numpy(np.stack([pools[s][o : o + SEQ_LEN + 1] for s, o in drawn]).astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]  # (W, T)
    with torch.no_grad():
        dists = torch.stack([byte_log_probs(m(x)) for m in models])  # (E, W, T, 256)
    public = public_windows(salted_pools_origin(held_out, salt, 0.5), drawn, SEQ_LEN + 1)
    return window_bpb(dists, y, torch.ones(len(models), n_windows, dtype=torch.bool)), public


def test_origin_names_the_split_of_every_pool_token():
    """The origin map is as long as the pool and, walked along it, every stretch it calls val is a whole val block and
    every one it calls route a route block; an EOS the pool inserts takes the origin of the block it closes."""
    val = np.arange(20 * BLOCK, dtype=np.uint16) % 100  # bytes < 100: val tokens
    val[-1] = EOS  # the split's last document ends at a block boundary: the pool adds no second EOS there
    route = 100 + np.arange(21 * BLOCK + 10, dtype=np.uint16) % 100  # bytes >= 100: route tokens, 22 blocks
    blocks = [{tuple(t[a : a + BLOCK].tolist()) for a in range(0, len(t), BLOCK)} for t in (val, route)]
    for fraction in (0.3, 0.5, 1.0):
        pool = salted_pool([val, route], SALT, fraction, block_tokens=BLOCK)
        origin = salted_pool_origin([val, route], SALT, fraction, block_tokens=BLOCK)
        assert origin.dtype == np.int8 and len(origin) == len(pool) and set(origin.tolist()) == {0, 1}
        i, found, inserted = 0, 0, 0
        while i < len(pool):
            s = int(origin[i])
            block = next((n for n in (BLOCK, 10) if tuple(pool[i : i + n].tolist()) in blocks[s]), 0)
            if block:  # a whole block of the split the origin names (route's last one is 10 tokens)
                assert (origin[i : i + block] == s).all()
                i, found = i + block, found + 1
            else:  # otherwise only an inserted EOS, labelled like the block before it
                assert pool[i] == EOS and origin[i] == origin[i - 1]
                i, inserted = i + 1, inserted + 1
        assert found == max(1, round(fraction * 42)) and inserted >= 1
    assert len(salted_pool_origin([], SALT, 0.5)) == 0 and salted_pool_origin([], SALT, 0.5).dtype == np.int8


def test_window_bpb_skips_special_targets_and_absent_windows():
    """Each window's bpb is its bits over its byte targets only (checked against a per-position loop); an absent
    window or one with no byte target is NaN."""
    g = torch.Generator().manual_seed(0)
    dists = torch.log_softmax(torch.randn(2, 3, 5, 256, generator=g), -1)  # (E, W, T, 256)
    y = torch.randint(0, 256, (3, 5), generator=g)
    y[0, 2], y[2] = EOS, EOS  # one EOS in window 0; window 2 has no byte at all
    present = torch.tensor([[True, True, True], [True, False, True]])
    bpb = window_bpb(dists, y, present)
    for e in range(2):
        for w in range(2):
            bits = [-float(dists[e, w, t, y[w, t]]) / np.log(2) for t in range(5) if y[w, t] < 256]
            expected = np.mean(bits) if present[e, w] else np.nan
            assert float(bpb[e, w]) == pytest.approx(expected, nan_ok=True)
    assert torch.isnan(bpb[:, 2]).all()


def test_a_memoriser_of_val_is_flagged_and_honest_models_are_not():
    """Over salted epochs, a lookup of the val split is flagged every time; a bigram model and a lookup of other text
    of the same language, neither of which saw val or route, never are."""
    memoriser = MemorizerLM([VAL])
    bigram = MemorizerLM([OTHER], order=1)  # counts of next byte given the last: an honest small model
    stranger = MemorizerLM([OTHER])  # a lookup of text the validator never asks about
    for i in range(4):
        salt = hashlib.sha256(b"salt%d" % i).digest()
        bpb, public = _epoch([memoriser, bigram, stranger], salt, hashlib.sha256(b"seed%d" % i).digest())
        assert 4 <= int(public.sum()) <= 28  # both kinds are drawn
        gap = memorisation_gap(bpb, public)
        assert gap[0] > 4 and gap[1:].abs().max() < 1, gap
        assert flag_memorised(bpb, public).tolist() == [True, False, False]


def test_too_few_windows_of_either_kind_never_flags():
    """An expert is flagged only with at least `min_windows` answered windows of each kind."""
    public = torch.tensor([True] * 3 + [False] * 6)
    bpb = torch.tensor([[0.5] * 3 + [8.0] * 6])  # (1, 9): a memoriser's pattern
    assert not flag_memorised(bpb, public, min_windows=4)
    assert flag_memorised(bpb, public, min_windows=3)
    assert not flag_memorised(bpb, ~public, min_windows=3)  # better on the other windows is no sign of memorising


def test_absent_windows_are_ignored():
    """Windows an expert did not answer (NaN bpb, or absent in its replies) neither count toward `min_windows` nor
    move its mean: an absent public window filled with log-probs of 0 is not a perfect answer."""
    public = torch.tensor([True] * 6 + [False] * 6)
    bpb = torch.tensor([[3.0] * 6 + [3.2] * 6, [3.0] * 6 + [3.2] * 6])
    bpb[1, :4] = float("nan")  # expert 1 answered only 2 public windows
    assert flag_memorised(bpb, public).tolist() == [False, False]
    assert torch.isnan(memorisation_gap(bpb, public)[1])
    dists = torch.zeros(1, 12, SEQ_LEN, 256)  # a reply of "probability 1 everywhere" where the expert was absent
    dists[:, 6:] = np.log(1 / 256)  # uniform on the other windows: 8 bits a byte
    present = torch.tensor([[False] * 6 + [True] * 6])
    y = torch.randint(0, 256, (12, SEQ_LEN))
    assert not flag_memorised(window_bpb(dists, y, present), public, min_windows=1)
    assert flag_memorised(window_bpb(dists, y, torch.ones(1, 12, dtype=torch.bool)), public, min_windows=1)


def test_domains_are_compared_with_themselves():
    """With `groups`, a specialist good on one domain and bad on another is not flagged because the public windows
    happen to fall more often in its own domain; the pooled comparison would flag it."""
    groups = torch.tensor([0] * 8 + [1] * 8)
    public = torch.tensor([True] * 6 + [False] * 2 + [True] * 2 + [False] * 6)  # public mostly in domain 0
    bpb = torch.where(groups == 0, 1.5, 7.5).unsqueeze(0).double()  # (1, 16): a domain-0 specialist
    assert flag_memorised(bpb, public, min_windows=2)
    assert not flag_memorised(bpb, public, min_windows=2, groups=groups)
    assert float(memorisation_gap(bpb, public, 2, groups)[0]) == pytest.approx(0.0)


def test_bits_beyond_uniform_do_not_widen_the_gap():
    """A window counts at most 8 bits a byte: an expert far worse than uniform on the other windows shows the gap of
    one that is uniform there, no more."""
    public = torch.tensor([True] * 5 + [False] * 5)
    bpb = torch.tensor([[3.0] * 5 + [20.0] * 5])
    assert float(memorisation_gap(bpb, public)[0]) == pytest.approx(5.0)


def test_config_rejects_unusable_thresholds():
    """min_windows below 1 or a non-positive gap are one-line errors naming the field."""
    with pytest.raises(ValueError, match="min_windows"):
        MemorisationConfig(min_windows=0)
    with pytest.raises(ValueError, match="max_gap_bits"):
        MemorisationConfig(max_gap_bits=0.0)
