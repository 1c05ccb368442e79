"""Fixtures shared across test packages: real hivemind DHT peers on loopback, always shut down, and one finished tiny
network run that every test reading a run directory shares."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_RUN_TIMEOUT = 270.0
"""Seconds the whole tiny network may take (about 60 on 2 cores with wandb offline; under the 300 s test timeout)."""


@contextmanager
def _joined_pair() -> Iterator[tuple]:
    """A bootstrap peer and a second peer joined through it."""
    from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs

    a = start_bootstrap_dht()
    try:
        b = start_dht(visible_maddrs(a))
        try:
            yield a, b
        finally:
            b.shutdown()
    finally:
        a.shutdown()


@pytest.fixture(scope="module")
def dht_pair():
    """Two joined DHT peers shared by a module's tests (each test uses its own keys, so records do not collide)."""
    with _joined_pair() as pair:
        yield pair


@pytest.fixture
def fresh_dht_pair():
    """Two joined DHT peers for one test (for tests of global keys, such as the seed's)."""
    with _joined_pair() as pair:
        yield pair


@dataclass
class TinyRun:
    run_dir: Path
    result: object
    """The CompletedProcess of `python train.py configs/tiny.yaml ...`."""
    summary: dict
    leftovers: list
    """(pid, name) of processes of the run still alive 15 s after it exited (should be none)."""
    procs: object


TINY_MINERS = "english:2,english@10:0.5,code,math,persian"
"""The tiny run's miners: English is a market of two, the second trained 10 steps against the others' 30, and
charging 0.5 TAO per million bytes against the first's 2 (the rest charge `expert.price_tao_per_mbyte`)."""
TINY_MARKET = ["expert.price_tao_per_mbyte=1.0", "expert.settle_interval_seconds=1.0", "router.escrow_tao=10"]
"""The tiny run's experts charge 1 TAO per million bytes; the router and each distiller pay from a 10 TAO escrow."""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Iterator[TinyRun]:
    """The tiny local network run once per test session (seed, five priced experts: two competing on English, one
    trained a third as long; router and distillers paying from escrow, validators, ledger, students, wandb offline;
    no baselines), as real OS processes over loopback; tests only read its directory."""
    from roles.conftest import Procs

    out = tmp_path_factory.mktemp("tiny-run")
    procs = Procs(out / "proc-logs")
    try:
        args = [f"out_dir={out}", "run_id=t", "baselines=false", "wandb.enabled=true", "wandb.mode=offline"]
        args.append(f"miners={TINY_MINERS}")
        args += TINY_MARKET
        result = procs.run(args, timeout=TINY_RUN_TIMEOUT)
        leftovers = procs.wait_gone(timeout=15.0)  # the network must stop all its nodes and daemons itself
        summary_path = out / "t" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        yield TinyRun(out / "t", result, summary, [(p.pid, p.name()) for p in leftovers], procs)
    finally:
        procs.reap()
