"""Data domains and their text: declarative sources, pinned archives and the fetch-once document cache."""

from __future__ import annotations

from moe.corpus.archives import ChecksumError, CorpusError, SourceUnavailable
from moe.corpus.cache import (
    SHIFTED,
    SLICE_BYTES,
    SPLITS,
    build_slice,
    chunk_text,
    default_cache_dir,
    fetch_subnet,
    read_documents,
    read_manifest,
    select_budget,
    split_of,
    subnet_dir,
)
from moe.corpus.sources import DebSource, HubDataset, LocalFiles, Source, StdlibSource, WheelSource
from moe.corpus.subnet import Subnet

__all__ = [
    "SHIFTED",
    "SLICE_BYTES",
    "SPLITS",
    "ChecksumError",
    "CorpusError",
    "DebSource",
    "HubDataset",
    "LocalFiles",
    "Source",
    "SourceUnavailable",
    "StdlibSource",
    "Subnet",
    "WheelSource",
    "build_slice",
    "chunk_text",
    "default_cache_dir",
    "fetch_subnet",
    "read_documents",
    "read_manifest",
    "select_budget",
    "split_of",
    "subnet_dir",
]
