"""The teacher cache: a window is paid for once, reads back as stored, and a damaged entry is asked for again."""

from __future__ import annotations

import pytest
import torch

from moe.distill.attribution import DistillTraffic
from moe.distill.teacher import CachedTeacher
from moe.distill.teacher_cache import TeacherCache, window_key

from .helpers import EXPERT_A, EXPERT_B, tiny_model, two_expert_mix


@pytest.mark.parametrize("wire_format", ["fp32", "q8", "topk"])
def test_put_returns_what_get_reads(tmp_path, wire_format):
    cache = TeacherCache(tmp_path, wire_format, topk=8)
    window = torch.randint(0, 256, (16,))
    logp = torch.randn(16, 256).log_softmax(-1)
    kept = cache.put(window, logp)
    assert torch.equal(cache.get(window), kept)
    if wire_format == "fp32":
        assert torch.equal(kept, logp)
    else:  # lossy, but a distribution close to the original where it matters
        assert torch.allclose(kept.logsumexp(-1), torch.zeros(16), atol=1e-2)
        top = logp.argmax(-1)
        assert torch.allclose(kept.gather(-1, top[:, None]), logp.gather(-1, top[:, None]), atol=0.1)


def test_window_key_depends_on_every_byte():
    w = torch.arange(32) % 256
    w2 = w.clone()
    w2[-1] += 1
    assert window_key(w) == window_key(w.clone()) and window_key(w) != window_key(w2)


def test_each_window_is_paid_for_once(tmp_path):
    traffic = DistillTraffic()
    calls = []
    mix = two_expert_mix(tiny_model(1), tiny_model(2))

    def counting_mix(x):
        calls.append(x.shape[0])
        return mix(x)

    teacher = CachedTeacher(counting_mix, TeacherCache(tmp_path), traffic)
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    first = teacher(x)
    assert calls == [4] and teacher.positions_paid == 64
    again = teacher(x)  # all four from the cache
    assert calls == [4] and torch.equal(first, again)
    mixed = torch.cat([x[:2], torch.randint(0, 256, (2, 16))])
    teacher(mixed)  # only the two new windows go out
    assert calls == [4, 2] and teacher.positions_paid == 96
    assert traffic.windows == 6 and set(traffic.positions) == {EXPERT_A, EXPERT_B}


def test_a_damaged_entry_is_dropped_and_asked_for_again(tmp_path):
    cache = TeacherCache(tmp_path, "q8")
    window = torch.randint(0, 256, (16,))
    cache.put(window, torch.randn(16, 256).log_softmax(-1))
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(entry.read_bytes()[:100])  # a truncated file
    assert cache.get(window) is None
    assert not entry.exists()


def _claim_then_store(directory: str, window: torch.Tensor, claimed, release) -> None:
    cache = TeacherCache(directory)
    assert cache.claim(window)
    claimed.set()
    release.wait(30)
    cache.put(window, torch.zeros(window.shape[0], 256).log_softmax(-1))


def test_a_window_another_distiller_claimed_is_waited_for_not_paid_twice(tmp_path):
    """Two processes share the cache: the one that claimed a window pays; the other waits and reads its answer."""
    import multiprocessing as mp

    window = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(3))
    ctx = mp.get_context("spawn")
    claimed, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_claim_then_store, args=(str(tmp_path), window, claimed, release))
    other.start()
    try:
        assert claimed.wait(60)
        calls = []
        mix = two_expert_mix(tiny_model(1), tiny_model(2))
        teacher = CachedTeacher(lambda x: calls.append(len(x)) or mix(x), TeacherCache(tmp_path), DistillTraffic())
        assert not teacher.cache.claim(window)  # the other process holds it
        release.set()
        got = teacher(window[None])
        assert calls == [] and teacher.positions_paid == 0  # not paid here
        assert torch.allclose(got[0], torch.full((16, 256), -torch.log(torch.tensor(256.0))), atol=0.05)
    finally:
        release.set()
        other.join(30)


def test_a_dead_distillers_claim_is_taken_over(tmp_path):
    cache = TeacherCache(tmp_path)
    window = torch.randint(0, 256, (16,))
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = tmp_path / f"{window_key(window)}.q8.claim"
    claim.write_text(dead.stdout.strip())  # a claim left by a process that has exited
    assert cache.claim(window)
    assert cache.wait(window, timeout=0.1) is None  # and nobody else is going to store it
