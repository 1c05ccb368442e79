"""Which miners a local network starts: `miners=english@400,english@150,code,math` in the run's config.

Each entry is `subnet[@steps][:price]`: one expert node on that subnet, training `steps` steps (no `@`: the run's
`expert_train.steps`) and charging `price` TAO per million bytes served (no `:`: `expert.price_tao_per_mbyte`).
Several entries on one subnet make it a market: its miners compete for the subnet's emission, and the one given more
compute should earn more. A subnet's first miner is named after the subnet (`english`, the name a one-miner run has
always used for its folder and node); the next ones `english-2`, `english-3`, ...
An empty list starts one miner per subnet of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moe.net.expert_record import MAX_PRICE_TAO_PER_MBYTE

MAX_MINER_STEPS = 10**7
"""Upper bound of a miner's training steps (a typo like 4000000000 is an error, not a month of training)."""


@dataclass(frozen=True)
class MinerSpec:
    """One expert node of the local network."""

    name: str
    """Its folder under experts/ and its node name after `expert-`."""
    subnet: str
    """The subnet it serves and is paid on."""
    steps: int | None
    """Training steps; None takes `expert_train.steps`."""
    index: int
    """0 for a subnet's first miner, 1 for the second, ...: seeds its own data order."""
    price: float | None = None
    """TAO per million bytes it charges; None takes `expert.price_tao_per_mbyte`."""


def parse_miners(entries: list[str], subnets: list[str]) -> list[MinerSpec]:
    """The miners of `entries` (or one per subnet when empty); ValueError naming the first bad entry: an unknown
    subnet, steps that are not a positive integer, a price that is not a number in 0..MAX_PRICE_TAO_PER_MBYTE, or a
    miner list that leaves one of `subnets` without a miner."""
    if not entries:
        return [MinerSpec(s, s, None, 0) for s in subnets]
    out: list[MinerSpec] = []
    count: dict[str, int] = {}
    for entry in entries:
        head, colon, price_text = str(entry).strip().partition(":")
        subnet, at, steps_text = head.partition("@")  # entry_subnet's reading
        if subnet not in subnets:
            raise ValueError(
                f"miners entry {entry!r} names subnet {subnet!r}, not one of the run's: {', '.join(subnets)}"
            )
        steps = None
        if at:
            if not steps_text.isdigit() or not 1 <= int(steps_text) <= MAX_MINER_STEPS:
                raise ValueError(f"miners entry {entry!r}: steps after '@' must be an integer in 1..{MAX_MINER_STEPS}")
            steps = int(steps_text)
        price = _price(entry, price_text) if colon else None
        index = count.get(subnet, 0)
        count[subnet] = index + 1
        out.append(MinerSpec(subnet if index == 0 else f"{subnet}-{index + 1}", subnet, steps, index, price))
    missing = [s for s in subnets if s not in count]
    if missing:
        raise ValueError(f"miners leaves subnet(s) {', '.join(missing)} without a miner; add them or drop them")
    return out


def _price(entry: str, text: str) -> float:
    try:
        price = float(text)
    except ValueError:
        price = math.nan
    if not 0.0 <= price <= MAX_PRICE_TAO_PER_MBYTE:
        raise ValueError(f"miners entry {entry!r}: price after ':' must be a number in 0..{MAX_PRICE_TAO_PER_MBYTE:g}")
    return price


def entry_subnet(entry: str) -> str:
    """The subnet a `miners` entry names (before any `@steps` or `:price`)."""
    return str(entry).strip().partition(":")[0].partition("@")[0]


def any_priced(entries: list[str], subnets: list[str], default_price: float) -> bool:
    """Whether some miner of the list charges (its own `:price`, or the default `expert.price_tao_per_mbyte`)."""
    return any((default_price if m.price is None else m.price) > 0 for m in parse_miners(entries, subnets))


def miner_subnet(name: str, miners: list[MinerSpec]) -> str | None:
    """The subnet of the miner called `name`, or None."""
    return next((m.subnet for m in miners if m.name == name), None)
