"""A user's file as byte tokens, cut into the same kind of windows every model of a run is scored on.

Any file works, UTF-8 or binary: the models read bytes, so the file's bytes are the tokens (no document separators
are added). Windows come from `moe.corpus.batches.iter_eval_windows`, so every byte after the first is scored exactly
once, as on a subnet's validation split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from moe.corpus.batches import iter_eval_windows
from moe.model.tokenizer import TOKEN_DTYPE

DEFAULT_MAX_BYTES = 200_000
"""Bytes of a file read by default: a stable estimate (hundreds of windows) in about a minute on a CPU; raise it
with --max-bytes for a tighter one."""
MIN_TEXT_BYTES = 2
"""The shortest text that can be scored: one byte to read and one to predict."""


class EvalTextError(ValueError):
    """A text file that cannot be scored: missing, unreadable, empty or too short (one-line message)."""


def read_text_tokens(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """The first `max_bytes` bytes of `path` as a uint16 token stream; EvalTextError when it cannot be scored."""
    path = Path(path)
    if max_bytes < MIN_TEXT_BYTES:
        raise EvalTextError(f"--max-bytes must be at least {MIN_TEXT_BYTES}, got {max_bytes}")
    if not path.is_file():
        raise EvalTextError(f"no file at {path}")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except OSError as e:
        raise EvalTextError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < MIN_TEXT_BYTES:
        what = "is empty" if not data else f"holds {len(data)} byte"
        raise EvalTextError(f"{path} {what}; at least {MIN_TEXT_BYTES} bytes are needed to score a model")
    return np.frombuffer(data, dtype=np.uint8).astype(TOKEN_DTYPE)


def window_count(n_tokens: int, seq_len: int, max_windows: int | None = None) -> int:
    """Windows `text_windows` yields for a stream of `n_tokens` (for a progress bar)."""
    T = min(seq_len, n_tokens - 1)
    K = -(-(n_tokens - 1) // T)
    return min(K, max_windows) if max_windows else K


def text_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_windows: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of (B, T) windows scoring every target once; T = `seq_len`, or the whole text when shorter.

    `max_windows` spreads that many windows evenly over the stream instead (as the run's validation does).
    Raises EvalTextError for a stream shorter than MIN_TEXT_BYTES.
    """
    if len(tokens) < MIN_TEXT_BYTES:
        raise EvalTextError(f"text of {len(tokens)} tokens is too short; at least {MIN_TEXT_BYTES} are needed")
    yield from iter_eval_windows(tokens, min(seq_len, len(tokens) - 1), batch_size, max_windows)
