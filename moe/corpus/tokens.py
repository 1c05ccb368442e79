"""Token files: a subnet split as one contiguous byte-token array, built once and memory-mapped after that.

A split's jsonl (written by `moe.corpus.fetch_subnet`) is read once through `datasets` into `<split>.bin` (uint16,
each document followed by EOS) next to it; later loads memory-map that file, so startup is instant and the array is
shared between processes by the page cache. The cache is rebuilt when the jsonl changes or the .bin is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moe.corpus.archives import CorpusError
from moe.corpus.cache import SHIFTED, SLICE_BYTES, SPLITS, fetch_subnet
from moe.corpus.subnet import Subnet
from moe.model.tokenizer import EOS, TOKEN_DTYPE, VOCAB_SIZE

logger = logging.getLogger(__name__)


@dataclass
class CorpusConfig:
    """Where a node finds its subnets' text."""

    data_dir: str = ""
    """Corpus cache; empty uses $HIVEMOE_DATA or ~/.cache/hivemoe/data."""
    slice: bool = False
    """Use the small (~200 KB a domain) slice built for tests."""


def subnet_folder(subnet: Subnet, corpus: CorpusConfig) -> Path:
    """The subnet's fetched split files (fetching once if the cache is missing)."""
    return fetch_subnet(subnet, corpus.data_dir or None, max_bytes=SLICE_BYTES if corpus.slice else None)


def subnet_tokens(subnet: Subnet, split: str, corpus: CorpusConfig) -> np.ndarray:
    """Token stream of one split of a subnet, fetching the subnet first if needed."""
    return load_tokens(subnet_folder(subnet, corpus), split)


def shifted_tokens(subnet: Subnet, corpus: CorpusConfig) -> np.ndarray | None:
    """Token stream of the subnet's shifted evaluation set, or None when it declares none or it could not be
    fetched here (then nothing is reported on shifted text for this subnet)."""
    folder = subnet_folder(subnet, corpus)
    return load_tokens(folder, SHIFTED) if (folder / f"{SHIFTED}.jsonl").is_file() else None


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _build_bin(jsonl: Path, out: Path) -> int:
    """Encode every document of `jsonl` (read with `datasets`) followed by EOS into `out`; returns the token count."""
    import datasets

    n = 0
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        if jsonl.stat().st_size > 0:
            with tempfile.TemporaryDirectory(prefix="hivemoe-ds-") as cache:
                bars = datasets.is_progress_bar_enabled()
                datasets.disable_progress_bars()  # one bar a split would clutter the trainer's display
                try:
                    ds = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=cache)
                except Exception as e:  # datasets wraps parse errors in several types
                    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                    raise CorpusError(f"{jsonl} is not valid jsonl: {type(e).__name__}: {msg}") from None
                finally:
                    if bars:
                        datasets.enable_progress_bars()
                if "text" not in ds.column_names:
                    raise CorpusError(f"{jsonl} rows have no 'text' field (columns: {ds.column_names})")
                for batch in ds.select_columns(["text"]).iter(batch_size=256):
                    enc = [t.encode("utf-8") for t in batch["text"] if isinstance(t, str)]
                    flat = np.frombuffer(b"".join(enc), dtype=np.uint8).astype(TOKEN_DTYPE)
                    ends = np.cumsum([len(e) for e in enc], dtype=np.int64)
                    b = np.insert(flat, ends, EOS)  # EOS after each document
                    f.write(b.tobytes())
                    n += len(b)
    os.replace(tmp, out)
    return n


def load_tokens(directory: str | os.PathLike, split: str) -> np.ndarray:
    """Read-only uint16 token stream of one split of a fetched subnet folder (documents each followed by EOS).

    Built once from `<split>.jsonl` into `<split>.bin`; a stale or damaged .bin (wrong size, ids outside the
    vocabulary) is logged and rebuilt. Raises `CorpusError` when the jsonl is missing or malformed.
    """
    if split not in (*SPLITS, SHIFTED):
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, SHIFTED)}")
    d = Path(directory)
    jsonl, bin_path, meta_path = d / f"{split}.jsonl", d / f"{split}.bin", d / f"{split}.bin.json"
    if not jsonl.is_file():
        raise CorpusError(f"{jsonl} not found; fetch the subnet first (python -m subnets.fetch)")
    stamp = _source_stamp(jsonl)
    try:
        meta = json.loads(meta_path.read_text())
        n = int(meta["tokens"])
        if meta.get("source") == stamp and bin_path.stat().st_size == n * np.dtype(TOKEN_DTYPE).itemsize:
            tokens = np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r", shape=(n,)) if n else np.zeros(0, TOKEN_DTYPE)
            if n == 0 or int(tokens.max()) < VOCAB_SIZE:
                return tokens
            logger.warning("%s holds ids outside the vocabulary; rebuilding it", bin_path)
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        logger.warning("%s is unreadable (%s); rebuilding the token cache", meta_path, e)
    n = _build_bin(jsonl, bin_path)
    tmp = meta_path.with_name(f".{meta_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"tokens": n, "dtype": np.dtype(TOKEN_DTYPE).name, "source": stamp}) + "\n")
    os.replace(tmp, meta_path)
    logger.info("%s: %d tokens cached in %s", jsonl, n, bin_path)
    return np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r", shape=(n,)) if n else np.zeros(0, TOKEN_DTYPE)
