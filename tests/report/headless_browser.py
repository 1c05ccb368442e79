"""A page rendered in headless Chromium, driven over the DevTools protocol on a pipe (no port, no network).

    page = render(Path("report.html"), "document.title")
    page.screenshot          # PNG bytes of the whole page
    page.errors              # console errors, uncaught exceptions and failed loads, one line each
    page.value               # what the expression evaluated to

`--remote-debugging-pipe` makes Chromium read NUL-terminated JSON commands on fd 3 and answer on fd 4; unlike
`--enable-logging=stderr` (which prints every console line at INFO, whatever its level) the protocol says which
messages are errors, and it also reports resources that failed to load.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RenderedPage:
    screenshot: bytes
    value: Any
    errors: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, chromium: str, width: int, height: int, timeout: float):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child gets them as fds 3 and 4 by dup2 from numbers >= 10, so neither dup2 overwrites the other's source
        to_browser_r, from_browser_w = _renumbered(to_browser_r), _renumbered(from_browser_w)
        args = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile.name}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self.messages.put(json.loads(m))
        self.messages.put(None)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its answer (events meanwhile are kept in `events`)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        return self._wait(lambda m: m.get("id") == self._next_id, f"an answer to {method}")

    def wait_event(self, method: str) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        return self._wait(lambda m: m.get("method") == method, f"event {method}", keep=False)

    def _wait(self, match, what: str, keep: bool = True) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"chromium sent no {what} within {self.timeout:.0f} s") from None
            if m is None:
                raise RuntimeError(f"chromium closed its pipe before {what}")
            if match(m):
                if "error" in m:
                    raise RuntimeError(f"chromium: {m['error']}")
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        self.profile.cleanup()


def _renumbered(fd: int, lowest: int = 10) -> int:
    """`fd` moved to the lowest free number >= `lowest`."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return high


def render(
    page: Path, expression: str, chromium: str = "chromium", width: int = 1280, height: int = 900, timeout: float = 60
) -> RenderedPage:
    """Load `page` (a local file), evaluate `expression` in it, take a full-page screenshot, and collect every
    console error, uncaught exception and failed load."""
    browser = Browser(chromium, width, height, timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["result"]["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["result"]["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        answer = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        value = answer["result"]["result"].get("value")
        full_page = {"format": "png", "captureBeyondViewport": True}
        shot = browser.send("Page.captureScreenshot", full_page, session=session)
        return RenderedPage(base64.b64decode(shot["result"]["data"]), value, _errors(browser.events))
    finally:
        browser.close()


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            out.append(f"load failed: {p.get('errorText')}")
    return out
