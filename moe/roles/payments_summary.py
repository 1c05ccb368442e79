"""The `market` part of `summary.json`: what consumers paid experts for the calls they were answered, read from the
ledger, beside what the experts earned by emission.

Keys: `paid` {expert: TAO settled to it from escrows}, `emission` {expert: TAO it holds beyond those payments: what
consensus paid it}, `bytes_served` {expert: bytes acknowledged by the tickets it settled}, `spent` {consumer: TAO
settled from its escrow}, `price` {expert: TAO per million bytes its node announced}, `rejected_receipts` (settle
records the ledger host refused over the run). Empty without a ledger or without any settlement or price.
"""

from __future__ import annotations

import json
from typing import Any

from moe.roles.layout import RESULT, RunLayout
from moe.roles.ledger_facts import LedgerFacts, facts_for


def payments_summary(
    layout: RunLayout, experts: list[dict], rewards: dict[str, float], facts: LedgerFacts | None = None
) -> dict[str, Any]:
    """The `market` part; `facts` is the ledger's replay when the caller has read it (else read here)."""
    price = {e["hotkey"]: float(e.get("price_tao_per_mbyte") or 0.0) for e in experts}
    facts = facts_for(layout, facts) if any(price.values()) else None
    from moe.ledger import RAO_PER_TAO

    if facts is None or not facts.ok:  # a ledger that does not verify costs this section, never the summary
        return {}
    st = facts.state
    paid = {e: st.paid.get(e, 0) for e in price}
    served: dict[str, int] = {}
    spent: dict[str, int] = {}
    for (consumer, expert), (_, n_bytes, amount) in st.settled.items():
        served[expert] = served.get(expert, 0) + n_bytes
        spent[consumer] = spent.get(consumer, 0) + amount
    router = json.loads((layout.router / RESULT).read_text()) if (layout.router / RESULT).is_file() else {}
    rejected = 0
    if layout.ledger_rejections.is_file():
        rejected = sum(r[0] == "settle" for r in json.loads(layout.ledger_rejections.read_text()))
    return {
        "market": {
            "paid": {e: a / RAO_PER_TAO for e, a in sorted(paid.items())},
            "emission": {e: round(rewards.get(e, 0.0) - a / RAO_PER_TAO, 9) for e, a in sorted(paid.items())},
            "bytes_served": {e: served.get(e, 0) for e in sorted(price)},
            "spent": {c: a / RAO_PER_TAO for c, a in sorted(spent.items())},
            "price": dict(sorted(price.items())),
            "rejected_receipts": rejected,
            "trade": router.get("price_trade", []),
        }
    }
