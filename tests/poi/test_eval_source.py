"""Tests for moe/poi/eval_source.py: the salt file, salted pools, private text, and what a revealed salt lets anyone
check (plus the pool commitment it relies on in moe/poi/commit.py)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from moe.identity import Hotkey
from moe.model.tokenizer import EOS
from moe.poi.commit import RevealError, SeedCommit, check_reveal, draw_windows, make_commit, new_seed
from moe.poi.eval_source import (
    BLOCK_TOKENS,
    check_private_data,
    check_salted_windows,
    data_commitment,
    load_or_create_salt,
    private_tokens,
    salt_commitment,
    salted_pool,
    salted_pools,
)

RNG = np.random.default_rng(0)
VAL = RNG.integers(0, 256, 20 * BLOCK_TOKENS, dtype=np.uint16)
ROUTE = RNG.integers(0, 256, 20 * BLOCK_TOKENS + 100, dtype=np.uint16)
HELD_OUT = {"code": [VAL, ROUTE], "math": [ROUTE[:3000], VAL[:2000]]}


def _key() -> Hotkey:
    return Hotkey.from_seed(b"\x07" * 32)


def _text(a: np.ndarray) -> str:
    return "".join(map(chr, a.tolist()))


def test_salt_is_created_private_and_kept(tmp_path):
    """A new salt is 32 random bytes in a 0600 file; loading it again gives the same salt; another path, another."""
    path = tmp_path / "keys" / "validator-0.salt"
    salt = load_or_create_salt(path)
    assert len(salt) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(path) == salt
    assert load_or_create_salt(tmp_path / "other.salt") != salt


def test_a_readable_or_corrupt_salt_is_refused(tmp_path):
    """A salt others can read protects nothing and a damaged one would silently change the pool: both are one-line
    errors."""
    path = tmp_path / "v.salt"
    load_or_create_salt(path)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="must be readable by its owner only") as e:
        load_or_create_salt(path)
    assert "\n" not in str(e.value)
    os.chmod(path, 0o600)
    path.write_text("abcd")
    with pytest.raises(ValueError, match="corrupt"):
        load_or_create_salt(path)


def test_salted_pool_is_the_salts_choice_of_held_out_blocks():
    """A pool holds the asked fraction of blocks, each verbatim from a held-out split, runs closed by EOS; the same
    salt gives the same pool and another salt another."""
    salt = bytes(range(32))
    pool = salted_pool([VAL, ROUTE], salt, 0.5)
    runs = [r for r in np.split(pool, np.nonzero(pool == EOS)[0] + 1) if len(r)]
    assert all(r[-1] == EOS for r in runs)
    held = _text(VAL) + "|" + _text(ROUTE)
    assert all(_text(r[:-1]) in held for r in runs)
    n_blocks = 20 + 21
    assert len(pool) - len(runs) == pytest.approx(round(0.5 * n_blocks) * BLOCK_TOKENS, abs=BLOCK_TOKENS)
    assert np.array_equal(pool, salted_pool([VAL, ROUTE], salt, 0.5))
    assert not np.array_equal(pool, salted_pool([VAL, ROUTE], bytes(32), 0.5))
    assert len(salted_pool([VAL[:10]], salt, 0.01)) == 11  # at least one block, closed by EOS
    with pytest.raises(ValueError, match="fraction"):
        salted_pool([VAL], salt, 0.0)


def test_pool_commitment_is_signed_and_survives_json():
    """A commit naming a pool round-trips through JSON and verifies; one whose pool was stripped or swapped does not,
    and a commit without a pool signs exactly what commits always signed."""
    hk, seed, salt = _key(), new_seed(), bytes(range(32))
    c = SeedCommit.from_json(make_commit(hk, seed, 4, pool=salt_commitment(salt)).to_json())
    check_reveal(c, seed)
    assert c.pool == salt_commitment(salt)
    stripped = SeedCommit(c.validator, 4, c.commitment, c.signature)
    swapped = SeedCommit(c.validator, 4, c.commitment, c.signature, salt_commitment(bytes(32)))
    for forged in (stripped, swapped):
        with pytest.raises(RevealError, match="not signed"):
            check_reveal(forged, seed)
    plain = make_commit(hk, seed, 4)
    assert "pool" not in plain.to_json()
    signed_before = b"hivemoe/poi/seed-commit/v1" + hk.public_bytes + (4).to_bytes(8, "big") + plain.commitment
    assert plain.message() == signed_before


def test_a_revealed_salt_lets_anyone_check_the_windows():
    """With the salt revealed, anyone rebuilds the pool from the public splits and checks the draw; a wrong salt or
    a swapped window is rejected."""
    hk, seed, salt = _key(), new_seed(), bytes(range(32))
    commit = make_commit(hk, seed, 9, pool=salt_commitment(salt))
    sizes = {k: len(v) for k, v in salted_pools(HELD_OUT, salt, 0.5).items()}
    windows = draw_windows(seed, sizes, 16, 65)
    check_salted_windows(commit, seed, salt, HELD_OUT, 0.5, 16, 65, windows)
    with pytest.raises(RevealError, match="salt does not open"):
        check_salted_windows(commit, seed, bytes(32), HELD_OUT, 0.5, 16, 65, windows)
    with pytest.raises(RevealError, match="not the draw"):
        check_salted_windows(commit, seed, salt, HELD_OUT, 0.5, 16, 65, [("code", 0), *windows[1:]])


def test_private_text_is_read_like_a_split(tmp_path):
    """Every non-empty, non-hidden file under the directory, sorted, as raw bytes each followed by EOS; a single file
    works too; the commitment changes with the text."""
    (tmp_path / "b.txt").write_text("héllo")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"\x00\xff")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden").write_text("secret swap file")
    tokens = private_tokens(str(tmp_path))
    expected = [*"héllo".encode(), EOS, 0, 255, EOS]
    assert tokens.tolist() == expected
    assert private_tokens(str(tmp_path / "b.txt")).tolist() == [*"héllo".encode(), EOS]
    assert data_commitment(tokens) != data_commitment(tokens[:-1])


def unusable_data(tmp_path, kind: str):
    """A path of private data a validator cannot use, of the given kind."""
    path = tmp_path / kind
    if kind == "empty-file":
        path.write_text("")
    elif kind == "empty-dir":
        (path / ".git").mkdir(parents=True)
        (path / ".git" / "HEAD").write_text("hidden files do not count as text")
    elif kind == "short-file":
        path.write_text("short")
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "does not exist"),
        ("empty-file", "holds no text"),
        ("empty-dir", "holds no text"),
        ("short-file", "holds 6 tokens, fewer than one evaluation window"),
    ],
)
def test_unusable_private_data_is_a_one_line_error(tmp_path, kind, message):
    """A missing path, an empty file or directory, or text shorter than one window is a one-line ValueError."""
    with pytest.raises(ValueError, match=message) as e:
        check_private_data(str(unusable_data(tmp_path, kind)), 65)
    assert "\n" not in str(e.value)
