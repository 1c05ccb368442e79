"""The market part of `summary.json`: each subnet's emission against its measured contribution, and each validator's
stake, dividends and trust, read from the ledger replay and the validators' results.

Keys: `subnets` {name: {netuid, emission_share, contribution_share, miners, owner, owner_tao}} where
`emission_share` is the subnet's share of the last block's emission (the split in force at the end) and
`contribution_share` the stake-weighted mean of the validators' last reports of its share of the mixture's loss
reduction; `validators` {hotkey: {stake_tao, dividends_tao, vtrust, flags, eval_source}} where `dividends_tao` sums
what the ledger paid it over every subnet and `vtrust` is the mean over subnets of its validator trust at the last
epoch (the share of its weight that survived consensus clipping); `measured_bpb` {hotkey: validators' bits per byte
on all their windows} and `home_bpb` {hotkey: on its own subnet's windows}, both stake-weighted. Checks:
`subnet_shares_match_contribution` (every |emission - contribution| ≤ 0.05, when the split follows contribution) and
`stronger_miner_earns_more` (within each subnet, the miner with more training steps has the lower home bits per byte
and earned more, down the whole order).
"""

from __future__ import annotations

import json
from typing import Any

from moe.roles.layout import RESULT, RunLayout
from moe.roles.ledger_facts import LedgerFacts, facts_for

MAX_SHARE_GAP = 0.05


def market_summary(
    layout: RunLayout, subnets: dict[str, int], experts: list[dict], facts: LedgerFacts | None = None
) -> dict[str, Any]:
    """`subnets` and `validators` for a run whose subnets are {name: netuid}; {} without validators, or without a
    ledger that verifies. `facts` is the ledger's replay when the caller has read it (else read here)."""
    results = [json.loads(p.read_text()) for p in sorted(layout.validators.glob(f"*/{RESULT}"))]
    facts = facts_for(layout, facts) if results else None
    if facts is None or not facts.ok:  # a ledger that does not verify costs this section, never the summary
        return {}
    chain = _ledger_market(facts)
    contribution = _contribution_shares(results, subnets)
    home = {e["hotkey"]: e.get("subnet") for e in experts}
    out_subnets = {}
    for name, netuid in subnets.items():
        out_subnets[name] = {
            "netuid": netuid,
            "emission_share": round(chain["shares"].get(netuid, 0.0), 6),
            "contribution_share": None if contribution is None else round(contribution.get(netuid, 0.0), 6),
            "miners": [e["hotkey"] for e in experts if e.get("subnet") == name],
            "owner": chain["owners"].get(netuid),
            "owner_tao": chain["owner_paid"].get(netuid, 0) / 1e9,
        }
    validators = {}
    for r in results:
        hk = r["hotkey"]
        vtrust = chain["vtrust"].get(hk)
        validators[hk] = {
            "stake_tao": r["stake_tao"],
            "dividends_tao": chain["dividends"].get(hk, 0) / 1e9,
            "vtrust": None if not vtrust else round(sum(vtrust) / len(vtrust), 6),
            "flags": r["flags"],
            "eval_source": r.get("eval_source", "public"),
        }
    return {
        "subnets": out_subnets,
        "validators": validators,
        "emission_split": chain["split"],
        "measured_bpb": _measured_bpb(results, lambda r, hk: (r.get("bpb") or {}).get(hk)),
        "home_bpb": _measured_bpb(results, lambda r, hk: (r.get("domain_bpb") or {}).get(hk, {}).get(home[hk])),
    }


def _measured_bpb(results: list[dict], figure) -> dict[str, float]:
    """Hotkey → the stake-weighted mean over validators of `figure(result, hotkey)` from their last epoch."""
    acc: dict[str, list[float]] = {}
    for r in results:
        for hk in r.get("bpb") or {}:
            v = figure(r, hk)
            if isinstance(v, int | float):
                a = acc.setdefault(hk, [0.0, 0.0])
                a[0] += r["stake_tao"] * v
                a[1] += r["stake_tao"]
    return {hk: round(t / w, 6) for hk, (t, w) in sorted(acc.items()) if w > 0}


def _contribution_shares(results: list[dict], subnets: dict[str, int]) -> dict[int, float] | None:
    """Netuid → stake-weighted mean of the validators' last root reports, each normalised to sum 1."""
    total, acc = 0.0, {n: 0.0 for n in subnets.values()}
    for r in results:
        last = next((e for e in reversed(r.get("epochs", [])) if e.get("root_weights")), None)
        if last is None:
            continue
        row = {int(n): max(0.0, float(v)) for n, v in last["root_weights"].items()}
        mass = sum(row.values())
        if mass <= 0:
            continue
        for n in acc:
            acc[n] += r["stake_tao"] * row.get(n, 0.0) / mass
        total += r["stake_tao"]
    return {n: v / total for n, v in acc.items()} if total > 0 else None


def _ledger_market(facts: LedgerFacts) -> dict[str, Any]:
    """The last emission split, owner payouts, dividends and each validator's last trust on every subnet."""
    vtrust: dict[str, list[float]] = {}
    for sub in facts.state.subnets.values():  # the replayed state keeps each subnet's last trust
        for hk, t in sub.validator_trust.items():
            vtrust.setdefault(hk, []).append(float(t))
    cfg = facts.state.config
    return {
        "shares": facts.shares,
        "owner_paid": facts.owner_paid,
        "dividends": facts.dividends,
        "vtrust": vtrust,
        "owners": {int(n): a for n, a in cfg.subnet_owners.items()},
        "split": cfg.emission_split,
    }


def market_checks(s: dict[str, Any]) -> dict[str, Any]:
    """Subnet shares against contribution (under the contribution split) and competition within each subnet."""
    subnets = s.get("subnets") or {}
    if not subnets:
        return {}
    out: dict[str, Any] = {}
    gaps = {
        name: round(abs(v["emission_share"] - v["contribution_share"]), 4)
        for name, v in subnets.items()
        if v.get("contribution_share") is not None
    }
    if s.get("emission_split") == "contribution" and gaps:
        out["subnet_share_gap"] = gaps
        out["subnet_shares_match_contribution"] = max(gaps.values()) <= MAX_SHARE_GAP
    rewards, bpb = s.get("rewards") or {}, s.get("home_bpb") or {}
    steps = {e["hotkey"]: e.get("train_steps") or 0 for e in s.get("experts", [])}
    adversaries = {e["hotkey"] for e in s.get("experts", []) if e.get("adversary")}
    verdicts = {}
    for name, v in subnets.items():
        honest = [hk for hk in v["miners"] if hk in rewards and bpb.get(hk) is not None and hk not in adversaries]
        if len(honest) < 2:
            continue
        by_compute = sorted(honest, key=lambda hk: (-steps.get(hk, 0), bpb[hk]))
        pairs = list(zip(by_compute, by_compute[1:], strict=False))
        verdicts[name] = all(rewards[a] > rewards[b] and bpb[a] < bpb[b] for a, b in pairs)
    if verdicts:
        out["stronger_miner_earns_more"] = verdicts
        out["stronger_miners_earn_more"] = all(verdicts.values())
    return out


def print_market(s: dict[str, Any], console) -> None:
    """The subnets' emission against contribution, and each miner's and validator's earnings."""
    from rich.table import Table

    subnets = s.get("subnets") or {}
    if not subnets:
        return
    rewards, bpb = s.get("rewards") or {}, s.get("home_bpb") or s.get("measured_bpb") or {}
    miner = {e["hotkey"]: e.get("miner") or e["subnet"] for e in s.get("experts", [])}
    t = Table(title=f"subnets (emission split: {s.get('emission_split', '?')})")
    for col in (
        "subnet",
        "netuid",
        "emission share",
        "contribution share",
        "miners: TAO (validator bpb on its subnet)",
        "owner TAO",
    ):
        t.add_column(col)
    for name, v in subnets.items():
        contribution = v.get("contribution_share")
        miners = ", ".join(
            f"{miner.get(hk, hk[:8])} {rewards.get(hk, 0.0):.2f}" + (f" ({bpb[hk]:.3f})" if hk in bpb else "")
            for hk in v["miners"]
        )
        t.add_row(
            name,
            str(v["netuid"]),
            f"{v['emission_share']:.3f}",
            "" if contribution is None else f"{contribution:.3f}",
            miners,
            f"{v.get('owner_tao', 0.0):.2f}",
        )
    console.print(t)
    for hk, v in (s.get("validators") or {}).items():
        vtrust = "" if v.get("vtrust") is None else f", vtrust {v['vtrust']:.3f}"
        console.print(
            f"  validator {hk[:10]}: stake {v['stake_tao']:.0f} TAO, dividends {v['dividends_tao']:.2f} TAO{vtrust}"
        )
