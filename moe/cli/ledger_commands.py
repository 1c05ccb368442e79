"""`hivemoe ledger verify PATH` and `hivemoe ledger show PATH`.

python -m moe.cli.ledger_commands verify ledger.db   # exit 1 and name the first bad block on tampering
python -m moe.cli.ledger_commands verify ledger.db --genesis-hash HEX   # also pin block 0
python -m moe.cli.ledger_commands show ledger.db     # balances, stakes, per-subnet tables and the emission split
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from rich.console import Console
from rich.table import Table

from moe.cli.console import table_console
from moe.ledger.emission import RAO_PER_TAO
from moe.ledger.state import LedgerState
from moe.ledger.verify import verify_ledger

logger = logging.getLogger(__name__)


def _tao(rao: int) -> str:
    return f"{rao / RAO_PER_TAO:,.9f}"


def _show(path: str, console: Console) -> int:
    report = verify_ledger(path)
    if report.state is None:
        console.print(f"[red]cannot read ledger {path}: {report}[/red]")
        return 1
    st = report.state
    if not report.ok:
        console.print(f"[red]warning: {report}; showing the state before it[/red]")
    console.print(
        f"height {st.height}  head {st.head_hash[:16]}  issuance {_tao(st.total_issuance)} TAO  "
        f"burned {_tao(st.burned)} TAO  chain {st.chain_id}"
    )
    accounts = Table(title="Accounts")
    for col in ("address", "balance (TAO)", "stake (TAO)"):
        accounts.add_column(col, justify="right" if "TAO" in col else "left")
    held = lambda a: st.balances.get(a, 0) + st.stakes.get(a, 0)
    for addr in sorted(set(st.balances) | set(st.stakes), key=lambda a: (-held(a), a)):
        accounts.add_row(addr[:16], _tao(st.balances.get(addr, 0)), _tao(st.stakes.get(addr, 0)))
    console.print(accounts)
    for netuid in sorted(st.subnets):
        _subnet_table(st, netuid, console)
    console.print(_split_line(st))
    return 0 if report.ok else 1


def _subnet_table(st: LedgerState, netuid: int, console: Console) -> None:
    """The subnet's rules in one line, then a table with one row per uid of its latest epoch (none before one)."""
    sub, p = st.subnets[netuid], st.params(netuid)
    cr = f"on, reveal after {p.reveal_period_epochs} epoch(s)" if p.commit_reveal else "off"
    pending = sum(len(c) for c in sub.commits.values())
    console.print(
        f"netuid {netuid}: owner {p.owner[:16] if p.owner else 'none'}  tempo {st.config.tempo}  "
        f"yuma v{p.yuma_version}{' (liquid alpha)' if p.liquid_alpha else ''}  commit-reveal {cr}"
        + (f"  pending commits {pending}" if p.commit_reveal else "")
    )
    ep = sub.latest_epoch
    if ep is None:
        console.print(f"netuid {netuid}: no epoch yet ({len(sub.registry.slots)} uids)")
        return
    owner = f", owner {_tao(ep['owner_payout'])} TAO" if "owner" in ep else ""
    table = Table(title=f"netuid {netuid} epoch {ep['epoch']} (emission {_tao(ep['emission'])} TAO{owner})")
    for col in ("uid", "hotkey", "incentive", "dividends", "trust", "vtrust", "emission (TAO)", "stake (TAO)"):
        table.add_column(col, justify="left" if col == "hotkey" else "right")
    div = dict(zip(ep["validators"], ep["dividends"], strict=True))
    vpay = dict(zip(ep["validators"], ep["validator_payouts"], strict=True))
    for i, uid in enumerate(ep["uids"]):
        hk = ep["hotkeys"][i]
        paid = ep["miner_payouts"][i] + vpay.get(hk, 0) + (ep["owner_payout"] if ep.get("owner") == hk else 0)
        vtrust = sub.validator_trust.get(hk)
        table.add_row(
            str(uid),
            hk[:16],
            f"{ep['incentive'][i]:.4f}",
            f"{div.get(hk, 0.0):.4f}",
            f"{sub.trust.get(uid, 0.0):.4f}",
            "" if vtrust is None else f"{vtrust:.4f}",
            _tao(paid),
            _tao(st.stakes.get(hk, 0)),
        )
    console.print(table)


def _split_line(st: LedgerState) -> str:
    """How the next block's emission is divided between subnets, and where that split came from."""
    split = st.latest_split
    if split is None:
        shares, source = dict(st.config.subnet_shares), f"{st.config.emission_split}, genesis shares"
    else:
        shares = dict(zip(split["netuids"], split["shares"], strict=True))
        source = (
            f"{split['mode']}, from epoch {split['epoch']} root weights of {len(split['validators'])} validator(s)"
        )
    total = sum(shares.values())
    parts = "  ".join(f"{n}: {100 * x / total:.1f}%" for n, x in sorted(shares.items()))
    return f"emission split ({source}): {parts}"


def _replayed_counts(path: str) -> str:
    """How many commit, reveal and split records the file holds (read with SQLite's JSON functions), or ""."""
    kinds = ("commit", "reveal", "split")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT json_extract(r.value, '$.kind'), COUNT(*) FROM blocks, json_each(blocks.records) AS r "
                "WHERE json_extract(r.value, '$.kind') IN (?, ?, ?) GROUP BY 1",
                kinds,
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # e.g. an SQLite without JSON functions: the counts are a nicety
        return ""
    counts = dict(rows)
    return "; replayed " + ", ".join(f"{counts.get(k, 0)} {k}s" for k in kinds)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 bad or unreadable ledger)."""
    parser = argparse.ArgumentParser(prog="hivemoe ledger", description="Inspect a hivemoe reward ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-derive every hash, signature, epoch and emission")
    verify.add_argument("path")
    verify.add_argument(
        "--genesis-hash", help="the hash block 0 must have (a chain rewritten from its genesis on is caught only so)"
    )
    sub.add_parser("show", help="print balances, stakes and the latest epoch").add_argument("path")
    args = parser.parse_args(argv)
    console = table_console()
    if args.command == "verify":
        report = verify_ledger(args.path, genesis_hash=args.genesis_hash)
        if report.ok:
            console.print(f"{report} ({report.seconds:.2f} s{_replayed_counts(args.path)})")
            console.print(
                f"reconciled to the rao: {report.emitted / RAO_PER_TAO:,.9f} TAO emitted to accounts, "
                f"{report.payments / RAO_PER_TAO:,.9f} TAO paid by consumers to experts"
            )
            return 0
        console.print(f"[red]FAILED[/red] {report}")
        return 1
    return _show(args.path, console)


if __name__ == "__main__":
    sys.exit(main())
