"""Byte-level tokens: the 256 byte values of UTF-8 text plus a few special ids above them.

Every expert shares this vocabulary, so their output distributions can be mixed position by position without any
vocabulary alignment. Decoding never fails: bytes that are not valid UTF-8 (a window cut mid-character, or a
model's sampled noise) become U+FFFD and special ids are dropped.
"""

from __future__ import annotations

import numpy as np

BOS = 256
"""Start of a prompt; put before text that a model should continue from scratch."""
EOS = 257
"""End of a document; also the separator between documents in a token stream."""
PAD = 258
"""Padding for ragged batches; never a training target."""
VOCAB_SIZE = 260
"""Byte values 0..255, the three specials above, and one reserved id (kept so the size stays a multiple of 4)."""

TOKEN_DTYPE = np.uint16
"""Storage dtype of token streams: holds every id below VOCAB_SIZE at 2 bytes a token."""


def encode(text: str, bos: bool = False, eos: bool = False) -> np.ndarray:
    """UTF-8 bytes of `text` as a uint16 array, optionally framed by BOS / EOS."""
    b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(TOKEN_DTYPE)
    if bos or eos:
        parts = ([np.array([BOS], TOKEN_DTYPE)] if bos else []) + [b] + ([np.array([EOS], TOKEN_DTYPE)] if eos else [])
        b = np.concatenate(parts)
    return b


def decode(tokens) -> str:
    """Text of a token sequence (list, array or tensor); special ids are skipped, invalid UTF-8 becomes U+FFFD."""
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")


def is_byte(tokens: np.ndarray) -> np.ndarray:
    """Mask of positions holding a real byte (the unit that bits-per-byte counts)."""
    return tokens < 256
