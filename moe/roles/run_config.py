"""The run's whole configuration: `RunConfig` composes each component's own config, filled by `moe.config_loader`.

Every component's settings live beside the code they configure (the model's in `moe.model.transformer`, the
router's in `moe.routing.remote`, ...); this module only says which node does what and composes them. The dataclass
defaults are the default run (`python train.py`); `configs/default.yaml` holds only what the CPU demo changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moe.corpus.tokens import CorpusConfig
from moe.distill.config import STUDENTS, DistillConfig
from moe.model.transformer import ModelConfig
from moe.net.join import NetworkConfig
from moe.net.ledger_client import LedgerAccessConfig
from moe.net.ledger_host import LedgerHostConfig
from moe.roles.adversary import ADVERSARIES
from moe.roles.baseline import BASELINES
from moe.roles.expert import ExpertConfig
from moe.roles.miners import parse_miners
from moe.roles.network import PhaseTimeouts
from moe.roles.validator import ValidatorConfig
from moe.routing.remote import RouterConfig
from moe.training.loop import TrainConfig
from moe.training.tracking import WandbConfig

ROLES = ("network", "bootstrap", "seed", "expert", "adversary", "baseline", "router", "validator", "distiller")
DEFAULT_SUBNETS = ["english", "code", "math", "persian"]


@dataclass
class RunConfig:
    role: str = "network"
    """network (a whole local network), bootstrap, seed, expert, adversary, baseline, router, validator or
    distiller."""
    subnet: str = ""
    """The subnet an expert or adversary serves."""
    subnets: list[str] = field(default_factory=lambda: list(DEFAULT_SUBNETS))
    """Subnets of the local network, the router and the validators."""
    miners: list[str] = field(default_factory=list)
    """The local network's expert nodes, one `subnet[@steps]` entry each (e.g. english@400,english@150,code,math):
    several on one subnet compete for its emission; empty starts one per subnet (moe.roles.miners)."""
    miner: str = ""
    """The miner a role=expert node is (its name in moe.roles.miners: english, english-2, ...); empty: the subnet's
    first."""
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
    """This expert's uid on its subnet when no ledger assigns one."""
    baseline: str = "solo"
    """Which baseline role=baseline trains: solo or dense."""
    adversary: str = ""
    """The attack a role=adversary node runs (see moe.roles.adversary)."""
    student: str = "dense"
    """The student a role=distiller node trains: dense (one expert's shape, from the seed) or btx."""
    seed_from: str = ""
    """A checkpoint directory (e.g. a distilled dense student's) the seed node publishes instead of training one:
    the next round of a network that compounds (branch, train, mix, distil, branch again)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    seed_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=700, lr=3e-3, warmup_steps=30))
    """Training of the shared seed on a blend of all subnets. 700 seed steps and 300 per expert (1900 in all, as
    the dense baseline) measured better than 300 and 400: the mixture 2.115 against dense 2.170 bits per byte in
    distribution (2.166 against 2.169) and 3.163 against 3.612 on shifted text (3.190 against 3.763)."""
    expert_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))
    """Training of each specialist on its own subnet."""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    validator: ValidatorConfig = field(default_factory=ValidatorConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ledger: LedgerAccessConfig = field(default_factory=LedgerAccessConfig)
    ledger_host: LedgerHostConfig = field(default_factory=LedgerHostConfig)
    router_awaits_validators: bool = False
    """The router mixes `router.traffic_batches` sequences, publishes that traffic and waits for the run's
    `validated` signal before it trains its gate (the local network sets it: validators check the router's traffic,
    and the router follows their verdicts)."""
    baselines: bool = True
    """The local network trains the solo and dense baselines of the summary."""
    validator_stakes_tao: list[float] = field(default_factory=lambda: [1000.0, 300.0])
    """The local network starts one validator per stake (TAO) after the router; empty starts none."""
    students: list[str] = field(default_factory=lambda: list(STUDENTS))
    """Students the local network distils from the mixture once the router's gate is trained, one distiller each
    (dense, btx); empty distils none."""
    adversaries: list[str] = field(default_factory=list)
    """Adversarial experts the local network adds (see moe.roles.adversary for the kinds; `all` for every one)."""
    timeouts: PhaseTimeouts = field(default_factory=PhaseTimeouts)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got '{self.role}'")
        if self.role in ("expert", "adversary") and not self.subnet:
            raise ValueError(f"role={self.role} needs subnet=NAME")
        if self.role == "adversary" and not self.adversary:
            raise ValueError(f"role=adversary needs adversary=KIND ({', '.join(ADVERSARIES)})")
        if self.adversaries == ["all"]:
            self.adversaries = list(ADVERSARIES)
        bad = [a for a in [*self.adversaries, *([self.adversary] if self.adversary else [])] if a not in ADVERSARIES]
        if bad:
            raise ValueError(f"unknown adversary {bad[0]!r}; known: {', '.join(ADVERSARIES)}")
        bad = [s for s in [self.student, *self.students] if s not in STUDENTS]
        if bad or len(set(self.students)) != len(self.students):
            raise ValueError(
                f"students must be distinct, each one of {', '.join(STUDENTS)}; got {bad or self.students}"
            )
        if self.distill.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"distill.seq_len={self.distill.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if not self.subnets or len(set(self.subnets)) != len(self.subnets):
            raise ValueError(f"subnets must be a non-empty list without repeats, got {self.subnets}")
        parse_miners(self.miners, self.subnets)  # raises ValueError naming a bad entry
        if self.miner and self.miner not in [m.name for m in parse_miners(self.miners, self.subnets)]:
            raise ValueError(f"miner {self.miner!r} is not one of the miners this run starts")
        if any(not s > 0 for s in self.validator_stakes_tao):
            raise ValueError(f"validator_stakes_tao must all be positive, got {self.validator_stakes_tao}")
        if not 0 <= self.uid <= 0xFFFF:
            raise ValueError(f"uid must be in 0..65535, got {self.uid}")
