"""Tests for moe/fileio.py: atomic JSON writes and streamed sha256 digests."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading

import numpy as np
import pytest

from moe.fileio import sha256_file, write_json


def test_write_json_round_trips_and_creates_parents(tmp_path):
    """write_json creates missing folders and writes sorted-key JSON that loads back equal; numpy floats become
    plain floats."""
    path = tmp_path / "a" / "b" / "run.json"
    write_json(path, {"z": [1, 2], "a": {"y": None, "x": "é"}, "f": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"a": {"x": "é", "y": None}, "f": 0.5, "z": [1, 2]}
    assert list(json.loads(path.read_text())) == ["a", "f", "z"]


def test_write_json_replaces_the_target_and_leaves_no_temp_file(tmp_path):
    """A shorter write replaces the file (no tail of the old one), by a rename: a reader that opened the old
    file still reads all of it, and nothing but the target is left in the folder."""
    path = tmp_path / "state.json"
    old = {"items": list(range(5000))}
    write_json(path, old)
    with open(path) as reader:
        write_json(path, {"items": [1]})
        assert json.loads(reader.read()) == old  # the old file was never truncated or rewritten in place
    assert path.read_text() == json.dumps({"items": [1]}, indent=1)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_serialization_keeps_the_old_file(tmp_path):
    """When the data cannot be serialized, write_json raises and the old file is intact, with no temp file left."""
    path = tmp_path / "state.json"
    write_json(path, {"ok": True})
    before = path.read_bytes()
    for bad in ({"x": object()}, {"x": "y", 1: {2: set()}}, {"x": float("nan"), "f": lambda: 0}):
        with pytest.raises((TypeError, ValueError)):
            write_json(path, bad)
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


FULL_DISK = """
import resource, signal, sys
from moe.fileio import write_json
write_json(sys.argv[1], {"ok": True})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # writes past 1000 bytes fail with EFBIG, like a full disk
try:
    write_json(sys.argv[1], {"big": "x" * 5000})
except OSError:
    sys.exit(0)
sys.exit(1)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE")
def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    """When the disk refuses the write, write_json raises OSError, the old file is intact and no temp file is left."""
    path = tmp_path / "state.json"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_concurrent_reader_sees_only_whole_files(tmp_path):
    """A reader polling while another thread rewrites the file always parses one of the versions written."""
    path = tmp_path / "state.json"
    versions = [{"v": i, "pad": "x" * (200_000 if i % 2 else 10)} for i in range(40)]
    write_json(path, versions[0])
    done, seen = threading.Event(), []

    def writer():
        for v in versions[1:]:
            write_json(path, v)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while not done.is_set():
            seen.append(json.loads(path.read_text())["v"])  # a partial file would fail to parse
    finally:
        t.join()
    assert json.loads(path.read_text()) == versions[-1]
    assert all(0 <= v < len(versions) for v in seen)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17])
def test_sha256_file_matches_hashlib(tmp_path, size):
    """sha256_file equals hashlib's digest of the whole content, across the 1 MiB read-block boundaries."""
    data = random.Random(size).randbytes(size)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
