"""Who taught the student: each expert's share of the distillation traffic, published as a signed record.

For every teacher window the distiller counts, per expert, the positions whose distribution it served, each weighted
by the gate's weight on it there (softmax of the gate's scores over the experts that answered at that position). An
expert called on the probe and then left out earns little; the one the gate leaned on earns most. The totals go into
the DHT under `DISTILL_KEY`, signed by the distiller, re-published each `publish_interval_steps` with a growing epoch;
validators read them beside their Shapley values, and a marketplace can pay from them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from moe.identity import Hotkey
from moe.net.dht_records import DISTILL_CONTEXT, DISTILL_KEY, publish_signed, read_signed
from moe.net.signed import MalformedRecord, check_address, check_float, check_int
from moe.routing.mixing import MixOutput

MAX_CREDITED = 1024
"""Experts one record may credit; a longer record is refused on reading."""


@dataclass
class DistillTraffic:
    """Running totals of one distiller's teacher traffic."""

    credit: dict[str, float] = field(default_factory=dict)
    """Hotkey -> positions served, weighted by the gate's weight on them."""
    positions: dict[str, int] = field(default_factory=dict)
    """Hotkey -> positions whose distribution it served (probe and full calls)."""
    windows: int = 0
    """Teacher windows paid for."""
    epoch: int = 0
    """Publications so far."""

    def __post_init__(self):
        self._lock = threading.Lock()

    def record(self, mix: MixOutput) -> None:
        """Credit the experts of one mixed batch."""
        answered = mix.answered  # (B, T, J)
        weights = mix.gate_logits.masked_fill(~answered, float("-inf")).softmax(-1)  # (B, T, J)
        weights = torch.nan_to_num(weights, nan=0.0)  # a position nobody answered credits nobody
        credit = (weights * answered).sum((0, 1)).tolist()
        served = answered.sum((0, 1)).tolist()
        with self._lock:
            self.windows += answered.shape[0]
            for key, c, n in zip(mix.keys, credit, served, strict=True):
                if n:
                    self.credit[key] = self.credit.get(key, 0.0) + float(c)
                    self.positions[key] = self.positions.get(key, 0) + int(n)

    def shares(self) -> dict[str, float]:
        total = sum(self.credit.values())
        return {k: v / total for k, v in sorted(self.credit.items())} if total > 0 else {}

    def payload(self) -> dict:
        return {
            "epoch": self.epoch,
            "windows": self.windows,
            "credit": {k: round(v, 3) for k, v in sorted(self.credit.items())},
            "positions": dict(sorted(self.positions.items())),
        }

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed distiller goes on counting."""
        return self.payload()

    def restore(self, state: dict) -> None:
        """Go on from a checkpoint's `state()` (checked like any record: a checkpoint is a file anyone could edit)."""
        record = parse_record(state)
        with self._lock:
            self.credit, self.positions = dict(record.credit), dict(record.positions)
            self.windows, self.epoch = record.windows, record.epoch

    def publish(self, dht, hotkey: Hotkey, ttl: float, wait: bool = True):
        """Sign the totals as the next epoch's record and store them under the distiller's hotkey."""
        with self._lock:
            self.epoch += 1
            payload = self.payload()
        return publish_signed(dht, DISTILL_KEY, hotkey, payload, DISTILL_CONTEXT, ttl, wait=wait)


@dataclass(frozen=True)
class DistillRecord:
    epoch: int
    windows: int
    credit: dict[str, float]
    positions: dict[str, int]

    def shares(self) -> dict[str, float]:
        total = sum(self.credit.values())
        return {k: v / total for k, v in self.credit.items()} if total > 0 else {}


def parse_record(payload: dict) -> DistillRecord:
    """A distillation-traffic payload checked field by field; MalformedRecord on anything off-schema."""
    if not isinstance(payload, dict):
        raise MalformedRecord("a distillation record is a dictionary")
    credit, positions = payload.get("credit"), payload.get("positions")
    if not isinstance(credit, dict) or not isinstance(positions, dict):
        raise MalformedRecord("credit and positions must be dictionaries")
    if len(credit) > MAX_CREDITED or set(credit) != set(positions):
        raise MalformedRecord(f"credit and positions must name the same experts, at most {MAX_CREDITED}")
    checked_credit, checked_positions = {}, {}
    for key, value in credit.items():
        check_address("credited expert", key)
        checked_positions[key] = check_int("positions", positions[key], 0, 1 << 53)
        # credit is gate-weighted positions: never more than the positions served (rounding aside)
        checked_credit[key] = check_float("credit", value, 0.0, checked_positions[key] + 0.01)
    return DistillRecord(
        check_int("epoch", payload.get("epoch"), 0, 1 << 31),
        check_int("windows", payload.get("windows"), 0, 1 << 53),
        checked_credit,
        checked_positions,
    )


def read_distill_traffic(dht) -> dict[str, DistillRecord]:
    """{distiller hotkey: its latest record} of every distiller whose record is signed and well-formed."""
    out = {}
    for distiller, payload in read_signed(dht, DISTILL_KEY, DISTILL_CONTEXT).items():
        try:
            out[distiller] = parse_record(payload)
        except MalformedRecord:
            continue
    return out


def merged_shares(records: dict[str, DistillRecord]) -> dict[str, float]:
    """Each expert's share of all distillers' credited traffic together."""
    total: dict[str, float] = {}
    for record in records.values():
        for key, value in record.credit.items():
            total[key] = total.get(key, 0.0) + value
    mass = sum(total.values())
    return {k: v / mass for k, v in sorted(total.items())} if mass > 0 else {}
