"""Consensus parameters of a ledger, fixed at genesis and recorded in block 0 so every replica and `verify` agree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moe.ledger.emission import BLOCK_TIME_SECONDS, MAX_SUPPLY_RAO, RAO_PER_TAO


@dataclass
class LedgerConfig:
    """Rules of the chain; changing any of them makes a different chain (a different genesis hash)."""

    block_time: float = float(BLOCK_TIME_SECONDS)
    """Seconds between blocks on the real schedule."""
    time_scale: float = 1.0
    """Speed-up of a local demo: blocks are due every block_time / time_scale wall seconds."""
    tempo: int = 360
    """Blocks per epoch; the last block of each epoch runs Yuma and pays out the subnet's pending emission."""
    subnet_shares: dict[int, float] = field(default_factory=lambda: {1: 1.0})
    """Subnets (netuid -> share of each block's emission); only these netuids accept records."""
    miner_share: float = 0.5
    """Fraction of a subnet's emission paid to miners by incentive; the rest to validators by dividends."""
    kappa: float = 0.5
    """Stake majority the consensus median needs."""
    bond_alpha: float = 0.1
    """Weight of this epoch's bonds in the bond EMA."""
    bond_penalty: float = 1.0
    """0: bonds follow raw weights; 1: bonds follow consensus-clipped weights."""
    max_uids: int = 256
    """Uids per subnet; a full subnet prunes its lowest-scoring non-immune uid for a newcomer."""
    max_validators: int = 64
    """Top-staked registered hotkeys per subnet whose weights count."""
    immunity_period: int = 4096
    """Blocks a new uid cannot be pruned."""
    initial_difficulty: int = 1000
    """Proof-of-work difficulty of a new subnet (expected hashes per registration)."""
    min_difficulty: int = 1
    """Lower clamp of the difficulty adjustment."""
    max_difficulty: int = 2**63 - 1
    """Upper clamp of the difficulty adjustment."""
    initial_burn: int = RAO_PER_TAO
    """Rao a burn registration costs on a new subnet (recycled: it leaves total issuance)."""
    min_burn: int = RAO_PER_TAO // 1000
    """Lower clamp of the burn cost (rao)."""
    max_burn: int = 100 * RAO_PER_TAO
    """Upper clamp of the burn cost (rao)."""
    target_registrations: int = 2
    """Registrations per adjustment interval that keep difficulty and burn unchanged."""
    adjustment_interval: int = 100
    """Blocks between difficulty and burn adjustments."""
    registration_window: int = 64
    """How many recent blocks a registration's block hash may be from."""
    weights_rate_limit: int = 0
    """Minimum blocks between two weight submissions of one validator on one subnet (on top of one per epoch)."""

    def __post_init__(self) -> None:
        self.subnet_shares = {int(k): float(v) for k, v in self.subnet_shares.items()}
        if self.tempo < 1 or self.adjustment_interval < 1 or self.max_uids < 1 or self.max_validators < 1:
            raise ValueError("tempo, adjustment_interval, max_uids and max_validators must be >= 1")
        if not self.subnet_shares or any(v < 0 for v in self.subnet_shares.values()):
            raise ValueError("subnet_shares must name at least one netuid with non-negative shares")
        if not all(0 <= n <= 0xFFFF for n in self.subnet_shares):
            raise ValueError("netuids must be in 0..65535")
        if self.block_time <= 0 or self.time_scale <= 0:
            raise ValueError("block_time and time_scale must be > 0")
        if not 0 <= self.miner_share <= 1:
            raise ValueError(f"miner_share must be in [0, 1], got {self.miner_share}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subnet_shares"] = {str(k): v for k, v in self.subnet_shares.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerConfig:
        """Build from a genesis record; raises ValueError naming an unknown key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ledger config key(s): {sorted(unknown)}")
        return cls(**d)


@dataclass
class GenesisConfig:
    """Block 0: the rules and the initial allocation."""

    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    """Consensus parameters."""
    balances: dict[str, int] = field(default_factory=dict)
    """Initial free balance per hex address (rao); counts toward total issuance."""
    stakes: dict[str, int] = field(default_factory=dict)
    """Initial stake per hex address (rao); counts toward total issuance."""
    timestamp: float = 0.0
    """Unix time of block 0."""
    chain_id: str = "hivemoe-local"
    """Name of the chain, so two chains with equal rules still have different genesis hashes."""

    def record(self) -> dict[str, Any]:
        total = sum(self.balances.values()) + sum(self.stakes.values())
        if any(v < 0 for v in [*self.balances.values(), *self.stakes.values()]) or total > MAX_SUPPLY_RAO:
            raise ValueError("genesis allocations must be non-negative and within the supply cap")
        return {
            "kind": "genesis",
            "chain_id": self.chain_id,
            "config": self.ledger.to_dict(),
            "balances": {k: int(v) for k, v in sorted(self.balances.items())},
            "stakes": {k: int(v) for k, v in sorted(self.stakes.items())},
        }
