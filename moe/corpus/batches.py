"""Token pipeline: a subnet split as one contiguous byte-token array, random training windows and eval windows.

A split's jsonl (written by `moe.corpus.fetch_subnet`) is read once through `datasets` into `<split>.bin` (uint16,
each document followed by EOS) next to it; later loads memory-map that file, so startup is instant and the array is
shared between processes by the page cache. The cache is rebuilt when the jsonl changes or the .bin is damaged.
Sampling is plain numpy fancy indexing (no workers): a (16, 256) batch costs microseconds, far below a train step.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from moe.corpus import SPLITS, CorpusError, Subnet, fetch_subnet
from moe.model.tokenizer import EOS, PAD, TOKEN_DTYPE, VOCAB_SIZE

logger = logging.getLogger(__name__)

IGNORE = PAD
"""Target id of positions an eval window must not score (scored elsewhere); metrics skip every id >= 256."""


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
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
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


def load_subnet_tokens(
    subnet: Subnet, split: str, cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Token stream of a subnet split, fetching the subnet first if needed (see `moe.corpus.fetch_subnet`)."""
    return load_tokens(fetch_subnet(subnet, cache_dir, max_bytes=max_bytes), split)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    return tokens[starts[:, None] + np.arange(seq_len + 1)]  # (B, T+1)


def _split_xy(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.astype(np.int64, copy=False)  # (B, T+1)
    return torch.from_numpy(w[:, :-1].copy()), torch.from_numpy(w[:, 1:].copy())  # (B, T), (B, T); no shared memory


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _split_xy(_gather(tokens, starts, seq_len))


class ByteBatches:
    """Endless (x, y) LongTensor batches (B, T) of windows at uniformly random offsets; y is x shifted by one.

    Deterministic per seed; `state_dict()` / `load_state_dict()` resume the exact sequence after a checkpoint.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"token stream of {len(tokens)} tokens is too short for windows of {seq_len} + 1")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of `n` windows (default `batch_size`)."""
        return _windows(self.tokens, self._starts(n), self.seq_len)

    def _starts(self, n: int | None = None) -> np.ndarray:
        n = self.batch_size if n is None else n
        return self.rng.integers(0, len(self.tokens) - self.seq_len, size=n)  # last start leaves room for y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class BlendedBatches:
    """Batches whose rows come from several samplers, each row's source drawn with probability `weights[k]`.

    Used to train the shared seed model on all subnets at once; `sample()` also returns each row's source index.
    """

    def __init__(self, samplers: Sequence[ByteBatches], weights: Sequence[float], batch_size: int, seed: int = 0):
        if not samplers or len(samplers) != len(weights):
            raise ValueError(f"need one weight per sampler, got {len(samplers)} samplers and {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"blend weights must be finite, >= 0 and not all zero, got {list(weights)}")
        if len({s.seq_len for s in samplers}) != 1:
            raise ValueError(f"samplers disagree on seq_len: {[s.seq_len for s in samplers]}")
        self.samplers, self.p, self.batch_size = list(samplers), w / w.sum(), batch_size
        self.seq_len = samplers[0].seq_len
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, source) with x, y (B, T) and source (B,) the sampler index of each row."""
        src = self.rng.choice(len(self.samplers), size=self.batch_size, p=self.p)  # (B,)
        w = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)  # (B, T+1)
        for k in np.unique(src):
            rows = np.flatnonzero(src == k)
            s = self.samplers[k]
            w[rows] = _gather(s.tokens, s._starts(len(rows)), self.seq_len)
        x, y = _split_xy(w)
        return x, y, torch.from_numpy(src)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            x, y, _ = self.sample()
            yield x, y

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        for s, st in zip(self.samplers, state["samplers"], strict=True):
            s.load_state_dict(st)


def iter_eval_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_windows: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of consecutive windows that score every target of the split exactly once.

    Windows start at 0, T, 2T, ...; the last one is moved back to end at the stream's end and its targets already
    scored by the previous window are set to IGNORE. With `max_windows`, that many windows evenly spread over the
    split are used instead (deterministic; each target still scored at most once). The last batch may be smaller.
    """
    N = len(tokens)
    if N < seq_len + 1:
        raise ValueError(f"eval stream of {N} tokens is too short for windows of {seq_len} + 1")
    K = -(-(N - 1) // seq_len)  # windows needed to cover the N - 1 targets
    ks = np.arange(K)
    if max_windows and max_windows < K:
        ks = np.unique(np.linspace(0, K - 1, max_windows).round().astype(np.int64))
    starts = np.minimum(ks * seq_len, N - 1 - seq_len)
    scored_until = -1  # last stream position already scored as a target
    for i in range(0, len(starts), batch_size):
        s = starts[i : i + batch_size]
        x, y = _windows(tokens, s, seq_len)
        for r, start in enumerate(s.tolist()):
            overlap = scored_until - start  # targets at positions start+1 .. scored_until were scored before
            if overlap > 0:
                y[r, :overlap] = IGNORE
            scored_until = start + seq_len
        yield x, y
