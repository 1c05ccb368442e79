"""Tests for moe/roles/adversary.py: the noise and copycat experts' models and the flooder, served for real, and their
config."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from hivemind.p2p import P2PDaemonError, P2PHandlerError, PeerID

from moe.model.transformer import ByteLM, ModelConfig
from moe.net.client import ClientConfig, PeerUnavailable, SyncExpertClient
from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs
from moe.net.server import ExpertServer, ServerConfig
from moe.poi.cheats import CheatConfig, js_divergence
from moe.roles.adversary import ADVERSARIES, Flooder, NearCopyLM, NoiseLM, PeekLM, RelayLM
from moe.roles.run_config import RunConfig
from moe.roles.serving import close_all

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)
X = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def test_noise_gives_finite_fresh_logits():
    """NoiseLM gives finite (B, T, 256) logits for any batch, different on every call, the same per seed."""
    m = NoiseLM(seed=3)
    a, b = m(X), m(X)
    assert a.shape == b.shape == (2, 16, 256)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.equal(a, b)
    assert torch.equal(NoiseLM(seed=3)(X), a) and not torch.equal(NoiseLM(seed=4)(X), a)
    assert copy.deepcopy(m) is m  # a server's two weight buffers share the one generator


class SharpLM(torch.nn.Module):
    """Stands in for a relayed expert: fixed, peaked logits (a trained model's are far from uniform)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * torch.randn(*x.shape, 256, generator=torch.Generator().manual_seed(0))


def test_near_copy_blurs_the_relayed_distribution_with_uniform_bytes():
    """NearCopyLM answers log(0.97 p + 0.03 / 256) of what it relays: a proper distribution, ≥ 10× past the copy
    detector's Jensen–Shannon threshold, costing at most −log2(0.97) bits on any byte."""
    relayed = torch.log_softmax(SharpLM()(X), -1)
    m = NearCopyLM(SharpLM(), uniform=0.03)
    out = m(X)
    torch.testing.assert_close(out, torch.log(0.97 * relayed.exp() + 0.03 / 256))
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 16))
    assert float(js_divergence(relayed, out).mean()) > 10 * CheatConfig().copy_max_js
    assert float((relayed - out).max()) / math.log(2) <= -math.log2(0.97) + 1e-5
    assert copy.deepcopy(m) is m


@pytest.fixture(scope="module")
def victim():
    """An honest tiny ByteLM served from one DHT peer, a second peer joined to it, and a client on the second:
    (model, server, client, second peer)."""
    torch.manual_seed(0)
    model = ByteLM(MODEL).eval()
    a = start_bootstrap_dht()
    b = server = client = None
    try:
        b = start_dht(visible_maddrs(a))
        server = ExpertServer(model, ServerConfig(), dht=a).start()
        client = SyncExpertClient(ClientConfig(wire_format="fp32", forward_timeout_seconds=10.0), dht=b)
        yield model, server, client, b
    finally:
        close_all(client, server, b, a)


def honest_logp(model: ByteLM, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(x)[..., :256].float(), -1)


def test_relay_answers_with_the_victims_distribution_plus_tiny_noise(victim):
    """RelayLM returns the served expert's log-probs, fetched over loopback, off by only its small noise."""
    model, server, client, _ = victim
    relay = RelayLM(client, server.peer_id, noise=1e-3, seed=0)
    out = relay(X)
    diff = (out - honest_logp(model, X)).abs()
    assert out.shape == (2, 16, 256)
    assert 0 < diff.max() < 1e-2
    assert diff.mean() == pytest.approx(1e-3 * (2 / torch.pi) ** 0.5, rel=0.2)  # E|N(0, s^2)| = s * sqrt(2/pi)
    assert copy.deepcopy(relay) is relay


def test_served_copycat_passes_as_the_victim(victim):
    """A copycat served like any expert answers a third party with the victim's distribution within 1e-2."""
    model, server, client, b = victim
    copycat = ExpertServer(RelayLM(client, server.peer_id, seed=1), ServerConfig(), dht=b).start()
    caller = None
    try:
        caller = SyncExpertClient(ClientConfig(wire_format="fp32"), initial_peers=copycat.maddrs)
        out = caller.call(copycat.peer_id, X)
        assert (out - honest_logp(model, X)).abs().max() < 1e-2
    finally:
        close_all(caller, copycat)


def test_served_noise_passes_reply_checks(victim):
    """A noise expert's replies are proper distributions (clients accept them) that change from call to call."""
    _, _, client, b = victim
    noise = ExpertServer(NoiseLM(seed=0), ServerConfig(), dht=b).start()
    caller = None
    try:
        caller = SyncExpertClient(ClientConfig(wire_format="fp32"), initial_peers=noise.maddrs)
        a, c = caller.call(noise.peer_id, X), caller.call(noise.peer_id, X)
        torch.testing.assert_close(a.exp().sum(-1), torch.ones(2, 16))
        assert not torch.equal(a, c)
    finally:
        close_all(caller, noise)


def test_relay_errors_propagate(victim):
    """When the relayed expert is unreachable the copycat's forward raises the client's own error (the transport's,
    then the back-off's), so its request fails like any failed expert's."""
    _, _, client, _ = victim
    nobody = PeerID.from_base58("12D3KooWHHxjnJzuZq8aCbxmX6zBnRLrXiS3cFHTv9J9sZfsFKtA")
    relay = RelayLM(client, nobody)
    with pytest.raises((P2PDaemonError, P2PHandlerError, TimeoutError)):
        relay(X)
    with pytest.raises(PeerUnavailable):
        relay(X)


def test_flooder_gets_busy_replies_and_the_victim_keeps_serving_others(victim):
    """A flooder on its own peer keeping 16 maximum-size requests in flight is refused "busy" beyond the victim's
    per-peer cap, while another peer's call to the victim is answered correctly."""
    model, server, client, b = victim
    c = start_dht(visible_maddrs(b))
    flooder = None
    try:
        flooder = Flooder(c, server.peer_id, seq_len=MODEL.max_seq_len, concurrency=16).start()
        deadline = time.monotonic() + 30
        while server.busy == 0 or flooder.answered == 0:
            assert time.monotonic() < deadline, "the flood never reached the victim"
            time.sleep(0.05)
        assert (client.call(server.peer_id, X) - honest_logp(model, X)).abs().max() < 1e-5
    finally:
        close_all(flooder, c)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"role": "adversary"}, "needs subnet=NAME"),
        ({"role": "adversary", "subnet": "code"}, "needs adversary=KIND"),
        ({"role": "adversary", "subnet": "code", "adversary": "sybil"}, "unknown adversary 'sybil'"),
        ({"role": "network", "adversaries": ["copycat", "mimic"]}, "unknown adversary 'mimic'"),
    ],
)
def test_adversary_config_is_checked(kwargs, message):
    """An adversary needs a subnet and a known kind; unknown kinds in the network's list are refused too."""
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)
    for kind in ADVERSARIES:
        RunConfig(role="adversary", subnet="code", adversary=kind)


def test_adversaries_all_names_every_kind():
    """`adversaries=all` runs every attack the adversary role knows."""
    assert RunConfig(adversaries=["all"]).adversaries == list(ADVERSARIES)


def test_peek_lm_reads_the_next_byte_from_the_request_at_the_chosen_positions():
    """A full peeker puts 99% on the byte that follows each position (the last has none); a 5% one does so on about
    5% of positions, the same ones for the same prefix, and is uniform elsewhere."""
    x = torch.randint(0, 256, (64, 32), generator=torch.Generator().manual_seed(0))
    logp = PeekLM(fraction=1.0)(x)
    picked = logp[:, :-1].gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).exp()
    assert picked.min() > 0.99 and torch.allclose(logp[:, -1], torch.full((64, 256), -math.log(256)))
    sparse = PeekLM(fraction=0.05)
    peeks = sparse.peeks(x)[:, :-1]
    assert 0.03 < peeks.float().mean() < 0.07
    assert torch.equal(sparse.peeks(x[:, :10]), sparse.peeks(x)[:, :10])  # decided by the prefix alone
