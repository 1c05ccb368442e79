"""The run's whole configuration: one dataclass per component, composed here and filled by `moe.config_loader`."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe.model.transformer import ModelConfig
from moe.training.loop import TrainConfig
from moe.training.tracking import WandbConfig

ROLES = ("network", "expert", "seed", "router", "validator", "bootstrap", "baseline")
DEFAULT_SUBNETS = ["english", "code", "math", "persian"]
ADVERSARIES = ("copycat", "noise")


@dataclass
class CorpusConfig:
    data_dir: str = ""
    """Corpus cache; empty uses $HIVEMOE_DATA or ~/.cache/hivemoe/data."""
    slice: bool = False
    """Use the small (~200 KB a domain) slice built for tests."""


@dataclass
class NetworkConfig:
    host: str = "127.0.0.1"
    """Address this node listens on; 0.0.0.0 to be reachable from other machines."""
    port: int = 0
    """TCP port for the node's hivemind peer; 0 picks a free one."""
    announce_ttl: float = 20.0
    """Seconds a DHT announcement lives; a dead node vanishes from discovery after it."""
    heartbeat_interval: float = 4.0
    """Seconds between re-announcements."""
    refresh_interval: int = 25
    """Training steps between copies of fresh weights into the served model."""
    join_attempts: int = 6
    """Tries to reach the initial peers before giving up."""
    join_timeout: float = 15.0
    """Seconds one join attempt may take."""


@dataclass
class RouterConfig:
    k_best: int = 2
    """Experts called per sequence."""
    k_min: int = 0
    """Answers needed before slower experts are skipped (after a short grace); 0 waits for every expert called."""
    forward_timeout: float = 5.0
    """Seconds to wait for an expert before skipping it."""
    probe_len: int = 16
    """Leading bytes every expert scores before the gate picks the top-k for the rest of the sequence."""
    steps: int = 150
    """Gate training steps on the routing split."""
    batch_size: int = 16
    """Sequences per gate step."""
    lr: float = 3e-3
    """Gate learning rate."""
    balance_coef: float = 0.01
    """Weight of the gate's load-balancing loss."""
    d_gate: int = 64
    """Width of the gate's byte encoder."""
    wire_format: str = "q8"
    """How experts send distributions: fp32, fp16, q8 (a quarter of fp32, ~0 bits per byte lost) or topk."""
    eval_batches: int = 8
    """Validation batches per subnet when scoring the mixture."""


@dataclass
class ValidatorConfig:
    stake: float = 1000.0
    """TAO this validator stakes on the ledger (held as integer rao); its weights count in proportion."""
    epochs: int = 2
    """Evaluation epochs before the validator exits; 0 runs until stopped."""
    windows_per_epoch: int = 32
    """Evaluation windows drawn per epoch from the subnets' validation splits."""
    seq_len: int = 64
    """Bytes per evaluation window."""
    batch_size: int = 8
    """Windows per expert call (an expert missing one call is absent from those windows only)."""
    epoch_interval: float = 5.0
    """Seconds between the starts of two evaluation epochs."""
    copy_max_js: float = 1e-4
    """Two experts whose mean Jensen–Shannon divergence (bits) is at most this are copies; the later one is flagged."""
    max_bpb: float = 7.9
    """An expert scoring this many bits per byte or more is uninformative (uniform is 8) and flagged."""
    max_missing_fraction: float = 0.5
    """An expert missing more than this fraction of windows is flagged for timeouts."""
    register_timeout: float = 60.0
    """Seconds to wait for the ledger to confirm this validator's registration and stake."""


@dataclass
class LedgerHostConfig:
    enabled: bool = False
    """Register nodes on the ledger through the DHT (set by the local network, which hosts the ledger)."""
    netuid: int = 0
    """Ledger subnet the mixture's miners register on and validators weigh (domains are discovery netuids in it)."""
    block_interval: float = 0.25
    """Wall seconds between blocks (the accelerated clock of a local run)."""
    tempo: int = 20
    """Blocks per ledger epoch (Yuma consensus and payout at its last block)."""
    difficulty: int = 64
    """Proof-of-work difficulty of a registration (expected hashes)."""
    host: str = ""
    """Hex hotkey address of the ledger host whose signed head nodes trust; empty trusts any signed head."""
    register_timeout: float = 60.0
    """Seconds an expert waits for its registration to appear in the ledger head before serving unregistered."""


@dataclass
class RunConfig:
    role: str = "network"
    """network (a whole local network), expert, seed, router, validator, bootstrap or baseline."""
    subnet: str = ""
    """The subnet an expert (or baseline) trains on."""
    subnets: list[str] = field(default_factory=lambda: list(DEFAULT_SUBNETS))
    """Subnets of the local network and the router."""
    run_id: str = ""
    """Name of the run directory under out_dir; empty makes one from the time."""
    out_dir: str = "runs"
    """Where run directories go."""
    seed: int = 0
    """Seed for weights, data order and keys of the local network."""
    initial_peers: list[str] = field(default_factory=list)
    """Multiaddrs of peers already in the network; empty starts a new one."""
    seed_checkpoint: str = ""
    """A local seed checkpoint to branch from instead of fetching it from the network."""
    hotkey_path: str = ""
    """This node's key file; empty keeps it under the run directory."""
    uid: int = 0
    """This expert's uid on its subnet (the ledger assigns it at registration in a full network)."""
    baseline: str = "solo"
    """Which baseline role=baseline trains: solo or dense."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    seed_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400))
    """Training of the shared seed on a blend of all subnets."""
    expert_train: TrainConfig = field(default_factory=TrainConfig)
    """Training of each specialist on its own subnet."""
    router: RouterConfig = field(default_factory=RouterConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    baselines: bool = True
    """Train the solo and dense baselines of the summary."""
    validator: ValidatorConfig = field(default_factory=ValidatorConfig)
    ledger: LedgerHostConfig = field(default_factory=LedgerHostConfig)
    validators: list[float] = field(default_factory=lambda: [1000.0, 300.0])
    """Stakes (TAO) of the validators the local network starts after the router; empty starts none."""
    adversaries: list[str] = field(default_factory=list)
    """Adversarial experts the local network adds: copycat (serves another expert's outputs), noise (random)."""
    adversary: str = ""
    """This expert node's adversarial behaviour (copycat or noise); empty is an honest expert."""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got '{self.role}'")
        if self.role == "expert" and not self.subnet:
            raise ValueError("role=expert needs subnet=NAME")
        bad = [a for a in [*self.adversaries, *([self.adversary] if self.adversary else [])] if a not in ADVERSARIES]
        if bad:
            raise ValueError(f"unknown adversary {bad[0]!r}; known: {', '.join(ADVERSARIES)}")
