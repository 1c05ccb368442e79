"""The validation part of `summary.json`: what validators measured, what they weighed, and what the ledger paid.

Keys: `contribution` {hotkey: Shapley share, stake-weighted over validators}, `paid_share` {hotkey: the share of
the miners' emission the validators' weights asked for: its subnet's share times its share within the subnet,
stake-weighted}, `weights` {validator hotkey: {expert
hotkey: u16 weight on the expert's subnet}}, `rewards` {hotkey: TAO earned by each expert (display float; the ledger
holds rao)}, `ledger` {path, height, head_hash, total_issuance (rao), total_issuance_tao, verified}, `validators`
{hotkey: {stake_tao, flags, eval_source}} (where its windows came from: `public`, `salted` or `private`, which decides
how a memorising miner fares under its weights; see moe.poi.eval_source; moe.roles.market_summary adds what the
ledger paid it). Checks: `rewards_rank_like_contributions` (Spearman ≥ 0.9 over honest experts, of rewards against
`paid_share` where validators report it, else `contribution`) and
`adversaries_emission_share` (< 1% of the miners' emission) with the figures behind them. A run without validators
adds nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moe.roles.layout import RESULT, RunLayout
from moe.roles.ledger_facts import LedgerFacts, facts_for

MIN_SPEARMAN = 0.9
MARKET_VERDICTS = {"redundant"}
"""Flags that are a market's verdict rather than a cheat: a miner adding nothing beyond one registered before it on
the validators' windows (moe.poi.novelty) earns nothing, whether it relays a copy or simply lost to a stronger
competitor of the same subnet."""
MAX_ADVERSARY_SHARE = 0.01


def validation_summary(layout: RunLayout, experts: list[dict], facts: LedgerFacts | None = None) -> dict[str, Any]:
    """The validation part; `facts` is the ledger's replay when the caller has read it (else read here)."""
    results = [json.loads(p.read_text()) for p in sorted(layout.validators.glob(f"*/{RESULT}"))]
    if not results:
        return {}
    total_stake = sum(r["stake_tao"] for r in results) or 1.0
    keys = sorted({hk for r in results for hk in r["contribution"]})
    contribution = {
        hk: sum(r["stake_tao"] * r["contribution"].get(hk, 0.0) for r in results) / total_stake for hk in keys
    }
    facts = facts_for(layout, facts)
    end = _paid_epochs(facts)
    paying = [(r["stake_tao"], _governed_paid_share(r, end)) for r in results if r.get("paid_share")]
    paid_stake = sum(stake for stake, _ in paying)
    paid = {
        hk: sum(stake * share.get(hk, 0.0) for stake, share in paying) / paid_stake
        for hk in sorted({hk for _, share in paying for hk in share})
    }
    out: dict[str, Any] = {
        "contribution": contribution,
        **({"paid_share": paid} if paid else {}),
        "weights": {r["hotkey"]: r["weights"] for r in results},
        "validators": {
            r["hotkey"]: {"stake_tao": r["stake_tao"], "flags": r["flags"], "eval_source": _source(r)} for r in results
        },
        "flags": _flags_by_expert(results),
    }
    if facts is not None:
        out.update(_ledger_figures(facts, layout.ledger, [e["hotkey"] for e in experts]))
    return out


def _paid_epochs(facts: LedgerFacts | None) -> int | None:
    """Epochs the ledger has paid out (numbered from 0), or None without a ledger that verifies."""
    if facts is None or not facts.ok:
        return None
    return (facts.state.height + 1) // facts.state.config.tempo


def _governed_paid_share(result: dict, paid_epochs: int | None) -> dict[str, float]:
    """One validator's paid shares over its epochs, each weighted by the epochs of emission its weights were the
    latest for: from the epoch they name until its next weights, the last ones until the ledger's last paid epoch.

    Rewards accrue while weights stand, and a run's ledger goes on paying by the validators' last weights long after
    they stop scoring, so an unweighted mean over epochs would judge rewards against a share that paid little. Falls
    back to the validator's own mean without a ledger or without epochs that name their ledger epochs.
    """
    epochs = [e for e in result.get("epochs", []) if e.get("paid_share")]
    named = [e.get("epoch") for e in epochs]
    if paid_epochs is None or not epochs or any(type(n) is not int for n in named) or named != sorted(set(named)):
        return result["paid_share"]
    ends = [*named[1:], max(paid_epochs - 1, named[-1])]
    spans = [b - a for a, b in zip(named, ends, strict=True)]
    if sum(spans) <= 0:
        return result["paid_share"]
    keys = sorted({hk for e in epochs for hk in e["paid_share"]})
    return {
        hk: sum(w * e["paid_share"].get(hk, 0.0) for w, e in zip(spans, epochs, strict=True)) / sum(spans)
        for hk in keys
    }


def _source(result: dict) -> str:
    """A validator's evaluation source; results written before validators had a choice drew from the public split."""
    return result.get("eval_source", "public")


def _flags_by_expert(results: list[dict]) -> dict[str, list[str]]:
    """Hotkey → every reason any validator flagged it for (experts nobody flagged are left out)."""
    flags: dict[str, set[str]] = {}
    for r in results:
        for hk, reasons in r["flags"].items():
            flags.setdefault(hk, set()).update(reasons)
    return {hk: sorted(reasons) for hk, reasons in sorted(flags.items())}


def _ledger_figures(facts: LedgerFacts, path: Path, hotkeys: list[str]) -> dict[str, Any]:
    """Experts' earnings and the chain's head, from the verified replay."""
    from moe.ledger import RAO_PER_TAO
    from moe.ledger.state import distill_shares

    if not facts.ok:  # a ledger that does not replay has no earnings to show; report it instead of losing the summary
        return {"rewards": {}, "ledger": {"path": str(path), "verified": str(facts.report), "miner_emission_tao": 0.0}}
    st = facts.state
    return {
        "rewards": {hk: st.balances.get(hk, 0) / RAO_PER_TAO for hk in hotkeys},
        "ledger": {
            "path": str(path),
            "height": st.height,
            "head_hash": st.head_hash,
            "total_issuance": st.total_issuance,
            "total_issuance_tao": st.total_issuance / RAO_PER_TAO,
            "miner_emission_tao": facts.miner_emission / RAO_PER_TAO,
            "distill_traffic": {k: round(v, 4) for k, v in distill_shares(st).items()},
            "verified": str(facts.report),
        },
    }


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation with average ranks for ties; NaN when either side is constant or too short."""
    from scipy.stats import spearmanr

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def validation_checks(s: dict[str, Any]) -> dict[str, Any]:
    if "rewards" not in s:
        return {}
    honest = [e["hotkey"] for e in s["experts"] if not e.get("adversary")]
    adversaries = [e["hotkey"] for e in s["experts"] if e.get("adversary")]
    measured = s.get("paid_share") or s["contribution"]
    rho = spearman([s["rewards"].get(hk, 0.0) for hk in honest], [measured.get(hk, 0.0) for hk in honest])
    miners = s["ledger"]["miner_emission_tao"]
    adv = sum(s["rewards"].get(hk, 0.0) for hk in adversaries)
    share = adv / miners if miners > 0 else math.nan
    flagged = s.get("flags", {})
    cheat_flagged = {hk for hk, reasons in flagged.items() if set(reasons) - MARKET_VERDICTS}
    return {
        "no_honest_expert_flagged": not any(hk in cheat_flagged for hk in honest),
        "honest_redundant": sorted(hk for hk in honest if hk in flagged and hk not in cheat_flagged),
        **({"every_adversary_flagged": all(hk in flagged for hk in adversaries)} if adversaries else {}),
        "rewards_spearman_honest": None if math.isnan(rho) else round(rho, 4),
        "rewards_rank_like_contributions": (not math.isnan(rho)) and round(rho, 9) >= MIN_SPEARMAN,
        "adversaries_emission_share": None if math.isnan(share) else round(share, 6),
        "adversaries_below_1pct": (not math.isnan(share)) and share < MAX_ADVERSARY_SHARE,
        "ledger_verifies": s["ledger"]["verified"].startswith("ok"),
    }
