"""How `hivemoe status` draws a `NetworkView`: a ledger line, a subnets line, an experts table, a validators table and
the count of rejected records, as one rich renderable (printed once, or refreshed by `rich.live.Live`)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from moe.net.network_view import ExpertRow, LedgerView, NetworkView, ValidatorRow

DASH = "-"
"""What a cell shows when nobody published the value."""


def _num(v: float | None, fmt: str) -> str:
    return DASH if v is None else format(v, fmt)


def _short(address: str) -> str:
    return address[:10]


def ledger_line(ledger: LedgerView) -> str:
    if ledger.host is None:
        signers = ", ".join(_short(a) for a in ledger.head_signers) or "nobody"
        return f"ledger: not pinned (heads signed by {signers}); pass --ledger-host ADDR to read one"
    if not ledger.found:
        return f"ledger {_short(ledger.host)}: no valid head by this host in the DHT"
    return (
        f"ledger {_short(ledger.host)}: height {ledger.height}  epoch {ledger.epoch}  head {ledger.head_hash[:12]}  "
        f"registered {ledger.registered}  stake {_num(ledger.total_stake_tao, ',.2f')} TAO  "
        f"issuance {_num(ledger.issuance_tao, ',.2f')}"
    )


def _uid(ledger_uid: int | None, claimed: int | None) -> str:
    """The ledger's uid, else the record's claim marked with `?` (nobody confirmed it)."""
    if ledger_uid is not None:
        return str(ledger_uid)
    return DASH if claimed is None else f"{claimed}?"


def _flags(e: ExpertRow) -> str:
    return " ".join(f"{reason}×{n}" for reason, n in e.flags.items()) or DASH


def experts_table(experts: list[ExpertRow]) -> Table:
    table = Table(title=f"experts ({len(experts)})", title_justify="left")
    for col in ("subnet", "uid", "hotkey", "step", "claimed bpb", "measured bpb", "p50 ms", "price"):
        table.add_column(col, justify="left" if col in ("subnet", "hotkey") else "right")
    for col in ("stake TAO", "incentive", "beat age s", "flags"):
        table.add_column(col, justify="left" if col == "flags" else "right")
    for e in sorted(experts, key=lambda e: (e.netuid, e.uid, e.hotkey)):
        table.add_row(
            f"{e.subnet} ({e.netuid})",
            _uid(e.ledger_uid, e.uid),
            _short(e.hotkey),
            str(e.train_step),
            _num(e.claimed_bpb, ".3f"),
            _num(e.measured_bpb, ".3f"),
            _num(e.latency_p50_ms, ".0f"),
            _num(e.price, ".4f"),
            _num(e.stake_tao, ",.2f"),
            _num(e.incentive, ".3f"),
            f"{e.heartbeat_age_seconds:.0f}",
            _flags(e),
            style="red" if e.flags else None,
        )
    return table


def _weights(v: ValidatorRow, top: int = 4) -> str:
    """The heaviest `top` weights as uid:share%, the rest counted."""
    total = sum(v.weights.values())
    if not total:
        return DASH
    ranked = sorted(v.weights.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = " ".join(f"{uid}:{100 * w / total:.0f}%" for uid, w in ranked[:top])
    return shown + (f" (+{len(ranked) - top})" if len(ranked) > top else "")


def validators_table(validators: list[ValidatorRow]) -> Table:
    table = Table(title=f"validators ({len(validators)})", title_justify="left")
    for col in ("hotkey", "uid", "stake TAO", "commit epoch", "flagged", "weights epoch", "last weights"):
        table.add_column(col, justify="left" if col in ("hotkey", "last weights") else "right")
    for v in validators:
        commit = DASH if v.commit_epoch is None else f"{v.commit_epoch}{'' if v.revealed else ' (unrevealed)'}"
        table.add_row(
            _short(v.hotkey),
            _uid(v.ledger_uid, None),
            _num(v.stake_tao, ",.2f"),
            commit,
            str(v.flagged),
            DASH if v.weights_epoch is None else str(v.weights_epoch),
            _weights(v),
        )
    return table


def render(view: NetworkView) -> Group:
    subnets = "  ".join(f"{s.name or '?'} ({s.netuid}): {s.experts}" for s in view.subnets) or "none asked for"
    rejected = Text(f"{view.rejected_total} records rejected", style="yellow" if view.rejected_total else "dim")
    if view.rejected:
        rejected.append("  (" + ", ".join(f"{k}: {n}" for k, n in sorted(view.rejected.items())) + ")")
    return Group(
        Text(ledger_line(view.ledger)),
        Text(f"subnets: {subnets}"),
        experts_table(view.experts),
        validators_table(view.validators),
        rejected,
    )
