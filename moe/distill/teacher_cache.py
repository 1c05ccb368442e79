"""The distiller's cache of teacher distributions, keyed by the window's bytes, so no window is paid for twice.

One file per window, named by the sha256 of its byte ids, holding the teacher's (T, 256) log-probs in a wire format
(moe.net.wire: q8 is 264 bytes a position, topk 3k). Files are written to a temporary name and renamed, so a
distiller killed mid-write leaves no half entry; an entry that does not decode (a disk error, a foreign file) is
logged, dropped and asked for again.

Several distillers may share one cache (the local network's do) and ask for the same windows at the same moment. A
distiller first claims each window it lacks (a `.claim` file created exclusively, holding its pid); it pays only for
the windows it claimed and waits for the others to appear. A claim whose process is gone (or is this process, after
a restart) is taken over, and a wait that runs out pays after all: a window may then be paid for twice, never lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
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
        logp = self._read(window)
        if logp is None:
            self.misses += 1
        else:
            self.hits += 1
        return logp

    def _read(self, window: torch.Tensor) -> torch.Tensor | None:
        path = self._path(window_key(window))
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_logp(payload, self.wire_format, (1, window.shape[0]), self.topk)[0]
        except MaliciousReply as e:
            logger.warning("teacher cache entry %s is unreadable (%s); asking again", path.name[:16], e)
            path.unlink(missing_ok=True)
            return None

    def _claim_path(self, window: torch.Tensor) -> Path:
        return self.directory / f"{window_key(window)}.{self.wire_format}.claim"

    def claim(self, window: torch.Tensor) -> bool:
        """Whether this process should pay for `window`: it now holds its claim (new, its own, or a dead one's)."""
        path = self._claim_path(window)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _claimant_alive(path):
                return False
            path.write_text(str(os.getpid()))  # a dead process's claim, or ours from before a restart
            return True
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True

    def wait(self, window: torch.Tensor, timeout: float, poll: float = 0.05) -> torch.Tensor | None:
        """The window's log-probs once the process that claimed it stored them; None if it died or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while (logp := self._read(window)) is None:
            if time.monotonic() > deadline or not _claimant_alive(self._claim_path(window)):
                return self._read(window)
            time.sleep(poll)
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
        self._claim_path(window).unlink(missing_ok=True)
        return decode_logp(payload, self.wire_format, (1, window.shape[0]), self.topk)[0]


def _claimant_alive(claim: Path) -> bool:
    """Whether the process named in a claim file still runs (and is not this one)."""
    try:
        pid = int(claim.read_text() or "0")
    except (FileNotFoundError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
