"""Namespaced tracker metrics of the network's roles, as pure functions of what each role already computes.

Keys: the router's `router/load/<hotkey>` (its share of the gate's top-k selections, averaged over input subnets so
each domain weighs the same, as `all` does for bits per byte) and `router/load/<subnet>/<hotkey>`; a validator's
`validator/weight/<hotkey>`, `validator/contribution/<hotkey>`, `validator/shapley_bits/<hotkey>`,
`validator/bpb/<hotkey>`, `validator/mixture_bpb`, `validator/experts`, `validator/flags`; the ledger's
`ledger/height`, `ledger/issuance`, `ledger/emission`, `ledger/miner_payouts`, `ledger/validator_payouts` (TAO) and
`ledger/incentive/<hotkey>` per epoch. `<hotkey>` is `hotkey_key(hotkey)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moe.training.tracking import hotkey_key

if TYPE_CHECKING:
    from moe.poi.epoch import EpochScore


def routing_metrics(routing: dict[str, dict[str, float]]) -> dict[str, float]:
    """The router's load per expert from `{input subnet: {hotkey: share of selections}}` (moe.routing.usage)."""
    out: dict[str, float] = {}
    for subnet, shares in routing.items():
        out.update({f"router/load/{subnet}/{hotkey_key(hk)}": s for hk, s in shares.items()})
    keys = sorted({hk for shares in routing.values() for hk in shares})
    for hk in keys:
        out[f"router/load/{hotkey_key(hk)}"] = sum(s.get(hk, 0.0) for s in routing.values()) / len(routing)
    return out


def validator_epoch_metrics(score: EpochScore, weight_of: dict[str, int], seconds: float) -> dict[str, float]:
    """One validator epoch: each expert's weight (its share of the u16 weights the validator signed; none without a
    ledger), contribution, Shapley bits and own bits per byte; the mixture's bits per byte, how many experts were
    scored and flagged, and the epoch's wall seconds."""
    total = sum(weight_of.values())
    out = {f"validator/weight/{hotkey_key(hk)}": w / total for hk, w in weight_of.items() if total > 0}
    out.update({f"validator/contribution/{hotkey_key(hk)}": c for hk, c in score.contribution.items()})
    out.update({f"validator/shapley_bits/{hotkey_key(hk)}": b for hk, b in score.shapley_bits.items()})
    out.update({f"validator/bpb/{hotkey_key(hk)}": b for hk, b in score.bpb.items() if b is not None})
    out["validator/mixture_bpb"] = score.mixture_bpb
    out["validator/experts"] = len(score.contribution)
    out["validator/flags"] = len(score.flags)
    out["validator/epoch_seconds"] = seconds
    return out


def ledger_epoch_metrics(epoch: dict, height: int, issuance_rao: int, rao_per_tao: int) -> dict[str, float]:
    """One ledger epoch record (moe.ledger.state `_epoch`) at block `height`, with the total issuance after that
    block, as tracker metrics in TAO."""
    out = {
        "ledger/height": height,
        "ledger/epoch": epoch["epoch"],
        "ledger/issuance": issuance_rao / rao_per_tao,
        "ledger/emission": epoch["emission"] / rao_per_tao,
        "ledger/miner_payouts": sum(epoch["miner_payouts"]) / rao_per_tao,
        "ledger/validator_payouts": sum(epoch["validator_payouts"]) / rao_per_tao,
    }
    incentive = zip(epoch["hotkeys"], epoch["incentive"], strict=True)
    out.update({f"ledger/incentive/{hotkey_key(hk)}": x for hk, x in incentive})
    return out
