"""The run directory: every path and marker file a run writes, in one place.

    runs/<run_id>/
      config.yaml  bootstrap.json  ledger.sqlite  summary.json
      keys/<node>.key            logs/<node>.log, <node>.out      status/<node>.json
      seed/            model.bin, published.json (marker: the seed is in the DHT), result.json, checkpoint/
      experts/<subnet>/          serving.json (marker: trained and serving), result.json, checkpoint/
      adversaries/<kind>/        result.json
      baselines/<solo|dense>/    result.json, checkpoint/
      router/          gate.safetensors, gate.json (marker: the gate is trained), result.json, routing.json
      students/<dense|btx>/      checkpoint/, result.json;   students/teacher_cache/ (shared by the distillers)
      validators/<name>/         result.json

Nodes write their markers atomically (`moe.fileio.write_json`); the local network waits on them to start the next
phase, and the summary reads the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

RESULT = "result.json"
"""Each node's final figures; its presence means the node finished its work."""
SERVING = "serving.json"
"""Written by an expert once trained and serving."""
PUBLISHED = "published.json"
"""Written by the seed node once its seed is in the DHT."""
TRAFFIC = "traffic.json"
"""Written by the router once its first sample of traffic is in the DHT (validators can check it)."""
GATE = "gate.json"
"""Written by the router once its gate is trained (distillers start from it), beside gate.safetensors."""
ROUTING = "routing.json"
"""Written by the router after its final evaluation: {"eval"|"shifted": {input subnet: {hotkey: share of the gate's
top-k selections}}} (moe.routing.usage)."""
CHECKPOINT = "checkpoint"
"""A trained model's checkpoint directory (moe.training.checkpoint)."""


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory."""

    root: Path

    @classmethod
    def create(cls, out_dir: str | Path, run_id: str) -> RunLayout:
        """Make `<out_dir>/<run_id>` (and its logs folder) and return its layout."""
        layout = cls(Path(out_dir) / run_id)
        layout.logs.mkdir(parents=True, exist_ok=True)
        return layout

    @property
    def config(self) -> Path:
        """The resolved run configuration every node of a local network starts from."""
        return self.root / "config.yaml"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def ledger_rejections(self) -> Path:
        """What the ledger host refused over the run: [[kind, signer, reason], ...]."""
        return self.root / "ledger_rejections.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def validated(self) -> Path:
        """The local network's signal to its router: the validators finished and their last weights were paid."""
        return self.root / "validated.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def status(self) -> Path:
        return self.root / "status"

    def key(self, node: str) -> Path:
        """A node's hotkey file (kept across restarts, so a restarted node re-joins as itself)."""
        return self.root / "keys" / f"{node}.key"

    def node_output(self, node: str) -> Path:
        """Where the local network sends a node's stdout and stderr."""
        return self.logs / f"{node}.out"

    @property
    def seed(self) -> Path:
        return self.root / "seed"

    @property
    def seed_blob(self) -> Path:
        """The seed's weights as served over the network (safetensors bytes with its config)."""
        return self.seed / "model.bin"

    def expert(self, subnet: str) -> Path:
        return self.root / "experts" / subnet

    def adversary(self, kind: str) -> Path:
        return self.root / "adversaries" / kind

    @property
    def adversaries(self) -> Path:
        return self.root / "adversaries"

    def baseline(self, kind: str) -> Path:
        return self.root / "baselines" / kind

    @property
    def router(self) -> Path:
        return self.root / "router"

    def student(self, kind: str) -> Path:
        return self.root / "students" / kind

    @property
    def teacher_cache(self) -> Path:
        """Teacher answers the run's distillers paid for, shared among them (moe.distill.teacher_cache)."""
        return self.root / "students" / "teacher_cache"

    def validator(self, name: str) -> Path:
        return self.root / "validators" / name

    @property
    def validators(self) -> Path:
        return self.root / "validators"


def new_run_id() -> str:
    """A run id from the current time, e.g. 20261130-051136."""
    return time.strftime("%Y%m%d-%H%M%S")
