"""The report's HTML tables, built from summary.json: results, checks, rewards, students and flags.

Every value taken from the run passes through `cell` or `esc` (hotkeys, subnet names and flag reasons come from
untrusted peers), so a `<script>` in a hotkey is shown as text, never run. A field that is missing or of the wrong
type renders as an empty cell; a table with no data returns "" and the page says so instead.
"""

from __future__ import annotations

from html import escape
from typing import Any

from moe.report.run_data import (
    adversary_hotkeys,
    expert_label,
    hotkey_labels,
    items,
    label_of,
    mapping,
    model_rows,
    number,
    subnet_names,
    validator_entries,
)

FAMILIES = (("eval_bpb", "Bits per byte on held-out data"), ("shifted_bpb", "Bits per byte on shifted text"))
"""(summary key, title) of the two result tables, in distribution then on the shifted sets, as train.py prints."""


def esc(x: Any) -> str:
    """Any value as HTML-escaped text (quotes too: values also land in attributes)."""
    return escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A value as table text: numbers rounded, booleans PASS/FAIL, dicts as `key value` pairs; escaped."""
    if isinstance(x, bool):
        return "PASS" if x else "FAIL"
    if x is None:
        return ""
    if isinstance(x, (int, float)):
        v = number(x)
        if v is None:
            return esc(x)
        return esc(f"{int(v):,}" if isinstance(x, int) else f"{v:.{digits}f}")
    if isinstance(x, dict):
        return ", ".join(f"{esc(k)} {fmt(v, digits)}" for k, v in x.items())
    if isinstance(x, list):
        return ", ".join(fmt(v, digits) for v in x)
    return esc(x)


def cell(x: Any, digits: int = 3, cls: str = "") -> str:
    """A `<td>`; words and lists are left-aligned (class `text`), numbers right-aligned."""
    cls = cls or ("text" if isinstance(x, (str, list, dict)) else "")
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{fmt(x, digits)}</td>"


def table(header: list[str], rows: list[str], cls: str = "") -> str:
    """A table from escaped-ready header names and pre-built `<tr>` rows."""
    attr = f' class="{cls}"' if cls else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def result_tables(summary: dict) -> str:
    """Models × subnets bits per byte, in distribution and shifted (with each model's worst window); the lowest of
    each column in bold, the mixture's row highlighted."""
    subnets = [*subnet_names(summary), "all"]
    rows = model_rows(summary)
    out = []
    for key, title in FAMILIES:
        scored = [(label, m, mapping(m.get(key))) for label, m in rows if mapping(m.get(key))]
        if not scored:
            continue
        worst = key == "shifted_bpb"
        values = {s: [v for _, _, b in scored if (v := number(b.get(s))) is not None] for s in subnets}
        best = {s: min(vs, default=None) for s, vs in values.items()}
        trs = []
        for label, m, bpb in scored:
            cells = [f'<th scope="row">{esc(label)}</th>']
            for s in subnets:
                v = number(bpb.get(s))
                cells.append(cell(v, cls="best" if v is not None and v == best[s] else ""))
            if worst:
                cells.append(cell(m.get("worst_window_bpb"), 2))
            trs.append(f"<tr{' class=mixture' if label == 'mixture' else ''}>{''.join(cells)}</tr>")
        header = ["model", *subnets, *(["worst window"] if worst else [])]
        out.append(f"<h3>{esc(title)}</h3>" + table(header, trs, "results"))
    calls = mapping(mapping(summary.get("mixture")).get("calls_per_byte"))
    if calls:
        out.append(f"<p>Mixture expert calls per byte: {fmt(calls, 2)}.</p>")
    return "".join(out)


def checks_table(summary: dict) -> str:
    """Every check: booleans as a PASS/FAIL badge, figures as they are."""
    checks = mapping(summary.get("checks"))
    trs = []
    for name, value in checks.items():
        cls = ("pass" if value else "fail") if isinstance(value, bool) else "figure"
        trs.append(f"<tr><td>{esc(name)}</td><td class={cls}>{fmt(value, 4)}</td></tr>")
    return table(["check", "result"], trs, "checks") if trs else ""


def rewards_table(summary: dict) -> str:
    """Each expert: uid, hotkey, contribution, TAO earned, share of the distillation traffic, flags."""
    contribution, rewards = mapping(summary.get("contribution")), mapping(summary.get("rewards"))
    traffic = mapping(summary.get("distill_traffic"))
    flags = mapping(summary.get("flags"))
    trs = []
    for e in items(summary.get("experts")):
        hk = str(e.get("hotkey"))
        why = flags.get(hk, e.get("flags")) or []
        cls = ' class="adversary"' if e.get("adversary") else ""
        trs.append(
            f"<tr{cls}><th scope=row>{esc(expert_label(e))}</th>{cell(e.get('uid'))}"
            f'<td class=hotkey title="{esc(hk)}">{esc(hk[:16])}</td>'
            f"{cell(contribution.get(hk), 4)}{cell(rewards.get(hk), 3)}{cell(traffic.get(hk), 4)}{cell(why)}</tr>"
        )
    if not trs:
        return ""
    header = ["expert", "uid", "hotkey", "contribution", "reward (TAO)", "distill traffic", "flags"]
    return table(header, trs, "rewards") + ledger_line(summary)


def ledger_line(summary: dict) -> str:
    ledger = mapping(summary.get("ledger"))
    if not ledger:
        return ""
    parts = [
        f"height {fmt(ledger.get('height'))}",
        f"total issuance {fmt(ledger.get('total_issuance_tao'), 3)} TAO",
        f"paid to miners {fmt(ledger.get('miner_emission_tao'), 3)} TAO",
        f"verification: {fmt(ledger.get('verified'))}",
    ]
    return f"<p>Ledger: {'; '.join(parts)}.</p>"


def students_table(summary: dict) -> str:
    trs = []
    for st in items(summary.get("students")):
        ev, sh = mapping(st.get("eval_bpb")), mapping(st.get("shifted_bpb"))
        trs.append(
            f"<tr><th scope=row>{esc(st.get('kind', '?'))}</th>{cell(st.get('params'))}{cell(st.get('active_params'))}"
            f"{cell(st.get('train_steps'))}{cell(st.get('teacher_bytes'))}{cell(ev.get('all'))}{cell(sh.get('all'))}"
            f"{cell(st.get('retention'), 4)}{cell(st.get('shifted_retention'), 4)}</tr>"
        )
    header = ["student", "params", "active params", "steps", "teacher bytes", "bpb all", "shifted all", "retention"]
    return table([*header, "shifted retention"], trs, "students") if trs else ""


def flags_table(summary: dict) -> str:
    """Every flagged hotkey, why, and which validators flagged it; honest experts flagged stand out."""
    labels, adversaries = hotkey_labels(summary), adversary_hotkeys(summary)
    validators = validator_entries(summary)
    flagged = mapping(summary.get("flags"))
    trs = []
    for hk, reasons in flagged.items():
        by = [f"validator {i}" for i, v in enumerate(validators) if hk in mapping(v.get("flags"))]
        cls = "adversary" if hk in adversaries else "honest-flagged"
        trs.append(
            f"<tr class={cls}><th scope=row>{esc(label_of(str(hk), labels))}</th>"
            f'<td class=hotkey title="{esc(hk)}">{esc(str(hk)[:16])}</td>{cell(reasons)}{cell(by)}</tr>'
        )
    return table(["flagged", "hotkey", "reasons", "by"], trs, "flags") if trs else ""


def headline(summary: dict) -> list[str]:
    """The few sentences that say what happened (escaped HTML fragments, one per bullet)."""
    out = []
    mix = mapping(summary.get("mixture"))
    m_all, s_all = number(mapping(mix.get("eval_bpb")).get("all")), number(mapping(mix.get("shifted_bpb")).get("all"))
    if m_all is not None:
        others = []
        best = mapping(summary.get("best_single"))
        if (b := number(mapping(best.get("eval_bpb")).get("all"))) is not None:
            others.append(f"best single expert ({esc(best.get('subnet', '?'))}) {b:.3f}")
        for kind in ("solo", "dense"):
            if (v := number(mapping(mapping(summary.get(f"{kind}_baseline")).get("eval_bpb")).get("all"))) is not None:
                others.append(f"{kind} baseline {v:.3f}")
        shifted = f"; {s_all:.3f} on shifted text" if s_all is not None else ""
        vs = f" (vs {', '.join(others)})" if others else ""
        out.append(f"Mixture: <b>{m_all:.3f}</b> bits per byte on held-out data{vs}{shifted}.")
    checks = mapping(summary.get("checks"))
    verdicts = {k: v for k, v in checks.items() if isinstance(v, bool)}
    if verdicts:
        failed = [k for k, v in verdicts.items() if not v]
        tail = f"; failing: {', '.join(esc(k) for k in failed)}" if failed else ""
        cls = "fail" if failed else "pass"
        out.append(f"Checks: <span class={cls}>{len(verdicts) - len(failed)} of {len(verdicts)} pass</span>{tail}.")
    rewards = {hk: v for hk, r in mapping(summary.get("rewards")).items() if (v := number(r)) is not None}
    if rewards:
        labels, adversaries = hotkey_labels(summary), adversary_hotkeys(summary)
        top = max(rewards, key=rewards.get)
        adv = sum(v for hk, v in rewards.items() if hk in adversaries)
        out.append(
            f"Rewards: {sum(rewards.values()):.3f} TAO to experts, most to {esc(label_of(top, labels))} "
            f"({rewards[top]:.3f} TAO); adversaries earned {adv:.3f} TAO."
        )
    experts = items(summary.get("experts"))
    if experts and "flags" in summary:
        flagged = mapping(summary.get("flags"))
        adversaries = adversary_hotkeys(summary)
        honest = sum(1 for e in experts if not e.get("adversary") and str(e.get("hotkey")) in flagged)
        caught = sum(1 for hk in adversaries if hk in flagged)
        out.append(f"Flags: {caught} of {len(adversaries)} adversaries and {honest} honest experts flagged.")
    for st in items(summary.get("students")):
        bpb = number(mapping(st.get("eval_bpb")).get("all"))
        ret = number(st.get("retention"))
        if bpb is not None:
            kept = f", keeps {ret:.0%} of the mixture's gain over the seed" if ret is not None else ""
            out.append(f"Student {esc(st.get('kind', '?'))}: {bpb:.3f} bits per byte{kept}.")
    return out
