"""Tests for moe/corpus/tokens.py: token caches built from a split's jsonl, and the subnets' fetched slices."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import subnets
from moe.corpus import SHIFTED, SLICE_BYTES, SPLITS, CorpusError, default_cache_dir, read_documents, subnet_dir
from moe.corpus.tokens import CorpusConfig, load_tokens, subnet_folder, subnet_tokens
from moe.model.tokenizer import EOS, TOKEN_DTYPE, decode


def _write_split(directory, split, texts):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{split}.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    )


def test_load_tokens_matches_documents(tmp_path):
    """The token stream is each document's UTF-8 bytes followed by EOS, in file order."""
    texts = ["hello", "سلام دنیا", "a\x00b", "x" * 3000]
    _write_split(tmp_path, "val", texts)
    tok = load_tokens(tmp_path, "val")
    expected = []
    for t in texts:
        expected += list(t.encode()) + [EOS]
    assert tok.tolist() == expected
    assert decode(tok) == "".join(texts)


def test_token_cache_is_reused_and_repaired(tmp_path, caplog):
    """A second load memory-maps the cached .bin; a tampered .bin is detected, logged and rebuilt."""
    _write_split(tmp_path, "train", ["some text", "more text"])
    first = np.array(load_tokens(tmp_path, "train"))
    bin_path = tmp_path / "train.bin"
    stamp = bin_path.stat().st_mtime_ns
    assert isinstance(load_tokens(tmp_path, "train"), np.memmap)
    assert bin_path.stat().st_mtime_ns == stamp

    bin_path.write_bytes(np.full(len(first), 60000, np.uint16).tobytes())  # ids outside the vocabulary
    with caplog.at_level(logging.WARNING):
        again = load_tokens(tmp_path, "train")
    assert "outside the vocabulary" in caplog.text
    assert np.array_equal(again, first)

    bin_path.write_bytes(b"\x01")  # wrong size
    assert np.array_equal(load_tokens(tmp_path, "train"), first)


def test_malformed_jsonl_is_a_clear_error(tmp_path):
    """A jsonl split that is not JSON, or lacks the text field, raises a one-line CorpusError."""
    (tmp_path / "val.jsonl").write_text("this is not json\n")
    with pytest.raises(CorpusError, match="not valid jsonl") as e:
        load_tokens(tmp_path, "val")
    assert "\n" not in str(e.value)
    (tmp_path / "route.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match="no 'text'"):
        load_tokens(tmp_path, "route")
    with pytest.raises(CorpusError, match="not found"):
        load_tokens(tmp_path, "train")


def test_missing_split_names_the_file(tmp_path):
    """Loading a split whose jsonl is absent raises CorpusError naming that file; an unknown split is a ValueError."""
    _write_split(tmp_path, "val", ["only val"])
    with pytest.raises(CorpusError) as e:
        load_tokens(tmp_path, "route")
    assert str(tmp_path / "route.jsonl") in str(e.value)
    assert not (tmp_path / "route.bin").exists()
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_tokens(tmp_path, "test")


def reference_tokens(directory, split: str) -> list[int]:
    """The token stream built by hand: each document's UTF-8 bytes, then EOS."""
    out: list[int] = []
    for text in read_documents(directory, split):
        out += [*text.encode("utf-8"), EOS]
    return out


@pytest.fixture(scope="module")
def declared():
    """Every declared subnet; skips if their slices were never fetched (python -m subnets.fetch --slice)."""
    found = subnets.all_subnets()
    missing = [n for n in found if not (subnet_dir(None, n, SLICE_BYTES) / "manifest.json").is_file()]
    if missing:
        pytest.skip(f"slices not fetched for {missing}")
    return found


def test_subnet_tokens_read_each_fetched_slice(declared):
    """With slice=True every subnet's folder is its cached slice, and each split's tokens are its documents + EOS."""
    corpus = CorpusConfig(slice=True)
    for name, subnet in declared.items():
        folder = subnet_folder(subnet, corpus)
        assert folder == default_cache_dir() / f"{name}-{SLICE_BYTES}B"
        for split in SPLITS:
            tokens = subnet_tokens(subnet, split, corpus)
            assert tokens.dtype == TOKEN_DTYPE and len(tokens) > 0, (name, split)
            assert tokens.tolist() == reference_tokens(folder, split), (name, split)


def test_data_dir_is_used_as_given(declared, tmp_path):
    """A slice copied under data_dir is read from there, as is (no fetch), and gives the same tokens."""
    name, subnet = next(iter(declared.items()))
    src = subnet_folder(subnet, CorpusConfig(slice=True))
    dst = tmp_path / f"{name}-{SLICE_BYTES}B"
    dst.mkdir()
    for f in ["manifest.json", *(f"{s}.jsonl" for s in (*SPLITS, SHIFTED))]:
        shutil.copy2(src / f, dst / f)
    corpus = CorpusConfig(data_dir=str(tmp_path), slice=True)
    assert subnet_folder(subnet, corpus) == dst
    tokens = subnet_tokens(subnet, "val", corpus)
    assert (dst / "val.bin").is_file() and not (tmp_path / "archives").exists()
    assert np.array_equal(tokens, subnet_tokens(subnet, "val", CorpusConfig(slice=True)))
