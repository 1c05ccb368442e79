"""Tests of moe/evaluation/offline_mixture.py: the router's mixing over local models, through the run's wire."""

from __future__ import annotations

import torch

from moe.evaluation.offline_mixture import OfflineMixture, through_wire, wire_caller
from moe.metrics import byte_log_probs
from moe.routing.mixing import local_caller, route_and_mix
from tests.evaluation.helpers import tiny_model, tiny_saved_run


def test_fp32_wire_is_exact_and_q8_is_close_and_normalized():
    """fp32 replies arrive unchanged; q8 ones stay distributions within ~0.05 nats of the model's log-probs."""
    x = torch.randint(0, 256, (2, 16))
    logp = byte_log_probs(tiny_model(1)(x))
    assert torch.equal(through_wire(logp, "fp32", 16), logp)
    q8 = through_wire(logp, "q8", 16)
    assert torch.allclose(torch.logsumexp(q8, -1), torch.zeros(2, 16), atol=1e-5)
    assert (q8 - logp).abs().max() < 0.05


def test_wire_caller_answers_like_the_models():
    """The wire caller answers every expert asked, with its model's log-probs (exactly, in fp32)."""
    models = {"a": tiny_model(1), "b": tiny_model(2)}
    x = torch.randint(0, 256, (3, 12))
    got = wire_caller(models, "fp32")({"a": x, "b": x[:1]})
    want = local_caller(models)({"a": x, "b": x[:1]})
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_offline_mixture_is_route_and_mix_with_every_router_setting():
    """OfflineMixture.mix equals route_and_mix given each RouterConfig knob explicitly (the router's mixing path)."""
    run = tiny_saved_run(wire_format="q8")
    rc = run.router
    models = {e.hotkey: e.model for e in run.experts}
    mixture = OfflineMixture(run.gate, run.entries, models, rc, run.seed)
    x = torch.randint(0, 256, (4, 32))
    got = mixture.mix(x)
    with torch.no_grad():
        want = route_and_mix(
            run.gate,
            x,
            run.entries,
            wire_caller(models, "q8", rc.client.topk),
            rc.k_best,
            rc.probe_len,
            switch_alpha=rc.switch_alpha,
            generalist=lambda z: byte_log_probs(run.seed(z)),
            gate_weight=rc.switch_gate_weight,
            generalist_share=rc.generalist_share,
            escalate_bits=rc.escalate_bits,
            escalate_window=rc.escalate_window,
        )
    assert torch.equal(got.logp, want.logp)
    assert torch.equal(got.chosen, want.chosen)
