"""The distiller's cache of teacher distributions, keyed by the window's bytes, so no window is paid for twice.

One file per window, named by the sha256 of its byte ids, holding the teacher's (T, 256) log-probs in a wire format
(moe.net.wire: q8 is 264 bytes a position, topk 3k). Files are written to a temporary name and renamed, so a
distiller killed mid-write leaves no half entry; an entry that does not decode (a disk error, a foreign file) is
logged, dropped and asked for again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from moe.net.wire import MaliciousReply, decode_logp, encode_logp

logger = logging.getLogger(__name__)


def window_key(window: torch.Tensor) -> str:
    """sha256 of a (T,) window's ids as little-endian int16: the same bytes give the same key on any machine."""
    return hashlib.sha256(window.to(torch.int16).numpy().astype("<i2").tobytes()).hexdigest()


class TeacherCache:
    """Teacher log-probs of windows already asked for, on disk under `directory`."""

    def __init__(self, directory: str | Path, wire_format: str = "q8", topk: int = 16):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.wire_format, self.topk = wire_format, topk
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.{self.wire_format}"

    def get(self, window: torch.Tensor) -> torch.Tensor | None:
        """(T, 256) log-probs of a (T,) window, or None when it was never stored (or its entry is unreadable)."""
        path = self._path(window_key(window))
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            logp = decode_logp(payload, self.wire_format, (1, window.shape[0]), self.topk)[0]
        except MaliciousReply as e:
            logger.warning("teacher cache entry %s is unreadable (%s); asking again", path.name[:16], e)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return logp

    def put(self, window: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """Store a (T,) window's (T, 256) log-probs; returns them as the wire format keeps them, which is what a later
        `get` returns: a window reads the same whether just asked for or cached (an exact resume needs that)."""
        payload = encode_logp(logp.unsqueeze(0), self.wire_format, self.topk)
        path = self._path(window_key(window))
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
        return decode_logp(payload, self.wire_format, (1, window.shape[0]), self.topk)[0]
