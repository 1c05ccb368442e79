"""Consensus parameters of a ledger, fixed at genesis and recorded in block 0 so every replica and `verify` agree.

Block 0 may come from a file someone else wrote, so `GenesisConfig.from_record` parses it with exact types and
ranges (an int tempo, finite shares, address keys, non-negative integer allocations, no unknown keys) and raises
RecordError otherwise. Nothing inside a file can show that its genesis is the intended one: callers pin it by
passing the expected `GenesisConfig` or genesis block hash to `Ledger.open` and `verify_ledger`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moe.ledger.emission import BLOCK_TIME_SECONDS, MAX_SUPPLY_RAO, RAO_PER_TAO
from moe.ledger.fields import (
    RecordError,
    describe,
    exact_dict,
    exact_int,
    exact_keys,
    exact_str,
    finite_number,
    is_address,
)

I64_MAX = 2**63 - 1
MAX_NETUID = 0xFFFF
MAX_UIDS = 4096
"""Upper bound of max_uids: an epoch builds (validators, uids) float matrices, which must fit in memory."""
FRACTIONS = ("miner_share", "kappa", "bond_alpha", "bond_penalty")
"""LedgerConfig fields that must lie in [0, 1]."""
INT_LIMITS = {
    "tempo": 1,
    "max_uids": 1,
    "max_validators": 1,
    "immunity_period": 0,
    "initial_difficulty": 1,
    "min_difficulty": 1,
    "max_difficulty": 1,
    "initial_burn": 0,
    "min_burn": 0,
    "max_burn": 0,
    "target_registrations": 1,
    "adjustment_interval": 1,
    "registration_window": 1,
    "weights_rate_limit": 0,
}
"""Smallest value of each integer LedgerConfig field (all are at most I64_MAX; max_uids at most MAX_UIDS)."""


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
        """Raise ValueError (a RecordError) naming the first field of the wrong type or out of range."""
        for name, lo in INT_LIMITS.items():
            hi = MAX_UIDS if name == "max_uids" else I64_MAX
            exact_int(getattr(self, name), f"ledger config {name!r}", lo, hi)
        for name in FRACTIONS:
            finite_number(getattr(self, name), f"ledger config {name!r}", 0.0, 1.0)
        for name in ("block_time", "time_scale"):
            if finite_number(getattr(self, name), f"ledger config {name!r}", 0.0, float(I64_MAX)) == 0:
                raise RecordError("block_time and time_scale must be > 0")
        if self.max_difficulty < self.min_difficulty or self.max_burn < self.min_burn:
            raise RecordError("max_difficulty and max_burn must not be below min_difficulty and min_burn")
        self.subnet_shares = _subnet_shares(self.subnet_shares)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subnet_shares"] = {str(k): v for k, v in self.subnet_shares.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerConfig:
        """Build from a genesis record (missing keys take their defaults); raises ValueError naming an unknown key
        or a value of the wrong type."""
        exact_dict(d, "ledger config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(describe(k) for k in set(d) - names)
        if unknown:
            raise RecordError(f"unknown ledger config key(s): {', '.join(unknown)}")
        return cls(**d)


def _subnet_shares(shares: object) -> dict[int, float]:
    """{netuid: share} from int keys or their decimal strings (as JSON stores them); raises RecordError unless
    every netuid is in 0..65535 without padding, every share finite and >= 0, and some share positive."""
    exact_dict(shares, "ledger config 'subnet_shares'")
    out: dict[int, float] = {}
    for key, share in shares.items():
        netuid = _netuid(key)
        if netuid is None:
            raise RecordError(f"subnet_shares key {describe(key)} is not a netuid in 0..{MAX_NETUID}")
        if netuid in out:
            raise RecordError(f"subnet_shares names netuid {netuid} twice")
        out[netuid] = finite_number(share, f"subnet_shares[{netuid}]", 0.0, float(I64_MAX))
    if not any(out.values()):
        raise RecordError("subnet_shares must give some netuid a positive share")
    return out


def _netuid(key: object) -> int | None:
    """An int netuid in 0..65535, or its plain decimal string ("1", never "01" or "+1"); None for anything else."""
    if type(key) is str and len(key) <= 5 and key.isascii() and key.isdigit() and key == str(int(key)):
        key = int(key)
    return key if type(key) is int and 0 <= key <= MAX_NETUID else None


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
        """The genesis record of block 0; raises ValueError for a bad address or amount, or a total over the cap."""
        total = 0
        for name in ("balances", "stakes"):
            for address, amount in getattr(self, name).items():
                if not is_address(address):
                    raise RecordError(f"bad genesis {name} entry {describe(address)}: not an address")
                total += exact_int(amount, f"genesis {name} entry {address[:16]}", 0, MAX_SUPPLY_RAO)
        if total > MAX_SUPPLY_RAO:
            raise RecordError("genesis allocations must be non-negative and within the supply cap")
        return {
            "kind": "genesis",
            "chain_id": self.chain_id,
            "config": self.ledger.to_dict(),
            "balances": dict(sorted(self.balances.items())),
            "stakes": dict(sorted(self.stakes.items())),
        }

    @classmethod
    def from_record(cls, record: object, timestamp: float = 0.0) -> GenesisConfig:
        """Parse a stored genesis record with exact types; raises RecordError naming the first problem."""
        record = exact_dict(record, "genesis record")
        exact_keys(record, "genesis record", {"kind", "chain_id", "config", "balances", "stakes"})
        if record["kind"] != "genesis":
            raise RecordError(f"genesis record has kind {describe(record['kind'])}")
        out = cls(
            ledger=LedgerConfig.from_dict(record["config"]),
            balances=exact_dict(record["balances"], "genesis balances"),
            stakes=exact_dict(record["stakes"], "genesis stakes"),
            timestamp=timestamp,
            chain_id=exact_str(record["chain_id"], "genesis chain_id"),
        )
        out.record()  # checks the allocations
        return out
