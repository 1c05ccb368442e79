"""A small saved run built in-process (random tiny experts, seed and gate), for tests that need no network."""

from __future__ import annotations

from pathlib import Path

import torch

from moe.evaluation.saved_run import SavedExpert, SavedRun
from moe.model.transformer import ByteLM, ModelConfig
from moe.routing.gate import Gate
from moe.routing.mixing import ExpertEntry
from moe.routing.remote import RouterConfig
from moe.routing.signature import SIGNATURE_DIM
from moe.training.loop import TrainConfig

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)


def tiny_model(seed: int) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(TINY).eval()


def tiny_saved_run(wire_format: str = "q8", n_experts: int = 3, routed: int | None = None) -> SavedRun:
    """Random tiny experts (the first `routed` of them routed to), a seed as generalist, a random gate."""
    torch.manual_seed(0)
    gate = Gate(d_gate=8).eval()
    with torch.no_grad():
        gate.keys.normal_()  # a gate with opinions, so routing differs between windows
    experts = [SavedExpert(f"{i:064x}", f"subnet{i}", tiny_model(i + 1)) for i in range(n_experts)]
    entries = [
        ExpertEntry(e.hotkey, slot=i, centroid=torch.rand(SIGNATURE_DIM).tolist(), subnet=e.subnet, log_trust=0.1 * i)
        for i, e in enumerate(experts[: n_experts if routed is None else routed])
    ]
    rc = RouterConfig(k_best=2, probe_len=8, d_gate=8)
    rc.client.wire_format = wire_format
    return SavedRun(
        root=Path("in-memory"),
        router=rc,
        train=TrainConfig(seq_len=32, batch_size=4),
        experts=experts,
        seed=tiny_model(100),
        gate=gate,
        entries=entries,
        generalist=True,
        baselines={"solo": tiny_model(200)},
        students={"dense": tiny_model(300)},
    )
