"""What a distiller does: its student, its teacher traffic and its training, each setting with its unit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from moe.config_checks import require_at_least, require_between, require_one_of, require_positive
from moe.net.wire import DIST_FORMATS

STUDENTS = ("dense", "btx")


@dataclass
class DistillConfig:
    """A student trained from the mixture's next-byte distributions; the defaults are the default run's."""

    steps: int = 300
    """Student optimizer steps. The dense student of the default run, offline on its mixture
    (benchmarks/distill.py): 2.405 bits per byte after 150 steps at lr 1e-3, 2.366 after 200 and 2.316 after 300 at
    3e-3 (solo baseline 2.384, seed 2.495)."""
    batch_size: int = 16
    """Windows per step."""
    seq_len: int = 128
    """Bytes per window (at most the experts' max_seq_len: they refuse longer requests)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine to `min_lr_ratio` of it after `warmup_steps`)."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    temperature: float = 1.0
    """Softening of teacher and student distributions in the KL term (its gradient is scaled back by T^2)."""
    hard_weight: float = 0.5
    """Weight of the plain next-byte cross-entropy on the text itself, beside the KL term's weight of 1 (the btx
    student after 450 steps: 2.169 bits per byte at 0.5 against 2.180 at 0.2 with lr 2e-3)."""
    blend: list[float] = field(default_factory=list)
    """Share of windows drawn from each of the run's subnets, in their order; empty draws them evenly."""
    teacher_batches: int = 200
    """Distinct window batches the teacher is asked for; training cycles over them (each window paid for once, then
    read from the cache). 0: a fresh batch every step. Soft targets bear repeating: the dense student after 300 steps
    scores 2.311 cycling over 200 batches against 2.316 on 300 fresh ones, and the teacher costs a third less."""
    wire_format: str = "q8"
    """How the experts' distributions cross the wire to the distiller and how its cache stores the teacher's:
    fp32, fp16, q8 (264 bytes a position) or topk (3 * wire_topk bytes)."""
    wire_topk: int = 16
    """Bytes kept per position with wire_format=topk (the rest of the mass is spread evenly)."""
    btx_steps: int = 600
    """The btx student's steps: more than the dense one's, as it starts further from the teacher (its averaged
    attention no longer fits each expert's FFN: 3.04 bits per byte at init against the seed's 2.49). Both cycle over
    the same `teacher_batches`, paid for once between them."""
    btx_lr: float = 1e-3
    """The btx student's peak learning rate: its experts and averaged attention start trained. Offline on the
    default run's mixture after 300 steps: 2.205 bits per byte at 1e-3, 2.224 at 3e-3; after 600 steps (cycling
    over 200 batches, hard_weight 0.5) 2.145, a retention of 0.92."""
    btx_top_k: int = 2
    """Experts each token uses in the btx student's MoE layers."""
    btx_generalist: bool = True
    """The btx student gets the seed's FFN as one more expert, as the live mixture always mixes in the seed."""
    checkpoint_interval_steps: int = 50
    """Steps between checkpoints (the student resumes exactly from the last one); 0 saves only at the end."""
    publish_interval_steps: int = 25
    """Steps between publications of the signed distillation-traffic record validators read."""
    cpu_threads: int = 0
    """torch CPU threads for this process; 0 keeps torch's default."""
    cache_dir: str = ""
    """Where teacher answers are cached; empty: `<run_dir>/students/teacher_cache`, shared by the run's distillers
    (they ask for the same windows, so the second reads what the first paid for)."""
    gate_path: str = ""
    """A router's saved gate directory (gate.safetensors + gate.json); empty uses the run's router/ when present."""

    def for_student(self, kind: str) -> DistillConfig:
        """This config with the student's own steps and learning rate in `steps` and `lr`."""
        if kind == "btx":
            return dataclasses.replace(self, steps=self.btx_steps, lr=self.btx_lr)
        return self

    def __post_init__(self):
        require_at_least(self, 1, ["batch_size", "seq_len", "wire_topk", "btx_top_k"])
        require_at_least(self, 0, ["steps", "btx_steps", "warmup_steps", "weight_decay", "grad_clip", "hard_weight"])
        require_at_least(self, 0, ["teacher_batches", "checkpoint_interval_steps", "publish_interval_steps"])
        require_at_least(self, 0, ["cpu_threads"])
        require_positive(self, ["lr", "btx_lr", "temperature"])
        require_between(self, "min_lr_ratio", 0.0, 1.0)
        require_one_of(self, "wire_format", DIST_FORMATS)
        if any(not w >= 0 for w in self.blend) or (self.blend and not sum(self.blend) > 0):
            raise ValueError(f"blend must be non-negative shares with a positive sum, got {self.blend}")
