"""Where a validator's evaluation windows come from, and what a memorising miner can rebuild of them.

What a memoriser can rebuild is every public byte: the subnets' corpora are fetched from pinned public sources and
split by a public hash, so the val and route splits (held out from experts' training) are on every miner's disk. A
lookup of those bytes (moe.roles.memorizer) costs nothing to build. What it cannot rebuild is a secret: a validator's
salt, an unrevealed seed, or text that was never published.

- `public`: the epoch's committed seed draws windows from each subnet's val split. After the reveal anyone re-draws
  them (moe.poi.commit.check_windows). But a fresh seed hides only *which* bytes are asked, never the bytes: a
  memoriser of the val split answers every possible window from its table and beats every honest expert.
- `salted` (the default): a secret 32-byte salt, kept next to the validator's hotkey (mode 0600), picks a fraction
  of the blocks of the val and route splits together; the seed draws windows from that pool only. Both splits are
  held out from training and drawn from the same documents, so an honest expert is scored as before. A memoriser of
  the val split (all that public evaluation asks for) now gains on the pool's val blocks only and nothing on its
  route blocks, and neither seeds nor windows it saw tell it where the next epoch's bytes lie. Salting is NOT a
  defence against a memoriser of every public held-out byte (val and route): the salt hides which bytes, and those
  bytes are still public. It doubles what must be stored; it does not remove the lookup.
- `private`: windows come from text only this validator holds (`validator.data`); no miner has it, so a memoriser
  is uniform there and an honest expert is scored on genuinely unseen text. This is the one source that defeats a
  memoriser outright.

What stays publicly checkable. In every source the seed is committed before any expert is queried and revealed
after, so the draw is fixed before replies come in. `public`: anyone re-draws the windows. `salted`: without the salt
nobody can re-draw them, so public re-drawing is lost; instead the seed commitment carries sha256(salt), the same in
every epoch, so the validator cannot re-pick its pool after seeing replies, and anyone later given the salt (when the
validator rotates it, or to an auditor) checks every past epoch with `check_salted_windows`. `private`: the
commitment carries the text's hash, so whoever is shown the text checks the draw the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from moe.model.tokenizer import EOS, TOKEN_DTYPE
from moe.poi.commit import RevealError, SeedCommit, check_windows

logger = logging.getLogger(__name__)

EVAL_SOURCES = ("public", "salted", "private")
"""Where a validator draws its windows from (see the module docstring)."""
PRIVATE = "private"
"""The domain name windows drawn from private text carry."""
SALT_BYTES = 32
SALT_SUFFIX = ".salt"
"""A validator's salt lives at its hotkey's path with this suffix."""
BLOCK_TOKENS = 512
"""Granularity of the salted choice: small enough that the tiny slices' single documents split into many blocks."""
_SALT_DOMAIN = b"hivemoe/poi/eval-salt/v1"
_DATA_DOMAIN = b"hivemoe/poi/eval-data/v1"


def load_or_create_salt(path: str | os.PathLike) -> bytes:
    """The salt at `path`, created (mode 0600) if absent; raises ValueError (one line) if it is readable by others
    (a salt anyone can read protects nothing) or is not 32 bytes of hex."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = os.urandom(SALT_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(salt.hex())
        logger.info("created evaluation salt %s (commitment %s)", path, salt_commitment(salt).hex()[:16])
        return salt
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"salt file {path} has mode {oct(mode)}; it must be readable by its owner only (0600)")
    try:
        salt = bytes.fromhex(path.read_text().strip())
    except ValueError:
        salt = b""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt file {path} is corrupt: expected {SALT_BYTES} bytes of hex")
    return salt


def salt_commitment(salt: bytes) -> bytes:
    """sha256 binding a validator to its salt without revealing it (carried in every seed commitment)."""
    return hashlib.sha256(_SALT_DOMAIN + salt).digest()


def data_commitment(tokens: np.ndarray) -> bytes:
    """sha256 binding a validator to its private text without revealing it."""
    return hashlib.sha256(_DATA_DOMAIN + np.ascontiguousarray(tokens, dtype="<u2").tobytes()).digest()


def _salted_pieces(
    splits: Sequence[np.ndarray], salt: bytes, fraction: float, block_tokens: int
) -> list[tuple[int, np.ndarray]]:
    """The pool as (split index, tokens) pieces in order: the `fraction` of held-out blocks (at least one) whose
    salted hashes are smallest, in corpus order, with an EOS piece closing each run of adjacent blocks (as a document
    boundary would); that EOS carries the split of the block it closes. Raises ValueError on a fraction outside
    (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"salt fraction must be in (0, 1], got {fraction}")
    blocks = [(s, a) for s, toks in enumerate(splits) for a in range(0, len(toks), block_tokens)]

    def rank(block: tuple[int, int]) -> bytes:
        s, a = block
        body = np.ascontiguousarray(splits[s][a : a + block_tokens], dtype="<u2").tobytes()
        return hashlib.sha256(_SALT_DOMAIN + salt + body).digest()  # by content: stable if documents move

    chosen = sorted(sorted(blocks, key=rank)[: max(1, round(fraction * len(blocks)))]) if blocks else []
    pieces: list[tuple[int, np.ndarray]] = []
    for i, (s, a) in enumerate(chosen):
        pieces.append((s, np.asarray(splits[s][a : a + block_tokens], dtype=TOKEN_DTYPE)))
        adjacent = i + 1 < len(chosen) and chosen[i + 1] == (s, a + block_tokens)
        if not adjacent and pieces[-1][1][-1] != EOS:
            pieces.append((s, np.array([EOS], TOKEN_DTYPE)))
    return pieces


def salted_pool(
    splits: Sequence[np.ndarray], salt: bytes, fraction: float, block_tokens: int = BLOCK_TOKENS
) -> np.ndarray:
    """One subnet's evaluation pool: the `fraction` of its held-out blocks (at least one) whose salted hashes are
    smallest, in corpus order, with EOS closing each run of adjacent blocks (as a document boundary would)."""
    pieces = _salted_pieces(splits, salt, fraction, block_tokens)
    return np.concatenate([t for _, t in pieces]) if pieces else np.zeros(0, TOKEN_DTYPE)


def salted_pool_origin(
    splits: Sequence[np.ndarray], salt: bytes, fraction: float, block_tokens: int = BLOCK_TOKENS
) -> np.ndarray:
    """(len(pool),) int8: for each token of `salted_pool(splits, salt, fraction, block_tokens)`, the index into
    `splits` of the split it came from (an inserted EOS takes its run's). Tells a validator which windows a miner
    could have rebuilt from public text (moe.poi.memorisation)."""
    pieces = _salted_pieces(splits, salt, fraction, block_tokens)
    return np.concatenate([np.full(len(t), s, np.int8) for s, t in pieces]) if pieces else np.zeros(0, np.int8)


def salted_pools(held_out: Mapping[str, Sequence[np.ndarray]], salt: bytes, fraction: float) -> dict[str, np.ndarray]:
    """Subnet → its salted pool, from subnet → its held-out splits (val, route)."""
    return {name: salted_pool(splits, salt, fraction) for name, splits in held_out.items()}


def salted_pools_origin(
    held_out: Mapping[str, Sequence[np.ndarray]], salt: bytes, fraction: float
) -> dict[str, np.ndarray]:
    """Subnet → the split each token of its salted pool came from (0 = val, 1 = route), aligned with `salted_pools`."""
    return {name: salted_pool_origin(splits, salt, fraction) for name, splits in held_out.items()}


def _text_files(path: Path) -> list[Path]:
    """`path` itself if it is a file, else every file under it, sorted; hidden ones (swap files, .git) skipped."""
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*") if p.is_file() and not any(q.startswith(".") for q in p.relative_to(path).parts)
    )


def check_private_data(path: str, min_tokens: int) -> None:
    """Raise a one-line ValueError unless `path` (a file, or a directory of files) holds at least `min_tokens`
    tokens of text (each file's bytes and an EOS): a validator must not start on evaluation data it cannot use."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"data {path} does not exist")
    files = [f for f in _text_files(p) if f.stat().st_size > 0]
    if not files:
        raise ValueError(f"data {path} holds no text (empty)")
    n = sum(f.stat().st_size + 1 for f in files)
    if n < min_tokens:
        raise ValueError(f"data {path} holds {n} tokens, fewer than one evaluation window ({min_tokens})")


def private_tokens(path: str) -> np.ndarray:
    """Token stream of private text: every non-empty file under `path` (sorted; hidden ones skipped) as raw bytes,
    each followed by EOS, the layout of a public split. Raises ValueError (one line) if there is none."""
    p = Path(path).expanduser()
    check_private_data(path, 1)
    parts = []
    for f in _text_files(p):
        raw = f.read_bytes()
        if raw:
            parts += [np.frombuffer(raw, dtype=np.uint8).astype(TOKEN_DTYPE), np.array([EOS], TOKEN_DTYPE)]
    return np.concatenate(parts)


def check_salted_windows(
    commit: SeedCommit,
    seed: bytes,
    salt: bytes,
    held_out: Mapping[str, Sequence[np.ndarray]],
    fraction: float,
    n_windows: int,
    seq_len: int,
    windows: list[tuple[str, int]],
) -> None:
    """Raise RevealError unless `salt` is the one `commit` names and `windows` are the seed's draw from its pool
    (`seq_len` as the validator passed it to `draw_windows`): what anyone can check once a salt is revealed."""
    if commit.pool != salt_commitment(salt):
        raise RevealError(f"salt does not open the pool commitment of validator {commit.validator[:16]}")
    sizes = {name: len(pool) for name, pool in salted_pools(held_out, salt, fraction).items()}
    check_windows(commit, seed, sizes, n_windows, seq_len, windows)
