"""Tests for moe/distill/btx.py: BTX students from tiny experts trained apart on three synthetic byte domains."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe.distill.btx import (
    btx_config,
    build_btx,
    centroid_router,
    ffn_inputs,
    routing_table,
)
from moe.metrics import bits_per_byte, byte_log_probs
from moe.model.transformer import ByteLM, ModelConfig

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)
T, STEPS = 64, 40
WORDS = "the cat sat on a mat and dog ran to his big red hat in sun".split()
PERSIAN = [chr(c) for c in range(0x0627, 0x064A)]  # Arabic-script letters: two UTF-8 bytes each, lead 0xD8/0xD9


def domain_stream(name: str, n_bytes: int, seed: int) -> np.ndarray:
    """About `n_bytes` bytes of one synthetic domain: English-like words, digit sums, or Persian-script words."""
    rng = np.random.default_rng(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < n_bytes:
        if name == "english":
            parts.append(" ".join(rng.choice(WORDS, 8)) + ". ")
        elif name == "math":
            a, b = rng.integers(0, 100, 2)
            parts.append(f"{a}+{b}={a + b}\n")
        else:
            parts.append(" ".join("".join(rng.choice(PERSIAN, rng.integers(2, 6))) for _ in range(6)) + "\n")
    return np.frombuffer("".join(parts).encode(), dtype=np.uint8)[:n_bytes].astype(np.int64)


DOMAINS = ("english", "math", "persian")


def windows(stream: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """(n, T + 1) windows at random offsets of `stream`."""
    starts = np.random.default_rng(seed).integers(0, len(stream) - T - 1, n)
    return torch.from_numpy(stream[starts[:, None] + np.arange(T + 1)])


def train(model: ByteLM, streams: list[np.ndarray], steps: int, seed: int, ffn_only: bool = False) -> ByteLM:
    """Adam on 8 windows a step, drawn evenly from `streams`; `ffn_only` leaves every non-FFN weight as it was."""
    params = [p for name, p in model.named_parameters() if ".mlp." in name or not ffn_only]
    opt = torch.optim.Adam(params, lr=3e-3)
    for step in range(steps):
        w = torch.cat([windows(s, 8 // len(streams), seed * 1000 + step * 10 + j) for j, s in enumerate(streams)])
        F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def weight_average(experts: list[ByteLM]) -> ByteLM:
    """The dense model whose every weight, FFNs included, is the experts' mean: the baseline BTX should beat."""
    average = ByteLM(CFG).eval()
    with torch.no_grad():
        for name, p in average.state_dict().items():
            p.copy_(torch.stack([e.state_dict()[name] for e in experts]).mean(0))
    return average


def bpb(model: ByteLM, w: torch.Tensor) -> float:
    with torch.no_grad():
        bits, n = bits_per_byte(byte_log_probs(model(w[:, :-1])), w[:, 1:])
    return bits / n


TRAIN_STREAMS = [domain_stream(d, 40_000, seed=i) for i, d in enumerate(DOMAINS)]
BUILD = [windows(s, 16, seed=7)[:, :-1] for s in TRAIN_STREAMS]  # routing batches: B=16, T=64 per domain
HELD_OUT = [windows(domain_stream(d, 20_000, seed=100 + i), 16, seed=8) for i, d in enumerate(DOMAINS)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box OpenMP spinning made this module 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run():
    """A random seed model, three experts branched from it and trained 40 steps each (all weights) on their domain."""
    torch.manual_seed(0)
    seed = ByteLM(CFG).eval()
    experts = [train(copy.deepcopy(seed), [s], STEPS, seed=i) for i, s in enumerate(TRAIN_STREAMS)]
    return seed, experts, BUILD, HELD_OUT


@pytest.fixture(scope="module")
def ffn_run():
    """A seed trained 40 steps on all three domains, then three experts that train only their FFNs on their own."""
    torch.manual_seed(1)
    seed = train(ByteLM(CFG), TRAIN_STREAMS, STEPS, seed=9)
    experts = [train(copy.deepcopy(seed), [s], STEPS, seed=i, ffn_only=True) for i, s in enumerate(TRAIN_STREAMS)]
    return seed, experts, BUILD, HELD_OUT


def ffn_of(model: ByteLM, li: int):
    return model.layers[li].mlp


def test_config_makes_an_moe_of_the_expert_shape():
    """btx_config keeps every shape field and only switches the FFN to an n-way top-k MoE."""
    cfg = btx_config(CFG, 4, 2)
    assert (cfg.moe_experts, cfg.moe_top_k) == (4, 2)
    assert replace(cfg, moe_experts=0, moe_top_k=CFG.moe_top_k) == CFG
    with pytest.raises(ValueError, match="top_k"):
        btx_config(CFG, 2, 3)


def test_non_ffn_weights_are_the_mean_and_ffns_are_copied(run):
    """Attention, norms and embeddings are the experts' parameter mean; expert i's slice is expert i's FFN."""
    _, experts, build, _ = run
    student = build_btx(experts, build, top_k=2)
    assert student.config == btx_config(CFG, 3, 2)
    sources = [e.state_dict() for e in experts]
    for name, p in student.state_dict().items():
        if ".mlp." not in name:
            torch.testing.assert_close(p, torch.stack([s[name] for s in sources]).mean(0), rtol=0, atol=0)
    assert student.lm_head.weight is student.embed_tokens.weight
    for li in range(CFG.n_layers):
        moe = ffn_of(student, li)
        for i, e in enumerate(experts):
            dense = ffn_of(e, li)
            assert torch.equal(moe.w_gate[i], dense.gate_proj.weight.T)
            assert torch.equal(moe.w_up[i], dense.up_proj.weight.T)
            assert torch.equal(moe.w_down[i], dense.down_proj.weight.T)


def test_centroid_router_rows_are_mean_free_and_set_the_margin():
    """Rows sum to zero, the mean own-vs-nearest-rival logit gap at the centroids is the margin, and shrinkage=1
    gives rows along the plain centroid differences."""
    g = torch.Generator().manual_seed(0)
    means = 3 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    inputs = [torch.randn(200, 8, generator=g, dtype=torch.float64) + mu for mu in means]
    c = torch.stack([x.mean(0) for x in inputs])
    for shrinkage in (0.01, 1.0):
        rows = centroid_router(inputs, logit_margin=2.0, shrinkage=shrinkage)
        torch.testing.assert_close(rows.sum(0), torch.zeros(8, dtype=torch.float64))
        logits = c @ rows.T
        rival = logits.masked_fill(torch.eye(3, dtype=torch.bool), float("-inf")).amax(-1)
        torch.testing.assert_close((logits.diagonal() - rival).mean(), torch.tensor(2.0, dtype=torch.float64))
    delta = c - c.mean(0)
    torch.testing.assert_close(F.normalize(rows, dim=-1), F.normalize(delta, dim=-1))
    assert torch.equal(centroid_router(inputs[:1], 2.0, 0.01), torch.zeros(1, 8, dtype=torch.float64))


@pytest.mark.parametrize("i", range(len(DOMAINS)))
def test_routing_forced_to_one_expert_reproduces_its_ffn(run, i):
    """With the router pinned to expert i (top-1), every layer's MoE output is expert i's SwiGLU output."""
    _, experts, build, _ = run
    student = build_btx(experts, build, top_k=1)
    g = torch.Generator().manual_seed(i)
    x = torch.randn(3, 5, CFG.d_model, generator=g)
    x[..., 0] = 1.0  # a constant feature the pinned router row reads
    for li in range(CFG.n_layers):
        moe = copy.deepcopy(ffn_of(student, li))
        with torch.no_grad():
            moe.router.weight.zero_()
            moe.router.weight[i, 0] = 10.0
            out = moe(x)
            torch.testing.assert_close(out.y, ffn_of(experts[i], li)(x), rtol=1e-6, atol=1e-7)
        assert out.expert_load[i] == 1.0


def test_centroid_router_sends_each_domain_to_its_expert(run):
    """At every layer, most held-out tokens of domain e pick expert e first (measured: 0.97-1.00)."""
    _, experts, build, held_out = run
    student = build_btx(experts, build, top_k=2)
    table = routing_table(student, [w[:, :-1] for w in held_out])  # (L, domains, experts)
    own = table.diagonal(dim1=1, dim2=2)  # (L, domains)
    print("own-expert top-1 share, rows = layers, columns =", DOMAINS, "\n", own)
    assert (own > 0.9).all(), own


def test_router_softmax_is_confident_not_saturated(run):
    """On its own domain's tokens the own expert takes most but not all of a top-2 mix (mean weight 0.6-0.99)."""
    _, experts, build, held_out = run
    student = build_btx(experts, build, top_k=2)
    for d, w in enumerate(held_out):
        for li, x in enumerate(ffn_inputs(student, w[:, :-1])):
            with torch.no_grad():
                p = ffn_of(student, li).router(x).softmax(-1)  # (N, E)
            top2 = p.topk(2, dim=-1).values.sum(-1)  # (N,)
            share = (p[:, d] / top2).clamp(max=1.0).mean()
            print(f"{DOMAINS[d]} layer {li}: own expert's mean top-2 weight {share:.3f}")
            assert 0.6 < share < 0.99


def test_btx_init_loss_beats_the_weight_average(run):
    """Per domain, the BTX student's init bpb is below the all-weights-averaged dense model's (yet far above the
    expert's: these experts trained their attention and embeddings too, which BTX averages)."""
    seed, experts, build, held_out = run
    student = build_btx(experts, build, top_k=2).eval()
    average = weight_average(experts)
    for d, w in enumerate(held_out):
        models = {"seed": seed, "expert": experts[d], "btx": student, "avg": average}
        figures = {k: bpb(m, w) for k, m in models.items()}
        print(DOMAINS[d], {k: round(v, 3) for k, v in figures.items()})
        assert figures["btx"] < figures["avg"] - 0.1


def test_experts_sharing_non_ffn_weights_come_back_through_top1_routing(ffn_run):
    """Experts that trained only their FFNs: with every token routed home, the top-1 student gives each expert's
    logits on its own domain, well below the weight average's loss."""
    seed, experts, build, held_out = ffn_run
    student = build_btx(experts, build, top_k=1).eval()
    own = routing_table(student, [w[:, :-1] for w in held_out]).diagonal(dim1=1, dim2=2)
    assert (own == 1).all(), own
    average = weight_average(experts)
    with torch.no_grad():
        for d, w in enumerate(held_out):
            torch.testing.assert_close(student(w[:, :-1]), experts[d](w[:, :-1]))
            figures = {k: bpb(m, w) for k, m in (("seed", seed), ("expert", experts[d]), ("avg", average))}
            print(DOMAINS[d], {k: round(v, 3) for k, v in figures.items()})
            assert figures["expert"] < figures["avg"]


def test_generalist_becomes_one_more_expert(run):
    """A generalist adds a last expert with its FFN and a zero router row (so it is the runner-up behind each
    domain's expert); the non-FFN weights stay the domain experts' mean."""
    seed, experts, build, held_out = run
    student = build_btx(experts, build, top_k=2, generalist=seed)
    plain = build_btx(experts, build, top_k=2)
    assert student.config.moe_experts == len(experts) + 1
    for name, p in plain.state_dict().items():
        if ".mlp." not in name:
            assert torch.equal(student.state_dict()[name], p), name
    for li in range(CFG.n_layers):
        moe = ffn_of(student, li)
        assert torch.equal(moe.w_down[-1], ffn_of(seed, li).down_proj.weight.T)
        assert torch.equal(moe.router.weight[-1], torch.zeros(CFG.d_model))
    # layer 0 sees the same inputs with or without the generalist, so its domain rows are the same
    torch.testing.assert_close(ffn_of(student, 0).router.weight[:-1], ffn_of(plain, 0).router.weight)
    for d, w in enumerate(held_out):  # measured: own expert first on >= 99.8 %, generalist second on >= 97.7 %
        for li, x in enumerate(ffn_inputs(student, w[:, :-1])):
            with torch.no_grad():
                top2 = ffn_of(student, li).router(x).topk(2, dim=-1).indices  # (N, 2)
            assert (top2[:, 0] == d).float().mean() > 0.9
            assert (top2[:, 1] == len(experts)).float().mean() > 0.9


def test_bad_inputs_raise_one_clear_value_error(run):
    """No experts, mixed shapes, MoE inputs, a wrong batch count or a bad batch each raise ValueError."""
    seed, experts, build, _ = run
    wider = ByteLM(replace(CFG, d_ff=96))
    moe = ByteLM(replace(CFG, moe_experts=2))
    cases = [
        (([], []), "at least one"),
        (([experts[0], wider], build[:2]), r"differs in shape .*d_ff"),
        (([experts[0], moe], build[:2]), "already an MoE"),
        ((experts, build[:2]), "one domain batch per expert"),
        ((experts[:1], [build[0].float()]), "integer tensor"),
        ((experts[:1], [torch.zeros(1, CFG.max_seq_len + 1, dtype=torch.long)]), "T <= 64"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            build_btx(*args)
    with pytest.raises(ValueError, match="generalist differs in shape"):
        build_btx(experts, build, generalist=wider)
    with pytest.raises(ValueError, match="top_k"):
        build_btx(experts, build, top_k=4)
    with pytest.raises(ValueError, match="shrinkage in"):
        build_btx(experts, build, shrinkage=0.0)
