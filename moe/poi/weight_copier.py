"""The weight-copying validator: an adversary that scores nobody and sets the weights others already published.

Weights on a subnet are public once applied, so a validator can earn dividends by copying the stake-weighted
consensus instead of evaluating miners. With commit-reveal on, only revealed weights are visible, and those are
`reveal_period_epochs` old: a copier then trails every change in miner quality and its bonds lag the honest ones.
tests/ledger/test_weight_copier.py measures both cases on a real ledger.
"""

from __future__ import annotations

import logging

from moe.ledger.state import LedgerState

logger = logging.getLogger(__name__)


def copy_visible_weights(state: LedgerState, netuid: int, copier: str) -> tuple[list[int], list[float]]:
    """(uids, weights): the stake-weighted mean of the other staked validators' latest applied weight rows on
    `netuid`, each row normalized to sum 1, the copier's own uid left out.

    Only applied weights are read (`SubnetState.weights`): on a commit-reveal subnet that means revealed ones, never
    pending commits. Returns ([], []) when nothing is visible or `netuid` is unknown.
    """
    sub = state.subnets.get(netuid)
    if sub is None:
        return [], []
    own = sub.registry.uid_of(copier)
    mean: dict[int, float] = {}
    for validator, (_, row) in sorted(sub.weights.items()):
        stake = state.stakes.get(validator, 0)
        total = sum(row.values())
        if validator == copier or stake <= 0 or total <= 0:
            continue
        for uid, w in row.items():
            if uid != own and uid in sub.registry.slots:
                mean[uid] = mean.get(uid, 0.0) + stake * w / total
    uids = sorted(u for u, w in mean.items() if w > 0)
    mass = sum(mean[u] for u in uids)
    return uids, [mean[u] / mass for u in uids]
