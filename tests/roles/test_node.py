"""Tests for moe/roles/node.py: the status board, a node's logging, waiting for a stop signal, random streams."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from moe.roles.node import StatusBoard, Stream, setup_logging

ROOT = Path(__file__).resolve().parents[2]


def test_update_writes_readable_json_and_merges(tmp_path):
    """update() writes the board as JSON with the node's name and time, keeping earlier fields until overwritten."""
    board = StatusBoard(tmp_path / "status", "expert-code")
    board.update(phase="training", step=3)
    board.update(step=4)
    data = json.loads((tmp_path / "status" / "expert-code.json").read_text())
    assert data["name"] == "expert-code" and data["phase"] == "training" and data["step"] == 4
    assert isinstance(data["updated"], float)
    assert StatusBoard.read_all(tmp_path / "status") == {"expert-code": data}


def test_read_all_never_sees_a_half_written_board(tmp_path):
    """While a node rewrites its board continuously, every read parses and shows one complete update."""
    status = tmp_path / "status"
    board = StatusBoard(status, "seed")
    board.update(step=0, pad="x" * 20000)  # big enough that a non-atomic write would be seen half done
    done = threading.Event()

    def writer():
        for step in range(1, 300):
            board.update(step=step, pad=str(step % 10) * 20000)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        while not done.is_set() or reads < 50:
            seen = StatusBoard.read_all(status)
            assert set(seen) == {"seed"}
            assert seen["seed"]["pad"] == str(seen["seed"]["step"] % 10) * 20000 or seen["seed"]["step"] == 0
            reads += 1
    finally:
        t.join()


def test_read_all_skips_corrupt_and_temporary_files(tmp_path):
    """A board caught mid-rewrite (truncated JSON) or a writer's temporary file is skipped; the others are read."""
    status = tmp_path / "status"
    StatusBoard(status, "router").update(phase="done")
    (status / "expert-code.json").write_text('{"name": "expert-code", "pha')
    (status / ".seed.json.123.tmp").write_text('{"name": "seed"}')
    seen = StatusBoard.read_all(status)
    assert list(seen) == ["router"] and seen["router"]["phase"] == "done"


def test_read_all_of_missing_folder_is_empty(tmp_path):
    """Before any node has written its board, the folder may not exist: read_all returns nothing, no error."""
    assert StatusBoard.read_all(tmp_path / "status") == {}


@pytest.fixture
def restore_logging(monkeypatch):
    """Put the root logger (and the loggers setup_logging quietens) back as they were after the test."""
    monkeypatch.delenv("HIVEMOE_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("hivemind", "asyncio", "filelock", "datasets", "urllib3")}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    for n, lvl in noisy.items():
        logging.getLogger(n).setLevel(lvl)


def test_setup_logging_info_to_file_warnings_to_console(tmp_path, capsys, restore_logging):
    """After setup_logging, INFO lines go to `<logs>/<name>.log` only; warnings go to the file and the console."""
    setup_logging(tmp_path / "logs", "expert-code")
    log = logging.getLogger("moe.test")
    log.debug("debug-line")
    log.info("info-line")
    log.warning("warning-line")
    for h in logging.getLogger().handlers:
        h.flush()
    text = (tmp_path / "logs" / "expert-code.log").read_text()
    # level names as registered (importing hivemind renames WARNING to WARN)
    info, warning = logging.getLevelName(logging.INFO), logging.getLevelName(logging.WARNING)
    assert f"{info} moe.test: info-line" in text and f"{warning} moe.test: warning-line" in text
    assert "debug-line" not in text
    err = capsys.readouterr().err
    assert f"[expert-code] {warning} warning-line" in err
    assert "info-line" not in err and "debug-line" not in err


def test_setup_logging_level_from_environment_and_no_duplicates(tmp_path, monkeypatch, restore_logging):
    """$HIVEMOE_LOG_LEVEL=DEBUG lets debug lines into the file, hivemind's chatter stays out, and a second call
    replaces the handlers instead of adding to them (each line appears once)."""
    monkeypatch.setenv("HIVEMOE_LOG_LEVEL", "debug")
    setup_logging(tmp_path / "logs", "seed")
    setup_logging(tmp_path / "logs", "seed")
    logging.getLogger("moe.test").debug("debug-line")
    logging.getLogger("hivemind.dht").info("hivemind-info")
    for h in logging.getLogger().handlers:
        h.flush()
    text = (tmp_path / "logs" / "seed.log").read_text()
    assert text.count("debug-line") == 1
    assert "hivemind-info" not in text


WAITER = textwrap.dedent(
    """
    import signal, threading, time
    from moe.roles.node import wait_for_stop

    def announce():  # once wait_for_stop has installed its handlers, tell the test it may signal
        while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            time.sleep(0.01)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    wait_for_stop()
    print("stopped", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_wait_for_stop_returns_on_signal(sig):
    """A process blocked in wait_for_stop returns normally (runs the code after it, exits 0) on SIGTERM or SIGINT."""
    p = subprocess.Popen(
        [sys.executable, "-c", WAITER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.poll() is not None else ""
        assert p.poll() is None, "wait_for_stop returned before any signal"
        os.kill(p.pid, sig)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert out.strip() == "stopped"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_stream_offsets_are_distinct_and_clear_of_netuids():
    """Every role's random stream differs, and none coincides with a subnet's own stream (seed + netuid)."""
    from subnets import all_subnets

    offsets = [s.value for s in Stream]
    assert len(set(offsets)) == len(offsets)
    netuids = {s.netuid for s in all_subnets().values()}
    assert not netuids & set(offsets)
