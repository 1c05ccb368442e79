"""Tests of moe/evaluation/text_windows.py: any file's bytes become tokens, cut into windows scoring each once."""

from __future__ import annotations

import numpy as np
import pytest

from moe.evaluation.text_windows import EvalTextError, read_text_tokens, text_windows, window_count


def test_binary_file_is_read_byte_for_byte(tmp_path):
    """Every byte of a binary file (NULs, invalid UTF-8, 0xFF) is one token of the same value."""
    data = bytes(range(256)) + b"\xff\xfe\x00\xc3("
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert read_text_tokens(path).tolist() == list(data)


def test_max_bytes_caps_what_is_read(tmp_path):
    """Only the first `max_bytes` bytes are read."""
    path = tmp_path / "long.txt"
    path.write_bytes(b"abcdefghij" * 100)
    assert read_text_tokens(path, max_bytes=25).tolist() == list(b"abcdefghij" * 2 + b"abcde")


@pytest.mark.parametrize("content", [b"", b"x"])
def test_empty_or_one_byte_file_is_refused(tmp_path, content):
    """A file with nothing to predict raises EvalTextError with a one-line message naming the file."""
    path = tmp_path / "short.txt"
    path.write_bytes(content)
    with pytest.raises(EvalTextError) as e:
        read_text_tokens(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_is_refused(tmp_path):
    """A path that is not a file raises EvalTextError, not an OSError traceback."""
    with pytest.raises(EvalTextError, match="no file"):
        read_text_tokens(tmp_path / "absent.txt")
    with pytest.raises(EvalTextError, match="no file"):
        read_text_tokens(tmp_path)


@pytest.mark.parametrize("n", [2, 5, 64, 65, 200, 1001])
def test_windows_score_every_target_once(n):
    """Windows of a text of any length >= 2 score each byte after the first exactly once, as many as window_count."""
    tokens = (np.arange(n) % 251).astype(np.uint16)
    batches = list(text_windows(tokens, seq_len=64, batch_size=3))
    scored = sorted(t for _, y in batches for t in y[y < 256].tolist())
    assert scored == sorted(tokens[1:].tolist())
    assert sum(x.shape[0] for x, _ in batches) == window_count(n, 64)
    assert all(x.shape[1] == min(64, n - 1) for x, _ in batches)


def test_max_windows_spreads_windows():
    """With `max_windows`, that many windows are scored (the run's validation uses the same rule)."""
    tokens = (np.arange(10_000) % 256).astype(np.uint16)
    batches = list(text_windows(tokens, seq_len=64, batch_size=8, max_windows=16))
    assert sum(x.shape[0] for x, _ in batches) == 16 == window_count(len(tokens), 64, max_windows=16)
