"""DistillConfig refuses what cannot work, with the field's name in the message."""

from __future__ import annotations

import pytest

from moe.distill.config import DistillConfig


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"wire_format": "gzip"}, "wire_format"),
        ({"temperature": 0.0}, "temperature"),
        ({"blend": [1.0, -1.0]}, "blend"),
        ({"blend": [0.0, 0.0]}, "blend"),
        ({"batch_size": 0}, "batch_size"),
        ({"hard_weight": -0.1}, "hard_weight"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kwargs)
