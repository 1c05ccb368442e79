"""`hivemoe status --initial-peers MADDR ...`: a table of a running network read from its DHT, from any machine.

    hivemoe status --initial-peers $(jq -r '.initial_peers[0]' runs/<id>/bootstrap.json)
    hivemoe status --initial-peers MADDR --ledger-host HEX --watch --interval 2   # refresh until Ctrl-C
    hivemoe status --initial-peers MADDR --json                                   # one JSON object, last line

Joins as a client-mode DHT peer (it serves nothing and needs no open port), reads every key once per refresh
(`moe.net.network_view`) and shows only records that verify; the rest are counted as rejected. Pass the ledger
host's address (`--ledger-host`, the `ledger.host` the network's nodes are given) to read stakes and the chain head:
any key can sign a head, so without it heads are only listed by signer. Exit status 0, or 1 with one `error:` line
when an address is malformed or no initial peer answers, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from moe.cli.console import table_console
from moe.net.join import NetworkConfig

logger = logging.getLogger(__name__)


def _netuids(spec: str) -> dict[int, str]:
    """{netuid: subnet name} to list: `spec` is comma-separated names or netuids; empty means every declared
    subnet. Raises ValueError naming an unknown subnet."""
    from moe.cli.subnet_plugin import declared_subnets

    declared = {s.netuid: name for name, s in declared_subnets().items()}
    by_name = {name: n for n, name in declared.items()}
    if not spec:
        return declared
    out = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit() and 0 <= int(item) <= 65535:
            out[int(item)] = declared.get(int(item), "")
        elif item in by_name:
            out[by_name[item]] = item
        else:
            raise ValueError(f"unknown subnet {item!r}; known: {', '.join(by_name) or 'none'} (or give netuids)")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = NetworkConfig()
    p = argparse.ArgumentParser(prog="hivemoe status", description="Show a running network, read from its DHT.")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR", help="multiaddrs of network peers")
    p.add_argument("--subnets", default="", help="comma-separated subnet names or netuids (default: all declared)")
    p.add_argument("--ledger-host", default="", metavar="HEX", help="the ledger host's hotkey address to trust")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch")
    p.add_argument("--json", action="store_true", help="print the view as one JSON object (a line per refresh)")
    p.add_argument(
        "--probe",
        type=int,
        default=3,
        metavar="N",
        help="forwards sent to each expert to measure its latency p50 from here (0: none)",
    )
    p.add_argument(
        "--announce-ttl",
        type=float,
        default=defaults.announce_ttl_seconds,
        help="seconds the network's expert records live (network.announce_ttl_seconds); heartbeat ages use it",
    )
    p.add_argument("--join-attempts", type=int, default=2, help="tries to reach the initial peers")
    p.add_argument("--join-timeout", type=float, default=defaults.join_timeout_seconds, help="seconds per try")
    args = p.parse_args(argv)
    if args.interval <= 0 or args.announce_ttl <= 0 or args.join_attempts < 1 or args.join_timeout <= 0:
        p.error("--interval, --announce-ttl and --join-timeout must be positive, --join-attempts at least 1")
    return args


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Skipped records are counted on screen, so their per-entry warnings stay off the terminal unless
    $HIVEMOE_LOG_LEVEL asks for them; the loggers' levels are restored on the way out."""
    loggers = [] if "HIVEMOE_LOG_LEVEL" in os.environ else [logging.getLogger(n) for n in ("moe", "hivemind")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from moe.net.signed import MalformedRecord, check_address

    try:
        netuids = _netuids(args.subnets)
        host = check_address("--ledger-host", args.ledger_host) if args.ledger_host else None
    except (ValueError, MalformedRecord) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with _quiet_logs():
        return _run(args, netuids, host)


def _run(args: argparse.Namespace, netuids: dict[int, str], host: str | None) -> int:
    from moe.net.join import BadMultiaddr, JoinError, start_dht

    try:
        dht = start_dht(args.initial_peers, attempts=args.join_attempts, timeout=args.join_timeout, client_mode=True)
    except (BadMultiaddr, JoinError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    client = None
    try:
        if args.probe > 0:
            from moe.net.client import SyncExpertClient

            client = SyncExpertClient(dht=dht)
        read = lambda: _read(dht, netuids, host, args.announce_ttl, client, args.probe)
        if args.watch:
            return _watch(read, args.interval, args.json)
        _show(read(), args.json)
    finally:
        if client is not None:
            client.shutdown()
        dht.shutdown()
    return 0


def _read(dht, netuids: dict[int, str], host: str | None, announce_ttl: float, client, probe_calls: int):
    from moe.net.latency_probe import probe_latency_ms
    from moe.net.network_view import read_network_view

    view = read_network_view(dht, netuids, ledger_host=host, announce_ttl=announce_ttl)
    if client is not None:
        latency = probe_latency_ms(client, [e.peer_id for e in view.experts], calls=probe_calls)
        for e in view.experts:
            e.latency_p50_ms = latency.get(e.peer_id)
    return view


def _show(view, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view.to_json(), sort_keys=True), flush=True)
        return

    from moe.cli.status_table import render

    table_console().print(render(view))


def _watch(read, interval: float, as_json: bool) -> int:
    """Refresh every `interval` seconds until Ctrl-C (exit 0): a rich Live table, or one JSON line per read."""
    try:
        if as_json:
            while True:
                _show(read(), as_json=True)
                time.sleep(interval)
        from rich.live import Live

        from moe.cli.status_table import render

        with Live(render(read()), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(read()), refresh=True)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
