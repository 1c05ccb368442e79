"""`hivemoe ledger verify PATH` and `hivemoe ledger show PATH`.

python -m moe.cli.ledger_commands verify ledger.db   # exit 1 and name the first bad block on tampering
python -m moe.cli.ledger_commands verify ledger.db --genesis-hash HEX   # also pin block 0
python -m moe.cli.ledger_commands show ledger.db     # balances, stakes and the latest epoch as tables
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.table import Table

from moe.cli.console import table_console
from moe.ledger.emission import RAO_PER_TAO
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
    for netuid, sub in sorted(st.subnets.items()):
        ep = sub.latest_epoch
        if ep is None:
            console.print(f"netuid {netuid}: no epoch yet ({len(sub.registry.slots)} uids)")
            continue
        table = Table(title=f"netuid {netuid} epoch {ep['epoch']} (emission {_tao(ep['emission'])} TAO)")
        for col in ("uid", "hotkey", "consensus", "incentive", "dividends", "paid (TAO)"):
            table.add_column(col)
        div = dict(zip(ep["validators"], ep["dividends"], strict=True))
        vpay = dict(zip(ep["validators"], ep["validator_payouts"], strict=True))
        for i, uid in enumerate(ep["uids"]):
            hk = ep["hotkeys"][i]
            paid = ep["miner_payouts"][i] + vpay.get(hk, 0)
            table.add_row(
                str(uid),
                hk[:16],
                f"{ep['consensus'][i]:.4f}",
                f"{ep['incentive'][i]:.4f}",
                f"{div.get(hk, 0.0):.4f}",
                _tao(paid),
            )
        console.print(table)
    return 0 if report.ok else 1


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
            console.print(f"{report} ({report.seconds:.2f} s)")
            return 0
        console.print(f"[red]FAILED[/red] {report}")
        return 1
    return _show(args.path, console)


if __name__ == "__main__":
    sys.exit(main())
