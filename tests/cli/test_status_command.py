"""Tests for moe/cli/status_command.py through `hivemoe status`: a client-mode peer joins real DHT peers on loopback
and prints what verifies (as JSON or a table), counting forgeries; bad or unreachable addresses are one error line."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hivemind.utils import get_dht_time

from moe.cli.main import main
from moe.cli.status_command import _watch
from moe.identity import Hotkey
from moe.net.discovery import announce
from moe.net.expert_record import EXPERT_CONTEXT, ExpertRecord
from moe.net.join import visible_maddrs
from moe.net.network_view import ExpertRow, read_network_view
from moe.net.signed import SignedValue

PEER_ID = "12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA"
NOBODY = f"/ip4/127.0.0.1/tcp/9/p2p/{PEER_ID}"
"""A well-formed address where nothing listens (port 9, discard)."""
TTL = 60.0
NETUID = 3201


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich tables as wide as they need (no wrapped or cut cells)."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture(scope="module")
def network(dht_pair):
    """An honest expert and an impersonation of another hotkey on NETUID; (bootstrap multiaddr, honest hotkey)."""
    a, _ = dht_pair
    honest, victim, forger = (Hotkey.from_seed(bytes([i]) * 32) for i in (61, 62, 63))
    record = ExpertRecord(
        uid=3,
        hotkey=honest.address,
        subnet="code",
        netuid=NETUID,
        peer_id=PEER_ID,
        model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=256, params=5000),
        train_step=17,
        claimed_eval_bpb=2.5,
    )
    assert announce(a, record, honest, TTL)
    fake = dataclasses.replace(record, hotkey=victim.address, expiration=get_dht_time() + TTL)
    forged = SignedValue.sign(forger, fake.payload(), context=EXPERT_CONTEXT)
    assert a.store(f"hivemoe/{NETUID}/experts", forged, fake.expiration, subkey=forger.address)
    return visible_maddrs(a)[0], honest.address


def status(capsys, *argv: str) -> tuple[int, str, str]:
    """`hivemoe status *argv`, without latency probes unless asked (nothing serves behind these records)."""
    rc = main(["status", *argv, *([] if "--probe" in argv else ["--probe", "0"])])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_is_one_object_with_the_view_schema(capsys, network):
    """`--json` prints, as its last line, one object with the view's keys; only the honest expert is in it and the
    impersonation is counted as rejected."""
    maddr, honest = network
    rc, out, _ = status(capsys, "--initial-peers", maddr, "--subnets", str(NETUID), "--json")

    assert rc == 0
    view = json.loads(out.strip().splitlines()[-1])
    assert set(view) == {"taken_at", "subnets", "experts", "validators", "ledger", "rejected", "rejected_total"}
    assert view["subnets"] == [{"netuid": NETUID, "name": "code", "experts": 1}]
    (expert,) = view["experts"]
    assert set(expert) == {f.name for f in dataclasses.fields(ExpertRow)}
    assert (expert["hotkey"], expert["uid"], expert["train_step"], expert["claimed_bpb"]) == (honest, 3, 17, 2.5)
    assert expert["price"] == 0.0 and expert["latency_p50_ms"] is None
    assert view["rejected"] == {f"hivemoe/{NETUID}/experts": 1} and view["rejected_total"] == 1
    assert view["ledger"]["host"] is None and view["ledger"]["found"] is False


def test_table_shows_the_expert_and_the_rejected_count(capsys, network):
    """Without `--json` the table shows the honest expert's hotkey, step and claim, dashes for the unpublished
    latency and price, and the number of rejected records."""
    maddr, honest = network
    rc, out, _ = status(capsys, "--initial-peers", maddr, "--subnets", str(NETUID))

    assert rc == 0
    row = next(line for line in out.splitlines() if honest[:10] in line)
    assert "code (3201)" in row and " 17 " in row and "2.500" in row and row.count(" - ") >= 3
    assert "1 records rejected" in out
    assert "ledger: not pinned" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--initial-peers", "/ip4/127.0.0.1/tcp/notaport"],
        ["--initial-peers", "/ip4/127.0.0.1/tcp/4001"],  # no /p2p/ peer id
        ["--initial-peers", NOBODY, "--ledger-host", "not-an-address"],
        ["--initial-peers", NOBODY, "--subnets", "no_such_subnet"],
    ],
)
def test_bad_arguments_are_one_error_line(capsys, argv):
    """A malformed multiaddr, ledger host or subnet is one `error:` line on stderr and exit 1, before any peer runs."""
    rc, out, err = status(capsys, *argv)

    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_unreachable_peer_is_one_error_line(capsys):
    """A well-formed address nobody answers at is one `error:` line naming it, and exit 1."""
    rc, out, err = status(capsys, "--initial-peers", NOBODY, "--join-attempts", "1")

    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: could not join") and NOBODY in err


def test_watch_prints_a_json_line_per_refresh_until_ctrl_c(capsys, dht_pair):
    """`--watch --json` prints one JSON object per read of the real DHT and ends with exit 0 on Ctrl-C."""
    _, b = dht_pair
    reads = []

    def read():
        if len(reads) == 3:
            raise KeyboardInterrupt
        reads.append(read_network_view(b, [NETUID]))
        return reads[-1]

    assert _watch(read, interval=0.01, as_json=True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["subnets"][0]["netuid"] == NETUID for line in lines)


def test_watch_table_refreshes_until_ctrl_c(capsys, dht_pair):
    """`--watch` redraws the table from each read of the real DHT and ends with exit 0 on Ctrl-C."""
    _, b = dht_pair
    reads = []

    def read():
        if len(reads) == 2:
            raise KeyboardInterrupt
        reads.append(read_network_view(b, [NETUID]))
        return reads[-1]

    assert _watch(read, interval=0.01, as_json=False) == 0
    assert len(reads) == 2 and "records rejected" in capsys.readouterr().out
