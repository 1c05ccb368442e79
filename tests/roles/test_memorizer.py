"""Tests for moe/roles/memorizer.py and the evaluation sources that answer it (moe/poi/eval_source.py).

The attack first: a lookup of the public validation splits beats an honest expert on the windows a public
validator draws. Then the defences: on salted windows it keeps its edge only where the salt happened to pick val
blocks (and a memoriser of every public held-out split keeps all of it: salting is no defence against that one),
and on private text it scores what it scores on any text it never stored (within a bit of uniform), while the
honest expert is scored as before everywhere.
Pure but for one loopback serving check: the validator's own window draw (`_windows`) and scoring (`score_experts`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from moe.config_loader import parse_args
from moe.corpus.tokens import subnet_tokens
from moe.poi.cheats import CheatConfig
from moe.poi.epoch import UNIFORM_BPB, EpochScore, score_experts
from moe.poi.eval_source import PRIVATE, private_tokens, salted_pools
from moe.roles.memorizer import MemorizerLM, context_keys
from moe.roles.run_config import RunConfig
from moe.roles.validator import _windows

SUBNETS = ("english", "code")
WINDOWS, SEQ_LEN = 48, 64
SALT = bytes(range(32))


class BigramLM(nn.Module):
    """An honest expert in miniature: smoothed byte-bigram counts of the train split. It generalises from what it
    was trained on and never saw a held-out byte, so it scores about the same on any held-out text."""

    def __init__(self, streams: list[np.ndarray], alpha: float = 0.5):
        super().__init__()
        counts = np.zeros((512, 256))
        for s in streams:
            s = s.astype(np.int64)
            keep = s[1:] < 256
            np.add.at(counts, (s[:-1][keep], s[1:][keep]), 1.0)
        unigram = (counts.sum(0) + 1) / (counts.sum() + 256)
        p = (counts + alpha * 256 * unigram) / (counts.sum(1, keepdims=True) + alpha * 256)
        self.logp = torch.from_numpy(np.log(p)).float()  # (512, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logp[x.clamp(max=511)]  # (B, T, 256)


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, np.ndarray]]:
    """Subnet → split → tokens of the tiny slices of two subnets."""
    from subnets import all_subnets

    cfg, subnets = parse_args(RunConfig, ["configs/tiny.yaml"]), all_subnets()
    return {s: {k: subnet_tokens(subnets[s], k, cfg.data) for k in ("train", "val", "route")} for s in SUBNETS}


@pytest.fixture(scope="module")
def honest(splits) -> BigramLM:
    return BigramLM([splits[s]["train"] for s in SUBNETS])


@pytest.fixture(scope="module")
def memorizer(splits) -> MemorizerLM:
    """The attack as the `memorizer` adversary mounts it: every subnet's public val split, stored."""
    return MemorizerLM([splits[s]["val"] for s in SUBNETS])


@pytest.fixture(scope="module")
def unseen_bpb(splits, memorizer) -> float:
    """The memoriser's bits per byte on text it never stored (train windows): what its table gives by chance, as
    a crude n-gram model, with no memorisation in it. A memoriser that gains nothing scores this."""
    return score({s: splits[s]["train"] for s in SUBNETS}, [memorizer]).bpb["0"]


def score(pool: dict[str, np.ndarray], experts: list[nn.Module], seed: bytes = b"epoch-0") -> EpochScore:
    """The validator's verdict on `experts` (hotkeys "0", "1", …) over windows drawn from `pool` as it draws them."""
    x, y, drawn = _windows(pool, seed, WINDOWS, SEQ_LEN)
    dists = torch.stack([m(x) for m in experts])  # (E, W, T, 256)
    domains = sorted(pool)
    return score_experts(
        [str(i) for i in range(len(experts))],
        [(float(i), i) for i in range(len(experts))],
        dists,
        y,
        torch.ones(len(experts), len(drawn), dtype=torch.bool),
        CheatConfig(),
        groups=[domains.index(s) for s, _ in drawn],
    )


def public_pool(splits) -> dict[str, np.ndarray]:
    return {s: splits[s]["val"] for s in SUBNETS}


def salted(splits) -> dict[str, np.ndarray]:
    return salted_pools({s: [splits[s]["val"], splits[s]["route"]] for s in SUBNETS}, SALT, 0.5)


def private_pool(splits, tmp_path) -> dict[str, np.ndarray]:
    """Stand-in for text only the validator holds: the route documents, written out as files (neither expert has
    them: the honest one trained on train, the memoriser stored val)."""
    for s in SUBNETS:
        (tmp_path / f"{s}.txt").write_bytes(splits[s]["route"][splits[s]["route"] < 256].astype(np.uint8).tobytes())
    return {PRIVATE: private_tokens(str(tmp_path))}


def test_context_keys_pack_each_context_exactly():
    """Two positions share a key exactly when their last `order` tokens are equal."""
    t = np.array([1, 2, 3, 1, 2, 3, 1, 2, 4, 257], dtype=np.uint16)
    keys = context_keys(t, 3)
    for i in range(len(keys)):
        for j in range(len(keys)):
            assert (keys[i] == keys[j]) == (tuple(t[i : i + 3]) == tuple(t[j : j + 3]))


def test_memorizer_predicts_stored_text_and_is_uniform_elsewhere():
    """On stored text every position with a full context puts its mass on the stored next byte; on text it never
    stored it answers exactly uniform."""
    stored = np.frombuffer(b"sphinx of black quartz, judge my vow", dtype=np.uint8).astype(np.uint16)
    m = MemorizerLM([stored], order=4, mass=0.9)
    x = torch.from_numpy(stored[None, :-1].astype(np.int64))
    p = m(x).exp()[0]  # (T, 256)
    nxt = torch.from_numpy(stored[1:].astype(np.int64))
    assert (p[3:].gather(-1, nxt[3:, None]) > 0.9).all()
    torch.testing.assert_close(p[:3], torch.full((3, 256), 1 / 256))
    unseen = torch.from_numpy(np.frombuffer(b"QWXZ" * 8, dtype=np.uint8).astype(np.int64))[None]
    torch.testing.assert_close(m(unseen).exp(), torch.full((1, 32, 256), 1 / 256))


def test_served_memorizer_answers_like_the_local_table(splits, memorizer):
    """Served like any expert (as `adversary=memorizer` does), the lookup answers a client with its local output."""
    from moe.net.client import ClientConfig, SyncExpertClient
    from moe.net.join import start_bootstrap_dht
    from moe.net.server import ExpertServer, ServerConfig
    from moe.roles.serving import close_all

    x = torch.from_numpy(splits["code"]["val"][None, 100:164].astype(np.int64))
    dht = start_bootstrap_dht()
    server = client = None
    try:
        server = ExpertServer(memorizer, ServerConfig(), dht=dht).start()
        client = SyncExpertClient(ClientConfig(wire_format="fp32"), initial_peers=server.maddrs)
        torch.testing.assert_close(client.call(server.peer_id, x), memorizer(x))
    finally:
        close_all(client, server, dht)


def test_memorizer_beats_honest_experts_on_public_windows(splits, honest, memorizer):
    """The attack works: on windows drawn from the public val split a lookup of that split has far lower bits per
    byte than an honest expert and takes most of the Shapley credit."""
    s = score(public_pool(splits), [honest, memorizer])
    print(f"public: honest {s.bpb['0']:.3f} memorizer {s.bpb['1']:.3f} bpb; contribution {s.contribution}")
    assert s.bpb["1"] < s.bpb["0"] - 1.0
    assert s.contribution["1"] > 0.5 > s.contribution["0"]


def test_memorizer_gains_nothing_on_private_windows(splits, honest, memorizer, unseen_bpb, tmp_path):
    """On private text the memoriser scores what it scores on any text it never stored (within a bit of uniform,
    far behind the honest expert) and earns nothing, while the honest expert scores about as on the public split."""
    public, private = score(public_pool(splits), [honest]), score(private_pool(splits, tmp_path), [honest, memorizer])
    print(
        f"private: honest {private.bpb['0']:.3f} (public {public.bpb['0']:.3f}) memorizer {private.bpb['1']:.3f} "
        f"(on unseen text {unseen_bpb:.3f}); contribution {private.contribution}"
    )
    assert abs(private.bpb["1"] - unseen_bpb) < 0.5 and private.bpb["1"] > UNIFORM_BPB - 1.0
    assert private.bpb["1"] > private.bpb["0"] + 2.0
    assert private.contribution["1"] < 0.05 < 0.95 < private.contribution["0"]
    assert abs(private.bpb["0"] - public.bpb["0"]) < 1.0  # another sample of held-out text: close, not equal


def test_salted_windows_leave_a_val_memorizer_only_the_val_blocks(splits, honest, memorizer, unseen_bpb):
    """On salted windows the val memoriser gains nothing wherever the salt picked route blocks (it scores as on
    unseen text, and it cannot tell which blocks those are), keeps its edge on val blocks, and the honest expert
    scores about as on public windows."""
    pool = salted(splits)
    x, y, _ = _windows(pool, b"epoch-0", WINDOWS, SEQ_LEN)
    text = {k: "".join(map(chr, np.concatenate([splits[s][k] for s in SUBNETS]))) for k in ("val", "route")}
    source = ["val" if w in text["val"] else "route" if w in text["route"] else "both" for w in map(_chars, x, y)]
    assert {"val", "route"} <= set(source), "a half-salted pool mixes both splits"
    bits = _window_bpb(memorizer(x), y)
    on_route = bits[[s == "route" for s in source]].mean()
    on_val = bits[[s == "val" for s in source]].mean()
    honest_public, honest_salted = score(public_pool(splits), [honest]).bpb["0"], score(pool, [honest]).bpb["0"]
    print(f"salted: memorizer {on_val:.3f} on val blocks, {on_route:.3f} on route blocks; honest {honest_salted:.3f}")
    assert abs(on_route - unseen_bpb) < 0.5 and on_route > honest_salted + 2.0
    assert on_val < honest_salted - 1.0
    assert abs(honest_salted - honest_public) < 1.0


def test_salting_is_no_defence_against_a_memorizer_of_every_public_held_out_split(splits, honest):
    """The limit of salting, pinned: a memoriser that stores val and route (both public) beats the honest expert on
    salted windows just as on public ones; only private text stops it."""
    everything = MemorizerLM([splits[s][k] for s in SUBNETS for k in ("val", "route")])
    s = score(salted(splits), [honest, everything])
    assert s.bpb["1"] < s.bpb["0"] - 1.0


def _chars(x: torch.Tensor, y: torch.Tensor) -> str:
    """A window's tokens (its input and the last target) as a string, to search the splits' text for it."""
    return "".join(map(chr, [*x.tolist(), int(y[-1])]))


def _window_bpb(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(W, T, 256) log-probs and (W, T) targets → (W,) bits per scored byte of each window."""
    mask = y < 256
    picked = logp.gather(-1, y.clamp(max=255).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(-1) / mask.sum(-1).clamp(min=1) / np.log(2)
