"""Fetch-once cache of a subnet's documents: `<cache_dir>/<name>/{train,val,route}.jsonl` plus `manifest.json`.

The pipeline is deterministic: source documents in source order → chunks of ~`chunk_bytes` at line boundaries →
a hash-chosen subset within the byte budget (kept in source order) → a split chosen by a hash of each chunk's text.
The same pins give the same files byte for byte, and a document lands in the same split on every machine, so a
validator's val set is never in anyone's training data. A second `fetch_subnet` with a valid manifest (same source
description, output files matching their recorded sha256) reads nothing and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from moe.corpus.archives import CorpusError, SourceUnavailable
from moe.corpus.subnet import Subnet
from moe.fileio import sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Bumped whenever chunking, selection or split rules change, so old caches are rebuilt."""
SPLITS = ("train", "val", "route")
"""The splits of a subnet's own corpus, chosen per document by a hash of its text."""
SHIFTED = "shifted"
"""The split holding the subnet's shifted evaluation set (text from another source; see `Subnet.shifted`)."""
SLICE_BYTES = 200_000
"""Size of the small per-subnet slice tests and quick runs use."""
SCAN_FACTOR = 3
"""A source is read until this many times the subnet's `max_bytes` have been seen (bounds time on huge sources)."""


def default_cache_dir() -> Path:
    """`$HIVEMOE_DATA`, else `~/.cache/hivemoe/data`."""
    return Path(os.environ.get("HIVEMOE_DATA") or "~/.cache/hivemoe/data").expanduser()


def subnet_dir(cache_dir: str | os.PathLike | None, name: str, max_bytes: int | None = None) -> Path:
    """Folder of a subnet's files; a reduced-size slice gets its own folder `<name>-<max_bytes>B`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / (name if max_bytes is None else f"{name}-{max_bytes}B")


def _unit(salt: bytes, text: str) -> float:
    """A uniform number in [0, 1) fixed by the text alone."""
    return int.from_bytes(hashlib.sha256(salt + text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(text: str, eval_fraction: float, route_fraction: float = 0.0) -> str:
    """'val' if the text's hash is in the first `eval_fraction`, 'route' in the next `route_fraction`, else 'train'."""
    u = _unit(b"hivemoe/split\0", text)
    if u < eval_fraction:
        return "val"
    if u < eval_fraction + route_fraction:
        return "route"
    return "train"


def chunk_text(text: str, target_bytes: int = 8192, boundary: str | None = None) -> list[str]:
    """Cut `text` at line boundaries into pieces of about `target_bytes` UTF-8 bytes (at most twice that).

    Once a piece reaches `target_bytes` it ends after the next blank line or before a line matching `boundary`;
    a piece is cut anywhere between lines if it would pass 2 * `target_bytes`. A single longer line is cut inside.
    Whitespace-only pieces are dropped.
    """
    limit = 2 * target_bytes
    rx = re.compile(boundary) if boundary else None
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    prev_blank = False

    def flush() -> None:
        nonlocal cur, n
        piece = "".join(cur)
        if piece.strip():
            chunks.append(piece)
        cur, n = [], 0

    for line in text.splitlines(keepends=True):
        b = len(line.encode("utf-8"))
        if cur and ((n >= target_bytes and (prev_blank or (rx is not None and rx.match(line)))) or n + b > limit):
            flush()
        if b > limit:
            step = limit // 4  # a character is at most 4 bytes, so `step` characters fit the limit
            for i in range(0, len(line), step):
                cur.append(line[i : i + step])
                flush()
            prev_blank = False
            continue
        cur.append(line)
        n += b
        prev_blank = not line.strip()
    flush()
    return chunks


def select_budget(docs: list[str], max_bytes: int) -> list[str]:
    """Documents within `max_bytes`, picked in an order fixed by their hashes (a spread over the source), in order."""
    sizes = [len(d.encode("utf-8")) for d in docs]
    if sum(sizes) <= max_bytes:
        return docs
    rank = sorted(range(len(docs)), key=lambda i: _unit(b"hivemoe/select\0", docs[i]))
    keep, total = set(), 0
    for i in rank:
        if total + sizes[i] <= max_bytes:
            keep.add(i)
            total += sizes[i]
    return [d for i, d in enumerate(docs) if i in keep]


def _key(subnet: Subnet, max_bytes: int | None) -> dict:
    """Everything that determines the output; a manifest with another key is stale."""
    return {"format": FORMAT_VERSION, "subnet": subnet.name, "netuid": subnet.netuid,
            "source": subnet.source.describe(), "max_bytes": subnet.max_bytes, "slice_bytes": max_bytes,
            "eval_fraction": subnet.eval_fraction, "route_fraction": subnet.route_fraction,
            "chunk_bytes": subnet.chunk_bytes, "shifted_bytes": subnet.shifted_bytes,
            "shifted": None if subnet.shifted is None else subnet.shifted.describe()}  # fmt: skip


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a fetched subnet folder; `CorpusError` if it is missing or not valid JSON."""
    path = Path(directory) / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorpusError(f"{path} not found; fetch the subnet first (python -m subnets.fetch)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path} is corrupt: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("splits"), dict):
        raise CorpusError(f"{path} is not a hivemoe manifest")
    return m


def _is_current(directory: Path, key: dict) -> bool:
    try:
        m = read_manifest(directory)
    except CorpusError:
        return False
    if m.get("key") != key:
        logger.info("%s: manifest is for another source or settings; rebuilding", directory)
        return False
    for split, info in m["splits"].items():
        path = directory / f"{split}.jsonl"
        if not path.is_file() or sha256_file(path) != info.get("sha256"):
            logger.warning("%s: %s does not match its manifest; rebuilding", directory, path.name)
            return False
    return True


def _collect(subnet: Subnet, archive_dir: Path) -> list[str]:
    """Chunked documents of the subnet's source, within its byte budget."""
    docs: list[str] = []
    seen, limit = 0, SCAN_FACTOR * subnet.max_bytes
    for raw in subnet.source.documents(archive_dir):
        for c in chunk_text(raw, subnet.chunk_bytes, subnet.source.boundary):
            docs.append(c)
            seen += len(c.encode("utf-8"))
        if seen >= limit:
            logger.info("%s: stopped reading the source after %d bytes", subnet.name, seen)
            break
    return select_budget(docs, subnet.max_bytes)


def _slice(docs: list[str], subnet: Subnet, max_bytes: int) -> list[str]:
    """A subset within `max_bytes` whose val and route splits keep their shares (at least one document each)."""
    sizes = [len(d.encode("utf-8")) for d in docs]
    by: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, d in enumerate(docs):
        by[split_of(d, subnet.eval_fraction, subnet.route_fraction)].append(i)

    def pick(idx: list[int], budget: int) -> list[int]:
        rank = sorted(idx, key=lambda i: _unit(b"hivemoe/select\0", docs[i]))  # same order as select_budget
        out, total = [], 0
        for i in rank:
            if total + sizes[i] <= budget:
                out.append(i)
                total += sizes[i]
        return out

    keep: list[int] = []
    for s, fraction in (("val", subnet.eval_fraction), ("route", subnet.route_fraction)):
        chosen = pick(by[s], int(fraction * max_bytes))
        if not chosen and by[s] and fraction > 0:
            chosen = [min(by[s], key=lambda i: sizes[i])]
        keep += chosen
    keep += pick(by["train"], max(max_bytes - sum(sizes[i] for i in keep), 0))
    return [docs[i] for i in sorted(keep)]


def _collect_shifted(subnet: Subnet, archive_dir: Path) -> list[str]:
    """The shifted evaluation set: chunks of the other source within `shifted_bytes`, spread over it; empty (logged)
    when that source cannot be reached here, so a missing shifted set never costs the subnet its corpus."""
    if subnet.shifted is None:
        return []
    docs: list[str] = []
    try:
        for raw in subnet.shifted.documents(archive_dir):
            docs += chunk_text(raw, min(subnet.chunk_bytes, subnet.shifted_bytes // 8), subnet.shifted.boundary)
    except SourceUnavailable as e:
        logger.warning("%s: shifted evaluation set skipped: %s", subnet.name, e)
        return []
    return select_budget(docs, subnet.shifted_bytes)


def fetch_subnet(
    subnet: Subnet, cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None, force: bool = False
) -> Path:
    """Folder holding the subnet's split files, building it on first use; later calls with a valid manifest are free.

    `max_bytes` builds a smaller slice (a subset of the full corpus, same splits) in its own folder. Raises
    `SourceUnavailable` when the source cannot be reached, `ChecksumError` on a pin mismatch, `CorpusError` when the
    source yields no text. A half-written folder is never left behind: files are written aside and renamed.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = subnet_dir(root, subnet.name, max_bytes)
    key = _key(subnet, max_bytes)
    if not force and _is_current(out, key):
        logger.debug("%s: cache at %s is current", subnet.name, out)
        return out
    docs = _collect(subnet, root / "archives")
    if max_bytes is not None:
        docs = _slice(docs, subnet, max_bytes)
    if not docs:
        raise CorpusError(f"subnet {subnet.name}: the source yielded no text")
    shifted = _collect_shifted(subnet, root / "archives")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = (*SPLITS, SHIFTED) if shifted else SPLITS
    files = {s: open(tmp / f"{s}.jsonl", "w", encoding="utf-8") for s in splits}
    stats = {s: {"documents": 0, "bytes": 0} for s in splits}
    try:
        labelled = [(split_of(d, subnet.eval_fraction, subnet.route_fraction), d) for d in docs]
        for s, d in [*labelled, *((SHIFTED, d) for d in shifted)]:
            files[s].write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
            stats[s]["documents"] += 1
            stats[s]["bytes"] += len(d.encode("utf-8"))
    finally:
        for f in files.values():
            f.close()
    for s in splits:
        stats[s]["sha256"] = sha256_file(tmp / f"{s}.jsonl")
    corpus_bytes = sum(stats[s]["bytes"] for s in SPLITS)  # the shifted set is not part of the corpus budget
    manifest = {"key": key, "splits": stats, "documents": len(docs), "bytes": corpus_bytes}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if not force and _is_current(out, key):  # another process finished the same build meanwhile: keep its files
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    if out.exists():
        shutil.rmtree(out)  # token caches next to the jsonl files are derived and rebuilt on load
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_current(out, key):
            raise
    if stats["val"]["documents"] == 0:
        logger.warning("%s: the val split is empty (too few documents); evaluation on it is impossible", subnet.name)
    logger.info("%s: wrote %d documents (%d bytes) to %s", subnet.name, len(docs), manifest["bytes"], out)
    return out


def build_slice(subnet: Subnet, cache_dir: str | os.PathLike | None = None, max_bytes: int = SLICE_BYTES) -> Path:
    """A small deterministic slice (default ~200 KB) of the subnet for tests and quick runs."""
    return fetch_subnet(subnet, cache_dir, max_bytes=max_bytes)


def read_documents(directory: str | os.PathLike, split: str) -> Iterator[str]:
    """Texts of one split of a fetched subnet folder, in file order."""
    if split not in (*SPLITS, SHIFTED):
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, SHIFTED)}")
    path = Path(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path} not found; fetch the subnet first (python -m subnets.fetch)")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(f"{path}:{i} is not a {{'text': ...}} JSON line") from None
