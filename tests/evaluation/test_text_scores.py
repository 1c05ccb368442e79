"""Tests of moe/evaluation/text_scores.py: every model of a run on one text, agreeing with the run's own scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe.config_loader import load_yaml
from moe.corpus.tokens import CorpusConfig, subnet_tokens
from moe.evaluation.offline_mixture import OfflineMixture
from moe.evaluation.saved_run import load_saved_run
from moe.evaluation.text_scores import score_text
from moe.evaluation.text_windows import text_windows
from moe.metrics import evaluate_model_bpb
from moe.poi.cheats import CheatConfig
from moe.poi.epoch import score_experts
from moe.roles.router import evaluate_mixture
from tests.evaluation.helpers import tiny_saved_run

TEXT = np.frombuffer(("To be, or not to be: that is the question. " * 6).encode() + bytes(range(200)), np.uint8)


@pytest.fixture
def one_thread():
    """Tiny models on a shared machine: one torch thread is many times faster than several fighting for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_singles_and_mixture_match_the_runs_scoring_functions(one_thread):
    """Each model's bpb equals evaluate_model_bpb, the mixture's equals the router's evaluate_mixture, on the same
    windows."""
    run = tiny_saved_run()
    tokens = TEXT.astype(np.uint16)
    scores = score_text(run, tokens)
    t = run.train

    def windows():
        return text_windows(tokens, t.seq_len, t.batch_size)

    for e in run.experts:
        assert scores.experts[e.hotkey].bpb == pytest.approx(evaluate_model_bpb(e.model, windows()), abs=1e-9)
    assert scores.seed_bpb == pytest.approx(evaluate_model_bpb(run.seed, windows()), abs=1e-9)
    assert scores.baselines["solo"] == pytest.approx(evaluate_model_bpb(run.baselines["solo"], windows()), abs=1e-9)
    assert scores.students["dense"] == pytest.approx(evaluate_model_bpb(run.students["dense"], windows()), abs=1e-9)
    models = {e.hotkey: e.model for e in run.experts}
    mixture = OfflineMixture(run.gate, run.entries, models, run.router, run.seed)
    router = evaluate_mixture(mixture, {"text": windows})
    assert scores.mixture_bpb == pytest.approx(router.bpb["text"], abs=1e-9)
    assert scores.worst_window_bpb == pytest.approx(router.worst_window_bpb, abs=1e-9)
    assert scores.scored_bytes == len(tokens) - 1


def test_contributions_are_the_validators_verdict(one_thread):
    """Each expert's Shapley credit equals the validators' (moe.poi.epoch.score_experts) for the same replies."""
    run = tiny_saved_run(wire_format="fp32")
    tokens = TEXT.astype(np.uint16)
    scores = score_text(run, tokens)
    xs, ys = zip(*text_windows(tokens, run.train.seq_len, run.train.batch_size), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        dists = torch.stack([torch.log_softmax(e.model(x)[..., :256].float(), -1) for e in run.experts])
    E, W = len(run.experts), x.shape[0]
    hotkeys = [e.hotkey for e in run.experts]
    present = torch.ones(E, W, dtype=torch.bool)
    verdict = score_experts(hotkeys, [(i, i) for i in range(E)], dists, y, present, CheatConfig())
    assert not verdict.flags and not verdict.redundant  # random models: nobody cheats or copies
    for hk in hotkeys:
        assert scores.experts[hk].shapley_bits == pytest.approx(verdict.shapley_bits[hk], abs=1e-9)


def test_gate_shares_and_contributions_are_shares(one_thread):
    """Gate shares of the routed experts sum to 1 (an expert not routed to has 0); contributions sum to 1."""
    run = tiny_saved_run(n_experts=3, routed=2)
    scores = score_text(run, TEXT.astype(np.uint16))
    shares = [scores.experts[e.hotkey].gate_share for e in run.experts]
    assert sum(shares) == pytest.approx(1.0) and shares[2] == 0.0
    assert sum(e.contribution for e in scores.experts.values()) == pytest.approx(1.0)


def test_json_has_exactly_the_documented_schema(one_thread):
    """to_json holds exactly the documented keys, with finite floats, and best_single is the lowest expert bpb."""
    scores = score_text(tiny_saved_run(), TEXT.astype(np.uint16))
    out = scores.to_json()
    keys = {"mixture_bpb", "best_single_bpb", "worst_window_bpb", "seed_bpb", "baselines", "experts", "students"}
    assert set(out) == keys
    assert set(out["baselines"]) == {"solo"} and set(out["students"]) == {"dense"}
    assert all(set(e) == {"subnet", "bpb", "contribution", "gate_share"} for e in out["experts"].values())
    assert out["best_single_bpb"] == min(e["bpb"] for e in out["experts"].values())
    floats = [out[k] for k in keys - {"baselines", "experts", "students"}]
    assert all(isinstance(v, float) and math.isfinite(v) for v in floats)


@pytest.mark.slow
def test_agrees_with_the_run_on_its_validation_windows(tiny_run, one_thread):
    """On each subnet's validation windows, every expert's, the seed's, each student's and the mixture's bpb equal
    what the run recorded in summary.json (within 1e-6 bits per byte: the same code on the same numbers)."""
    summary = tiny_run.summary
    assert summary, "the tiny run wrote no summary"
    run = load_saved_run(tiny_run.run_dir)
    from subnets import all_subnets

    declared = all_subnets()
    corpus = CorpusConfig(**load_yaml(tiny_run.run_dir / "config.yaml")["data"])
    t = run.train
    for subnet in summary["config"]["subnets"]:
        tokens = subnet_tokens(declared[subnet], "val", corpus)
        scores = score_text(run, tokens, max_windows=t.eval_batches * t.batch_size)
        assert scores.mixture_bpb == pytest.approx(summary["mixture"]["eval_bpb"][subnet], abs=1e-6)
        assert scores.seed_bpb == pytest.approx(summary["seed"]["eval_bpb"][subnet], abs=1e-6)
        for e in summary["experts"]:
            if not e.get("adversary"):
                assert scores.experts[e["hotkey"]].bpb == pytest.approx(e["eval_bpb"][subnet], abs=1e-6)
        for st in summary.get("students") or []:
            assert scores.students[st["kind"]] == pytest.approx(st["eval_bpb"][subnet], abs=1e-6)
