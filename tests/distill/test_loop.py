"""The student's loop: it learns from the teacher, and a distiller killed mid-run resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.corpus.batches import blended_batches_at_step
from moe.distill.attribution import DistillTraffic
from moe.distill.config import DistillConfig
from moe.distill.loop import train_student, window_batches
from moe.distill.teacher import CachedTeacher
from moe.distill.teacher_cache import TeacherCache
from moe.model.transformer import config_dict
from moe.training.checkpoint import CheckpointError

from .helpers import TINY, tiny_model, two_expert_mix

CFG = DistillConfig(steps=6, batch_size=4, seq_len=16, warmup_steps=1, checkpoint_interval_steps=3, lr=3e-3)


def _stream():
    rng = np.random.default_rng(0)
    tokens = [rng.integers(97, 123, 5000).astype(np.uint16), rng.integers(48, 58, 5000).astype(np.uint16)]
    return blended_batches_at_step(tokens, CFG.seq_len, CFG.batch_size, seed=1)


def _teacher(cache_dir) -> CachedTeacher:
    mix = two_expert_mix(tiny_model(1, sharpness=30.0), tiny_model(2, sharpness=30.0))
    return CachedTeacher(mix, TeacherCache(cache_dir), DistillTraffic())


class Killed(Exception):
    pass


def test_a_killed_distiller_resumes_exactly(tmp_path):
    whole = tiny_model(0)
    train_student(
        whole, window_batches(_stream(), 0), _teacher(tmp_path / "c1"), CFG, tmp_path / "a", config_dict(TINY)
    )

    def kill_at_4(step: int, kl: float) -> None:
        if step == 4:
            raise Killed

    first = tiny_model(0)
    with pytest.raises(Killed):
        train_student(
            first,
            window_batches(_stream(), 0),
            _teacher(tmp_path / "c2"),
            CFG,
            tmp_path / "b",
            config_dict(TINY),
            on_step=kill_at_4,
        )
    resumed_extra = {}
    again = tiny_model(0)  # a restarted process builds its student afresh, then loads the checkpoint of step 3
    result = train_student(
        again,
        window_batches(_stream(), 0),
        _teacher(tmp_path / "c2"),
        CFG,
        tmp_path / "b",
        config_dict(TINY),
        state_extra=lambda: {"n": 1},
        on_resume=resumed_extra.update,
    )
    assert result.resumed_from == 3
    for (name, p), q in zip(whole.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_the_student_moves_toward_the_teacher_and_cycles_pay_once(tmp_path):
    teacher = _teacher(tmp_path / "cache")
    batch_at = window_batches(_stream(), 2)  # two distinct batches, seen three times each
    assert torch.equal(batch_at(0)[0], batch_at(4)[0]) and not torch.equal(batch_at(0)[0], batch_at(1)[0])
    student = tiny_model(0)
    losses = []
    train_student(
        student, batch_at, teacher, CFG, tmp_path / "s", config_dict(TINY), on_step=lambda s, kl: losses.append(kl)
    )
    assert losses[-1] < losses[0]
    assert teacher.positions_paid == 2 * CFG.batch_size * CFG.seq_len  # each window asked for once
    assert teacher.cache.hits == 4 * CFG.batch_size


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    train_student(
        tiny_model(0), window_batches(_stream(), 0), _teacher(tmp_path / "c"), CFG, tmp_path / "s", config_dict(TINY)
    )
    other = dict(config_dict(TINY), d_ff=128)
    with pytest.raises(CheckpointError, match="different model config"):
        train_student(
            tiny_model(0), window_batches(_stream(), 0), _teacher(tmp_path / "c"), CFG, tmp_path / "s", other
        )
