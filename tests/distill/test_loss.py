"""The distillation loss: zero KL exactly when the student matches the teacher, byte targets only, T^2 scaling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moe.distill.loss import distill_loss
from moe.model.tokenizer import EOS


def _logits(seed: int, shape=(2, 5, 260)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_kl_is_zero_when_student_is_teacher_and_positive_otherwise():
    logits = _logits(0)
    teacher = F.log_softmax(logits[..., :256], -1)
    y = torch.randint(0, 256, (2, 5))
    assert float(distill_loss(logits, teacher, y).kl) == pytest.approx(0.0, abs=1e-5)
    assert float(distill_loss(_logits(1), teacher, y).kl) > 0.1


def test_kl_matches_the_definition_and_hard_is_cross_entropy():
    student, teacher = _logits(2), F.log_softmax(_logits(3)[..., :256], -1)
    y = torch.randint(0, 256, (2, 5))
    out = distill_loss(student, teacher, y, temperature=1.0, hard_weight=0.5)
    s = F.log_softmax(student[..., :256], -1)
    expected_kl = (teacher.exp() * (teacher - s)).sum(-1).mean()
    expected_hard = F.cross_entropy(s.reshape(-1, 256), y.reshape(-1))
    assert float(out.kl) == pytest.approx(float(expected_kl), rel=1e-5)
    assert float(out.hard) == pytest.approx(float(expected_hard), rel=1e-5)
    assert float(out.total) == pytest.approx(float(expected_kl + 0.5 * expected_hard), rel=1e-5)


def test_special_targets_are_not_scored():
    """A position whose next id is a special token counts in neither term."""
    student, teacher = _logits(4), F.log_softmax(_logits(5)[..., :256], -1)
    y = torch.randint(0, 256, (2, 5))
    base = distill_loss(student, teacher, y, hard_weight=1.0)
    y2, student2 = y.clone(), student.clone()
    y2[0, 0] = EOS
    student2[0, 0] = 0.0  # whatever the student says there no longer matters
    masked = distill_loss(student2, teacher, y2, hard_weight=1.0)
    again = distill_loss(student, teacher, y2, hard_weight=1.0)
    assert float(masked.total) == pytest.approx(float(again.total), rel=1e-6)
    assert not math.isclose(float(masked.total), float(base.total))


def test_temperature_scales_by_t_squared_and_shapes_are_checked():
    student, teacher = _logits(6), F.log_softmax(_logits(7)[..., :256], -1)
    y = torch.randint(0, 256, (2, 5))
    hot = distill_loss(student, teacher, y, temperature=4.0)
    assert float(hot.kl) > 0
    with pytest.raises(ValueError, match="does not fit"):
        distill_loss(student, teacher[:, :3], y)
