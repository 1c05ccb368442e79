"""How a validator's scores reach the ledger: weights per subnet (committed, then revealed) and root weights.

Each domain is its own ledger subnet, so a validator weighs the miners of each subnet among themselves: one weight
vector per netuid over the uids registered there, from each miner's credit among its own subnet's competitors
(moe.poi.market_credit). On a subnet with
commit-reveal (the default, as on subtensor) it first posts only a salted hash of that vector and reveals the vector
`reveal_period_epochs` later, so a validator that copies others' weights sees them only when they are already old.
On the root subnet (netuid 0, never commit-revealed) it reports each subnet's share of the mixture's loss
reduction, the sum of its miners' contributions; the ledger splits the block emission across subnets from those.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from moe.identity import Hotkey
from moe.ledger import WeightSubmission, to_u16
from moe.ledger.records import commit_record, reveal_record
from moe.net.expert_record import ExpertRecord
from moe.net.ledger_client import LedgerHead, publish_weights, read_head, submit_records

logger = logging.getLogger(__name__)

ROOT_NETUID = 0
"""The root subnet, whose 'uids' are the other subnets' netuids."""


def subnet_weights(
    head: LedgerHead, records: list[ExpertRecord], contribution: dict[str, float]
) -> dict[int, tuple[list[int], list[float]]]:
    """Netuid → (uids, credits) of the scored experts registered on the subnet their record names, from any
    non-negative credit by hotkey; subnets where nobody contributed are left out (an all-zero vector carries no
    information)."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for r in records:
        reg = head.uid_on(r.netuid, r.hotkey)
        if reg is None:
            continue
        uids, ws = out.setdefault(r.netuid, ([], []))
        uids.append(reg[0])
        ws.append(max(0.0, float(contribution.get(r.hotkey, 0.0))))
    return {n: (u, w) for n, (u, w) in sorted(out.items()) if sum(w) > 0}


def root_weights(head: LedgerHead, records: list[ExpertRecord], contribution: dict[str, float]) -> dict[int, float]:
    """Netuid → the summed contribution of its registered miners (each subnet's share of the loss reduction)."""
    out = {n: 0.0 for n in head.subnets if n != ROOT_NETUID}
    for r in records:
        if r.netuid in out and head.uid_on(r.netuid, r.hotkey) is not None:
            out[r.netuid] += max(0.0, float(contribution.get(r.hotkey, 0.0)))
    return out


def paid_shares(
    head: LedgerHead,
    records: list[ExpertRecord],
    per_subnet: dict[int, tuple[list[int], list[float]]],
    root: dict[int, float],
) -> dict[str, float]:
    """Hotkey → the share of the miners' emission these weights ask for: its subnet's root share times its share of
    the subnet's weight (what the rewards should rank like)."""
    total = sum(max(0.0, v) for v in root.values())
    out: dict[str, float] = {}
    for r in records:
        reg = head.uid_on(r.netuid, r.hotkey)
        uids, ws = per_subnet.get(r.netuid, ([], []))
        if reg is None or total <= 0 or reg[0] not in uids:
            out[r.hotkey] = 0.0
            continue
        within = ws[uids.index(reg[0])] / sum(ws)
        out[r.hotkey] = max(0.0, root.get(r.netuid, 0.0)) / total * within
    return out


@dataclass
class PendingReveal:
    """A commit waiting for its reveal epoch."""

    netuid: int
    epoch: int
    reveal_epoch: int
    uids: list[int]
    weights: list[int]
    salt: bytes


@dataclass
class WeightSetter:
    """Sends one validator's weights to the ledger host through the DHT, with commit-reveal where a subnet has it."""

    dht: object
    hotkey: Hotkey
    host: str
    pending: list[PendingReveal] = field(default_factory=list)

    def set(self, head: LedgerHead, per_subnet: dict[int, tuple[list[int], list[float]]], root: dict[int, float]):
        """Commit (or set) each subnet's weights and set the root weights, all naming `head.epoch`; returns
        {netuid: {uid: u16}} of what was sent."""
        sent: dict[int, dict[int, int]] = {}
        plain: list[WeightSubmission] = []
        commits = []
        for netuid, (uids, ws) in per_subnet.items():
            sub = head.subnets.get(netuid)
            if sub is None:
                continue
            if sub.commit_reveal:
                u, w = to_u16(uids, ws)
                if not u:
                    continue
                salt = os.urandom(32)
                commits.append(commit_record(self.hotkey, netuid, head.epoch, u, w, salt))
                reveal_at = head.epoch + sub.reveal_period_epochs
                self.pending.append(PendingReveal(netuid, head.epoch, reveal_at, u, w, salt))
            else:
                s = WeightSubmission.create(self.hotkey, netuid, head.epoch, uids, ws)
                plain.append(s)
                u, w = s.uids, s.weights
            sent[netuid] = dict(zip(u, w, strict=True))
        if any(v > 0 for v in root.values()):
            plain.append(
                WeightSubmission.create(self.hotkey, ROOT_NETUID, head.epoch, list(root), list(root.values()))
            )
        if commits:
            submit_records(self.dht, self.hotkey, commits)
        if plain:
            publish_weights(self.dht, self.hotkey, plain)
        return sent

    def reveal_due(self, timeout: float) -> int:
        """Wait for each pending commit's reveal epoch and reveal it (dropping any whose epoch has passed: the ledger
        would refuse it); returns how many were posted. Raises TimeoutError when the ledger stops advancing."""
        posted = 0
        deadline = time.monotonic() + timeout
        while self.pending:
            head = read_head(self.dht, self.host)
            if head is not None:
                late = [p for p in self.pending if head.epoch > p.reveal_epoch]
                for p in late:
                    logger.warning("commit of epoch %d on netuid %d expired unrevealed", p.epoch, p.netuid)
                due = [p for p in self.pending if head.epoch == p.reveal_epoch]
                if due:
                    records = [reveal_record(self.hotkey, p.netuid, p.epoch, p.uids, p.weights, p.salt) for p in due]
                    submit_records(self.dht, self.hotkey, records)
                    posted += len(records)
                self.pending = [p for p in self.pending if p not in late and p not in due]
            if not self.pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.pending)} weight commits not revealed within {timeout:.0f}s")
            time.sleep(min(0.2, head.block_interval if head else 0.2))
        return posted
