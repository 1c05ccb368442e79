"""Tests for subnets/: discovery of declared domains, lookup errors and the fetch command."""

from __future__ import annotations

import random

import pytest

from moe.corpus import SourceUnavailable, Subnet, read_documents, read_manifest
from moe.corpus.tokens import CorpusConfig, subnet_folder
from subnets import all_subnets, get_subnet
from subnets.fetch import main as fetch_main


def test_discovers_the_default_subnets():
    """Every module declaring SUBNET is found, with the agreed netuids, ordered by netuid."""
    subnets = all_subnets()
    assert {n: s.netuid for n, s in subnets.items()} == {"english": 1, "code": 2, "math": 3, "persian": 4}
    assert list(subnets) == ["english", "code", "math", "persian"]
    assert all(isinstance(s, Subnet) and s.source.describe()["kind"] for s in subnets.values())


def test_pinned_sources_carry_checksums():
    """Every downloaded default source is pinned to an exact version and a 64-hex-digit sha256."""
    for s in all_subnets().values():
        d = s.source.describe()
        if d["kind"] in ("pypi", "deb"):
            assert d["version"] and len(d["sha256"]) == 64 and int(d["sha256"], 16) >= 0


def test_unknown_subnet_lists_known_names():
    """Asking for a missing subnet raises KeyError naming the known ones."""
    assert get_subnet("code").name == "code"
    with pytest.raises(KeyError, match="known subnets: english, code, math, persian"):
        get_subnet("klingon")


def test_fetch_command_builds_a_slice(tmp_path, capsys):
    """`python -m subnets.fetch --slice code` writes the stdlib slice and prints one line about it."""
    assert fetch_main(["--cache", str(tmp_path), "--slice", "code"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("code:") and "docs" in line
    m = read_manifest(tmp_path / "code-200000B")
    assert 0 < m["bytes"] <= 200_000
    assert fetch_main(["--cache", str(tmp_path), "nope"]) == 2


def test_math_is_skipped_without_apt(tmp_path, monkeypatch, capsys):
    """Where apt-get cannot be found, fetching the math subnet prints a one-line skip warning and does not fail."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert fetch_main(["--cache", str(tmp_path), "--slice", "math"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("math: skipped:") and "apt-get not found" in out and "\n" not in out
    assert not (tmp_path / "math-200000B").exists()


def test_every_subnet_declares_a_shifted_source():
    """Every declared subnet names a shifted evaluation source, described differently from its training source."""
    for s in all_subnets().values():
        assert s.shifted is not None and s.shifted.describe()["kind"]
        assert s.shifted.describe() != s.source.describe()


@pytest.mark.parametrize("name", list(all_subnets()))
def test_fetched_slice_holds_a_disjoint_shifted_set(name):
    """The subnet's fetched slice (python -m subnets.fetch --slice) holds a non-empty shifted.jsonl of at most
    shifted_bytes whose documents share no 64-byte substring with the train split (50 sampled a document)."""
    subnet = all_subnets()[name]
    try:
        folder = subnet_folder(subnet, CorpusConfig(slice=True))
    except SourceUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")
    assert (folder / "shifted.jsonl").is_file()
    shifted = [d.encode() for d in read_documents(folder, "shifted")]
    assert shifted and 0 < sum(len(d) for d in shifted) <= subnet.shifted_bytes
    assert read_manifest(folder)["splits"]["shifted"]["bytes"] == sum(len(d) for d in shifted)
    train = "\x00".join(read_documents(folder, "train")).encode()
    rng = random.Random(0)
    for d in shifted:
        starts = range(len(d) - 63)  # empty for a document shorter than 64 bytes
        for i in rng.sample(starts, min(50, len(starts))):
            piece = d[i : i + 64]
            assert piece not in train, f"{name}: shifted text also in train: {piece!r}"
