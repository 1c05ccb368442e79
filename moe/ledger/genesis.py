"""Consensus parameters of a ledger, fixed at genesis and recorded in block 0 so every replica and `verify` agree.

Block 0 may come from a file someone else wrote, so `GenesisConfig.from_record` parses it with exact types and
ranges (an int tempo, finite shares, address keys, non-negative integer allocations, no unknown keys) and raises
RecordError otherwise. Nothing inside a file can show that its genesis is the intended one: callers pin it by
passing the expected `GenesisConfig` or genesis block hash to `Ledger.open` and `verify_ledger`.

Subnet hyperparameters (Yuma version, liquid alpha, commit-reveal, uid limits...) are global defaults that
`subnet_params` overrides per netuid, as subtensor keeps them per subnet; `LedgerConfig.params(netuid)` resolves
them. Fields added after the first chains were written appear in the genesis record only when they differ from
their defaults, so those chains keep their genesis hash.
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
    "escrow_unlock_blocks": 0,
}
"""Smallest value of each integer LedgerConfig field (all are at most I64_MAX; max_uids at most MAX_UIDS)."""
MAX_REVEAL_PERIOD = 100
"""Upper bound of reveal_period_epochs (subtensor's MAX_COMMIT_REVEAL_PEROIDS)."""
EMISSION_SPLITS = ("static", "contribution", "root")
"""How block emission is divided between subnets (LedgerConfig.emission_split)."""
ROOT_NETUID = 0
"""Netuid on which validators weigh subnets when the split is not static (subtensor's root network)."""
SUBNET_PARAMS = (
    "kappa",
    "bond_alpha",
    "bond_penalty",
    "yuma_version",
    "liquid_alpha",
    "alpha_low",
    "alpha_high",
    "alpha_sigmoid_steepness",
    "max_uids",
    "immunity_period",
    "commit_reveal",
    "reveal_period_epochs",
    "target_registrations",
)
"""LedgerConfig fields a subnet may override in `subnet_params`."""
LATER_FIELDS = (
    "yuma_version",
    "liquid_alpha",
    "alpha_low",
    "alpha_high",
    "alpha_sigmoid_steepness",
    "commit_reveal",
    "reveal_period_epochs",
    "owner_cut",
    "subnet_owners",
    "emission_split",
    "subnet_params",
    "escrow_unlock_blocks",
)
"""Fields written into the genesis record only when not at their default (older chains keep their hash)."""


@dataclass(frozen=True)
class SubnetParams:
    """One subnet's resolved hyperparameters: its `subnet_params` overrides over the global LedgerConfig values."""

    kappa: float
    bond_alpha: float
    bond_penalty: float
    yuma_version: int
    liquid_alpha: bool
    alpha_low: float
    alpha_high: float
    alpha_sigmoid_steepness: float
    max_uids: int
    immunity_period: int
    commit_reveal: bool
    reveal_period_epochs: int
    target_registrations: int
    owner: str | None
    """Hex address paid `owner_cut` of the subnet's emission, or None (no cut taken)."""


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
    yuma_version: int = 1
    """Yuma consensus version per epoch: 1 (subtensor's original) or 3 (Yuma 3 bonds)."""
    liquid_alpha: bool = False
    """Bond EMA alpha per (validator, miner) from consensus, between alpha_low and alpha_high (subtensor's liquid
    alpha); off: bond_alpha for all."""
    alpha_low: float = 0.7
    """Lower bound of the liquid alpha."""
    alpha_high: float = 0.9
    """Upper bound of the liquid alpha."""
    alpha_sigmoid_steepness: float = 1000.0
    """Steepness of the sigmoid that maps consensus to the liquid alpha."""
    commit_reveal: bool = False
    """Validators commit a hash of their weights and reveal them `reveal_period_epochs` later; plain weights
    records are then refused (weight copiers only ever see stale weights)."""
    reveal_period_epochs: int = 1
    """Epochs between a weight commit and its reveal (1..MAX_REVEAL_PERIOD); a commit not revealed then expires."""
    owner_cut: float = 0.18
    """Fraction of a subnet's emission paid to its owner, when it has one (subtensor's default 18%)."""
    subnet_owners: dict[int, str] = field(default_factory=dict)
    """Netuid -> owner's hex address; a subnet without an owner pays no cut."""
    emission_split: str = "static"
    """"static": subnet_shares always; "contribution": the stake-weighted mean of validators' root weights (netuid
    0); "root": the Yuma incentive of those root weights. Recomputed at every epoch end."""
    subnet_params: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Netuid -> overrides of any of SUBNET_PARAMS for that subnet."""
    escrow_unlock_blocks: int = 100
    """Blocks between announcing an escrow withdrawal and completing it; settlements still draw on the escrow in
    between (moe.ledger.escrow), so experts have that long to settle the tickets they hold."""

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
        for name in SUBNET_PARAMS:
            if name not in INT_LIMITS and name not in FRACTIONS:
                _check_param(name, getattr(self, name), "ledger config")
        _check_alphas(self.alpha_low, self.alpha_high, "ledger config")
        finite_number(self.owner_cut, "ledger config 'owner_cut'", 0.0, 1.0)
        if type(self.emission_split) is not str or self.emission_split not in EMISSION_SPLITS:
            raise RecordError(
                f"ledger config 'emission_split' must be one of {', '.join(EMISSION_SPLITS)}, "
                f"got {describe(self.emission_split)}"
            )
        if self.emission_split != "static" and ROOT_NETUID in self.subnet_shares:
            raise RecordError(
                f"netuid {ROOT_NETUID} is the root network under emission_split {self.emission_split!r}, "
                "so subnet_shares may not name it"
            )
        self.subnet_owners = self._per_subnet("subnet_owners", self.subnet_owners, _owner)
        self.subnet_params = self._per_subnet("subnet_params", self.subnet_params, _overrides)
        for netuid, overrides in self.subnet_params.items():
            p = {name: overrides.get(name, getattr(self, name)) for name in ("alpha_low", "alpha_high")}
            _check_alphas(p["alpha_low"], p["alpha_high"], f"subnet_params[{netuid}]")

    def _per_subnet(self, name: str, value: object, parse: Any) -> dict[int, Any]:
        """{netuid: parse(item)} from int or decimal-string keys, each a netuid of subnet_shares."""
        exact_dict(value, f"ledger config {name!r}")
        out: dict[int, Any] = {}
        for key, item in value.items():
            netuid = _netuid(key)
            if netuid is None or netuid not in self.subnet_shares:
                raise RecordError(f"{name} key {describe(key)} is not a netuid of subnet_shares")
            if netuid in out:
                raise RecordError(f"{name} names netuid {netuid} twice")
            out[netuid] = parse(item, f"{name}[{netuid}]")
        return dict(sorted(out.items()))

    def params(self, netuid: int) -> SubnetParams:
        """The hyperparameters in force on `netuid`: its `subnet_params` overrides, else the global values."""
        overrides = self.subnet_params.get(netuid, {})
        values = {name: overrides.get(name, getattr(self, name)) for name in SUBNET_PARAMS}
        return SubnetParams(**values, owner=self.subnet_owners.get(netuid))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in LATER_FIELDS:
            default = LATER_DEFAULTS[name]
            if type(d[name]) is type(default) and d[name] == default:
                del d[name]
        d["subnet_shares"] = {str(k): v for k, v in self.subnet_shares.items()}
        for name in ("subnet_owners", "subnet_params"):
            if name in d:
                d[name] = {str(k): v for k, v in d[name].items()}
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


def _check_param(name: str, value: object, where: str) -> object:
    """`value` if it is a valid value of the subnet hyperparameter `name`; raises RecordError naming it otherwise."""
    where = f"{where} {name!r}"
    if name in ("liquid_alpha", "commit_reveal"):
        if type(value) is not bool:
            raise RecordError(f"{where} must be true or false, got {describe(value)}")
    elif name == "yuma_version":
        if type(value) is not int or value not in (1, 3):
            raise RecordError(f"{where} must be 1 or 3, got {describe(value)}")
    elif name == "reveal_period_epochs":
        exact_int(value, where, 1, MAX_REVEAL_PERIOD)
    elif name == "max_uids":
        exact_int(value, where, 1, MAX_UIDS)
    elif name in INT_LIMITS:
        exact_int(value, where, INT_LIMITS[name], I64_MAX)
    elif name == "alpha_sigmoid_steepness":
        finite_number(value, where, 0.0, float(I64_MAX))
    else:  # kappa, bond_alpha, bond_penalty, alpha_low, alpha_high
        finite_number(value, where, 0.0, 1.0)
    return value


def _check_alphas(low: object, high: object, where: str) -> None:
    """Liquid alpha bounds: each in [0, 1] and low <= high."""
    _check_param("alpha_low", low, where)
    _check_param("alpha_high", high, where)
    if low > high:
        raise RecordError(f"{where} alpha_low {low} is above alpha_high {high}")


def _owner(value: object, where: str) -> str:
    if not is_address(value):
        raise RecordError(f"{where} must be a hex address, got {describe(value)}")
    return value


def _overrides(value: object, where: str) -> dict[str, Any]:
    """A subnet's overrides: only SUBNET_PARAMS keys, each valid; raises RecordError naming an unknown key."""
    exact_dict(value, where)
    unknown = sorted(describe(k) for k in value if k not in SUBNET_PARAMS)
    if unknown:
        raise RecordError(f"unknown {where} key(s): {', '.join(unknown)}")
    for name, item in value.items():
        _check_param(name, item, where)
    return dict(sorted(value.items()))


def _netuid(key: object) -> int | None:
    """An int netuid in 0..65535, or its plain decimal string ("1", never "01" or "+1"); None for anything else."""
    if type(key) is str and len(key) <= 5 and key.isascii() and key.isdigit() and key == str(int(key)):
        key = int(key)
    return key if type(key) is int and 0 <= key <= MAX_NETUID else None


LATER_DEFAULTS = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(LedgerConfig)
    if f.name in LATER_FIELDS
}


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
