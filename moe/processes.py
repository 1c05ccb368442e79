"""Ending processes: SIGTERM first (p2pd then removes its socket files), SIGKILL for those that linger."""

from __future__ import annotations

import psutil


def terminate(processes: list[psutil.Process], kill_after_seconds: float | None = None) -> None:
    """SIGTERM each of `processes`; given `kill_after_seconds`, SIGKILL those still there after it. A process that
    is already gone is skipped."""
    for p in processes:
        try:
            p.terminate()
        except psutil.Error:
            pass
    if kill_after_seconds is None:
        return
    _, alive = psutil.wait_procs(processes, timeout=kill_after_seconds)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
