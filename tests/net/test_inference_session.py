"""Tests for moe/net/inference_session.py, session_wire.py and session_client.py: KV-cached inference sessions on a
real expert server over loopback P2P and its direct path, and every way a hostile peer can misuse them."""

from __future__ import annotations

import time

import pytest
import torch

from moe.identity import Hotkey
from moe.model.transformer import ByteLM, ModelConfig
from moe.net.client import ClientConfig, SyncExpertClient
from moe.net.inference_session import SessionConfig, SessionError, SessionTable, serve_session_message
from moe.net.server import ExpertServer, ServerConfig
from moe.net.session_client import SessionClient, SessionRefused
from moe.net.session_wire import SESSION_MAGIC, encode_close, encode_step
from moe.net.wire import WireError

KEY = Hotkey.from_seed(b"\x09" * 32)
CFG = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)


def byte_lm(seed: int = 0) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(CFG).eval()


def reference(model: ByteLM, ids: list[int]) -> torch.Tensor:
    """Full-forward next-byte log-probs (T, 256) of `ids`."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0, :, :256].float(), -1)


LIMITS = SessionConfig(max_sessions=4, max_sessions_per_peer=2, idle_timeout_seconds=30.0, max_step_bytes=8)


@pytest.fixture(scope="module")
def server():
    srv = ExpertServer(byte_lm(0), ServerConfig(max_tokens=256, sessions=LIMITS)).start()
    srv.prove_identity(KEY)
    try:
        yield srv
    finally:
        srv.shutdown()


@pytest.fixture(scope="module")
def peers(server):
    """Three clients of the server: [0] direct path, [1] P2P only, [2] an attacker (direct)."""
    made = []
    try:
        for direct in (True, False, True):
            cfg = ClientConfig(forward_timeout_seconds=10.0, wire_format="fp32", direct=direct)
            made.append(SyncExpertClient(cfg, initial_peers=server.maddrs))
        yield made
    finally:
        for c in made:
            c.shutdown()


def sessions_of(client: SyncExpertClient) -> SessionClient:
    return SessionClient(client.client)


@pytest.mark.parametrize("path", [0, 1], ids=["direct", "p2p"])
def test_session_steps_equal_the_full_forward_and_carry_receipts(server, peers, path):
    """A prompt then byte-by-byte steps give the served model's full-forward distributions at every position, on
    both transports, each reply signed by the expert's hotkey for exactly that message."""
    client = peers[path]
    sc = sessions_of(client)
    ids = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(path)).tolist()
    session, prompt_logp = client.run(sc.open(server.peer_id, torch.tensor(ids[:12])))
    got = [prompt_logp] + [client.run(sc.step(session, torch.tensor([b]))) for b in ids[12:]]
    torch.testing.assert_close(torch.cat(got), reference(server._buffers[0], ids), atol=1e-5, rtol=0)
    assert session.capacity == CFG.max_seq_len and len(session.receipts) == 9
    assert all(r is not None and r.address == KEY.address for r in session.receipts)
    client.run(sc.close(session))


def test_steps_past_the_context_slide_and_stay_exact_on_the_window(server, peers):
    """Past the session's capacity the expert slides: each step equals the full forward on the last bytes it keeps
    (here capacity 8, keep 4: after the slide the window is 5..8 bytes)."""
    client = peers[0]
    sc = sessions_of(client)
    ids = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(5)).tolist()
    session, _ = client.run(sc.open(server.peer_id, torch.tensor(ids[:3]), max_context=8))
    assert session.capacity == 8
    window = ids[:3]
    for b in ids[3:]:
        if len(window) == 8:
            window = window[-4:]
        window.append(b)
        step = client.run(sc.step(session, torch.tensor([b])))[0]
        torch.testing.assert_close(step, reference(server._buffers[0], window)[-1], atol=1e-5, rtol=0)
    client.run(sc.close(session))


def test_a_guessed_or_stolen_session_id_is_refused_and_the_owner_keeps_its_session(server, peers):
    """Another peer stepping a victim's real session id, or any made-up id, gets 'unknown or expired session'; the
    victim's session is untouched and goes on exactly."""
    owner, attacker = peers[0], peers[2]
    sc, evil = sessions_of(owner), sessions_of(attacker)
    ids = [10, 20, 30, 40, 50]
    session, _ = owner.run(sc.open(server.peer_id, torch.tensor(ids[:3])))
    stolen = type(session)(server.peer_id, session.session_id, session.capacity, "fp32", 16, [])
    for forged in (stolen, type(session)(server.peer_id, bytes(16), 32, "fp32", 16, [])):
        with pytest.raises(SessionRefused, match="unknown or expired session"):
            attacker.run(evil.step(forged, torch.tensor([99])))
    with pytest.raises(SessionRefused, match="unknown or expired session"):
        attacker.run(evil._exchange(server.peer_id, encode_close(session.session_id), 0, None))
    got = [owner.run(sc.step(session, torch.tensor([b])))[0] for b in ids[3:]]
    torch.testing.assert_close(torch.stack(got), reference(server._buffers[0], ids)[3:], atol=1e-5, rtol=0)
    owner.run(sc.close(session))


def test_an_over_long_prompt_and_malformed_messages_are_refused_and_the_server_keeps_serving(server, peers):
    """A prompt over the session's context, a step over max_step_bytes, ids outside the vocabulary, an unknown op
    and garbage each get a one-line refusal; an honest session opens right after."""
    client = peers[1]
    sc = sessions_of(client)
    with pytest.raises(SessionRefused, match="33 bytes in a session message, 1..32 allowed"):
        client.run(sc.open(server.peer_id, torch.zeros(33, dtype=torch.long)))
    with pytest.raises(SessionRefused, match="exceeds the session's 4-byte context"):
        client.run(sc.open(server.peer_id, torch.zeros(5, dtype=torch.long), max_context=4))
    session, _ = client.run(sc.open(server.peer_id, torch.tensor([1, 2])))
    with pytest.raises(SessionRefused, match="max_step_bytes"):
        client.run(sc.step(session, torch.zeros(9, dtype=torch.long)))
    bad = [
        encode_step(session.session_id, torch.tensor([300_000], dtype=torch.int32)),
        SESSION_MAGIC + bytes([7]) + session.session_id,
        SESSION_MAGIC + bytes([2]) + session.session_id[:5],
        SESSION_MAGIC + bytes([1]) + b"\xff" * 40,
    ]
    for raw in bad:
        with pytest.raises(SessionRefused, match="bad request"):
            client.run(sc._exchange(server.peer_id, raw, 1 << 16, None))
    assert client.run(sc.step(session, torch.tensor([3]))).shape == (1, 256)
    client.run(sc.close(session))


def test_session_limits_per_peer_and_in_all_refuse_opens_until_sessions_close(server, peers):
    """A peer at max_sessions_per_peer, or the server at max_sessions, is refused a new session with 'session
    limit'; closing one frees its place and its memory."""
    a, b = peers[0], peers[1]
    sa, sb = sessions_of(a), sessions_of(b)
    base = server.sessions.reserved_bytes
    held = [a.run(sa.open(server.peer_id, torch.tensor([1])))[0] for _ in range(2)]
    with pytest.raises(SessionRefused, match="session limit: 2 sessions of this peer"):
        a.run(sa.open(server.peer_id, torch.tensor([1])))
    held += [b.run(sb.open(server.peer_id, torch.tensor([1])))[0] for _ in range(2)]
    c = peers[2]
    with pytest.raises(SessionRefused, match="session limit: 4 sessions open"):
        c.run(sessions_of(c).open(server.peer_id, torch.tensor([1])))
    assert server.sessions.reserved_bytes - base == 4 * 2 * 2 * 32 * 4 * 32
    a.run(sa.close(held[0]))
    extra, _ = c.run(sessions_of(c).open(server.peer_id, torch.tensor([1])))
    for s, cl in zip(held[1:] + [extra], [a, b, b, c], strict=True):
        cl.run(sessions_of(cl).close(s))
    assert len(server.sessions) == 0 and server.sessions.reserved_bytes == 0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lease:
    def __init__(self, model):
        self.model = model

    def __call__(self):
        import contextlib

        return contextlib.nullcontext((self.model, 0))


def test_cache_memory_bounds_cut_capacity_and_refuse_opens():
    """max_cache_bytes_per_session cuts a session's capacity to what it holds; max_total_cache_bytes refuses an open
    that would pass it (the memory is reserved before any compute)."""
    per_position = 2 * 2 * 32 * 4
    table = SessionTable(
        SessionConfig(max_cache_bytes_per_session=10 * per_position, max_total_cache_bytes=25 * per_position)
    )
    lease = Lease(byte_lm())
    _, capacity, _ = table.open("a", lease, torch.tensor([1, 2]), "fp32", 16)
    assert capacity == 10 and table.reserved_bytes == 10 * per_position
    table.open("b", lease, torch.tensor([1]), "fp32", 16)
    with pytest.raises(SessionError, match="session limit: .* bytes of cache in use"):
        table.open("c", lease, torch.tensor([1]), "fp32", 16)
    assert len(table) == 2 and table.reserved_bytes == 20 * per_position


def test_idle_sessions_expire_and_free_their_memory():
    """A session idle past idle_timeout_seconds is refused as unknown and its cache freed; an active one lives on."""
    clock = FakeClock()
    table = SessionTable(SessionConfig(idle_timeout_seconds=10.0), clock=clock)
    lease = Lease(byte_lm())
    idle, _, _ = table.open("a", lease, torch.tensor([1]), "fp32", 16)
    busy, _, _ = table.open("a", lease, torch.tensor([1]), "fp32", 16)
    for _ in range(3):
        clock.now += 6.0
        table.step("a", busy, torch.tensor([2]), lease)
    with pytest.raises(SessionError, match="unknown or expired"):
        table.step("a", idle, torch.tensor([2]), lease)
    assert table.expire() == 1 and len(table) == 1
    assert table.reserved_bytes == 2 * 2 * 32 * 4 * 32


def test_the_server_sweeps_expired_sessions_without_traffic():
    """A live server frees an idle session's cache by itself after its timeout; the owner's next step is refused."""
    cfg = ServerConfig(max_tokens=256, sessions=SessionConfig(idle_timeout_seconds=0.2))
    with ExpertServer(byte_lm(), cfg) as srv:
        client = SyncExpertClient(ClientConfig(wire_format="fp32"), initial_peers=srv.maddrs)
        try:
            sc = sessions_of(client)
            session, _ = client.run(sc.open(srv.peer_id, torch.tensor([1, 2])))
            deadline = time.monotonic() + 30
            while len(srv.sessions) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(srv.sessions) == 0 and srv.sessions.reserved_bytes == 0
            with pytest.raises(SessionRefused, match="unknown or expired session"):
                client.run(sc.step(session, torch.tensor([3])))
        finally:
            client.shutdown()


def test_weights_update_mid_session_recomputes_the_window():
    """After update_weights, a session's next step is the new weights' full-forward distribution on its window."""
    lease_model = byte_lm(0)
    table = SessionTable()
    new = byte_lm(1)
    state = {"model": lease_model, "version": 0}

    import contextlib

    def lease():
        return contextlib.nullcontext((state["model"], state["version"]))

    sid, _, _ = table.open("a", lease, torch.tensor([5, 6, 7]), "fp32", 16)
    state.update(model=new, version=1)
    logits, _, _ = table.step("a", sid, torch.tensor([8]), lease)
    want = reference(new, [5, 6, 7, 8])[-1]
    torch.testing.assert_close(torch.log_softmax(logits[0, :256], -1), want, atol=1e-5, rtol=0)


def test_serve_session_message_refuses_garbage_with_wire_errors():
    """Bytes that are no session message raise WireError (a ValueError the server sends back as one line)."""
    table, lease = SessionTable(), Lease(byte_lm())
    for raw in (b"", b"HMI1", b"HMQ1\x01", SESSION_MAGIC + b"\x01\x09\x00\x00\x00\x00\x00"):
        with pytest.raises(WireError):
            serve_session_message(table, raw, "a", lease)


def test_generation_over_remote_sessions_equals_generation_in_process(server, peers):
    """Route-once generation stepping the expert's remote sessions samples exactly the bytes the same generation
    samples from the same model in-process (fp32 replies), and leaves no session open."""
    from moe.routing.gate import Gate
    from moe.routing.generation import LocalSessions, generate_bytes
    from moe.routing.mixing import ExpertEntry, local_caller, route_and_mix
    from moe.routing.remote_sessions import RemoteSessions
    from moe.routing.signature import SIGNATURE_DIM

    client, model = peers[0], server._buffers[0]
    entries = [ExpertEntry(KEY.address, 0, [0.0] * SIGNATURE_DIM)]
    gate = Gate(8)

    def route(x):
        return route_and_mix(gate, x, entries, local_caller({KEY.address: model}), 1, 4)

    prompt = list(b"hello, sessions")
    kwargs = dict(context_bytes=16, reroute_every=10, temperature=0.5, seed=3, generalist_share=None)
    remote = RemoteSessions(client, lambda: {KEY.address: server.peer_id.to_base58()})
    got = list(generate_bytes(route, remote, prompt, 40, **kwargs))
    want = list(generate_bytes(route, LocalSessions({KEY.address: model}, capacity=16), prompt, 40, **kwargs))
    assert got == want and len(got) == 40
    assert len(server.sessions) == 0
