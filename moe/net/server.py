"""Serve one expert's forward pass over hivemind P2P, next to (not instead of) the process that trains it.

The server holds its own copy of the weights, so training never waits for a request and a request never sees
half-updated weights: `update_weights` loads fresh weights into the idle one of two buffers and then flips which
buffer serves. Forwards run in a small thread pool under `torch.inference_mode`, off the asyncio loop, so slow
compute never stalls the network. Every request is validated (frame layout, dtype, shape, value range, size); a bad
one gets an error reply and a one-line warning, and the server keeps serving.

Load: a `RequestGate` admits each forward or refuses it at once with a busy reply (`BUSY_REPLY`): per peer a cap on
requests in flight and on requests per second, and a bound on the requests the server holds in all. Admitted requests
reach the worker pool a few per peer at a time, so a peer flooding the server with maximum-size requests queues
behind its own requests, not ahead of everyone else's (a flooded expert would otherwise time out on validators).

Handlers are registered with `P2P.add_protobuf_handler` under `forward_handle(uid)` / `info_handle(uid)`, carrying
`runtime_pb2.ExpertRequest.metadata` / `ExpertResponse.metadata` bytes in the layouts of `moe.net.wire`.

Inference sessions (an `lm` expert that is a ByteLM): `inference_handle(uid)` and the direct path also take the
session messages of `moe.net.session_wire` (told apart by their magic), answered from a bounded table of KV caches
(`moe.net.inference_session`), with their own per-peer rate (`SessionConfig.max_steps_per_second_per_peer`) and the
same receipts as forwards.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from hivemind.dht import DHT
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time
from torch import nn

from moe.config_checks import require_at_least, require_positive
from moe.identity import Hotkey
from moe.model.tokenizer import VOCAB_SIZE
from moe.model.transformer import ByteLM
from moe.net.direct import DirectServer
from moe.net.forward_cost import ForwardCost
from moe.net.identity_proof import sign_identities
from moe.net.inference_session import SessionConfig, SessionTable, serve_session_message
from moe.net.loop import LoopThread, replicate_p2p
from moe.net.receipt import caller_digest, frame_reply, sign_receipt
from moe.net.session_wire import is_session_message
from moe.net.ticket_desk import TicketDesk, split_paid
from moe.net.wire import (
    ACT_FORMATS,
    DIST_FORMATS,
    VOCAB,
    WireError,
    decode_request,
    encode_activations,
    encode_logp,
    request_positions,
)

logger = logging.getLogger(__name__)

FORWARD_HANDLE = "hivemoe.expert.forward"
INFO_HANDLE = "hivemoe.expert.info"
SESSION_HANDLE = "hivemoe.expert.session"
INFERENCE_HANDLE = "hivemoe.expert.inference"
BUSY_REPLY = "expert busy"
"""Start of the error reply to a request refused for load, not for its content (clients treat it as a timeout)."""


def forward_handle(uid: str | None) -> str:
    """P2P handler name of an expert's forward; several experts may share a peer under different uids."""
    return FORWARD_HANDLE if not uid else f"{uid}::{FORWARD_HANDLE}"


def info_handle(uid: str | None) -> str:
    return INFO_HANDLE if not uid else f"{uid}::{INFO_HANDLE}"


def session_handle(uid: str | None) -> str:
    """P2P handler that keys a direct TCP connection (moe.net.direct); not an inference session."""
    return SESSION_HANDLE if not uid else f"{uid}::{SESSION_HANDLE}"


def inference_handle(uid: str | None) -> str:
    """P2P handler of inference-session messages (moe.net.session_wire)."""
    return INFERENCE_HANDLE if not uid else f"{uid}::{INFERENCE_HANDLE}"


@dataclass
class ServerConfig:
    """How an expert is served."""

    kind: str = "lm"
    """"lm": byte ids (B, T) -> next-byte log-probs; "hidden": float (..., d_in) -> the module's float output."""
    uid: str | None = None
    """Name prefixed to the handler names, so one peer can host several experts."""
    d_in: int = 0
    """Last input dimension a "hidden" expert accepts (ignored for "lm")."""
    max_tokens: int = 4096
    """Largest B*T accepted; fp32 replies above ~4000 positions exceed hivemind's 4 MiB unary message limit."""
    max_seq_len: int = 4096
    """Longest T accepted."""
    num_workers: int = 1
    """Threads running forwards; torch already parallelises inside one."""
    inline_forward_ms: float = 5.0
    """A forward expected to take at most this long (moe.net.forward_cost) runs on the event loop itself while no
    other forward is running, saving the two thread hand-offs a worker costs (about 1 ms a call in all on a loaded
    2-core machine: benchmarks/remote_moe.py); the loop, which also reads other callers' requests, stalls no longer
    than that, and with one worker they would wait for the forward anyway. 0 sends every forward to the workers."""
    host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    """Where a server without a DHT starts its own P2P daemon."""
    direct_host: str | None = "127.0.0.1"
    """Interface of the direct TCP fast path (see moe.net.direct); None serves over P2P only."""
    direct_port: int = 0
    """Port of the direct path; 0 picks a free one."""
    max_concurrent_requests_per_peer: int = 8
    """Requests one peer may have in the server at once (waiting or computing); one more gets an immediate busy
    reply. Validators and the router send an expert at most a few at a time."""
    max_requests_per_second_per_peer: float = 200.0
    """Requests (forwards and direct-session openings) one peer may send per second, averaged over a second; the
    excess gets busy replies."""
    max_queued_requests: int = 64
    """Requests the server holds at once from all peers together (waiting or computing); one more gets an immediate
    busy reply, so a flood never builds an unbounded queue."""
    sessions: SessionConfig = field(default_factory=SessionConfig)
    """Bounds of inference sessions (KV caches kept between a generating client's steps)."""

    def __post_init__(self):
        if self.kind not in ("lm", "hidden"):
            raise ValueError(f"ServerConfig.kind must be 'lm' or 'hidden', got {self.kind!r}")
        if self.kind == "hidden" and self.d_in <= 0:
            raise ValueError("ServerConfig.d_in must be positive for a 'hidden' expert")
        require_at_least(self, 1, ["max_concurrent_requests_per_peer", "max_queued_requests"])
        require_positive(self, ["max_requests_per_second_per_peer"])
        require_at_least(self, 0, ["inline_forward_ms"])


def _positions(raw: bytes) -> int | None:
    """Positions a (possibly paid) forward request asks for, from its headers; None when they do not parse (the
    worker refuses it as usual)."""
    try:
        return request_positions(split_paid(raw)[1])
    except (ValueError, IndexError, struct.error):
        return None


class ServerBusy(RuntimeError):
    """A request refused at once because its peer, or the server as a whole, is over a cap of `RequestGate`."""

    def __init__(self, why: str):
        super().__init__(f"{BUSY_REPLY}: {why}")


class RequestGate:
    """Which forwards a server takes on, and in what order, so that no peer can crowd out the others.

    `admit` refuses a request at once (ServerBusy) when its peer has sent more than `rate_per_second` requests a
    second (a token bucket holding one second's worth), already has `per_peer` requests in the server, or when the
    server holds `total`. An admitted request then waits for one of its peer's `turns` places in the worker pool, so
    the pool's queue holds at most `turns` requests of any peer. Runs on the server's event loop only (no locks).
    """

    def __init__(
        self,
        per_peer: int,
        total: int,
        rate_per_second: float,
        turns: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_peer, self.total, self.rate, self.turns, self.clock = per_peer, total, rate_per_second, turns, clock
        self.burst = max(rate_per_second, 1.0)
        self.total_in_flight = 0
        self._in_flight: dict[Hashable, int] = {}
        self._places: dict[Hashable, asyncio.Semaphore] = {}
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # peer -> (tokens, when counted)

    @asynccontextmanager
    async def slot(self, peer: Hashable) -> AsyncIterator[None]:
        """Hold one of `peer`'s places in the worker pool for the body; raises ServerBusy at once if not admitted."""
        self.admit(peer)
        try:
            async with self._place(peer):
                yield
        finally:
            self.release(peer)

    def admit(self, peer: Hashable) -> None:
        """Count one request of `peer` in, or raise ServerBusy (it still counts against the peer's rate)."""
        self.charge(peer)
        if self.total_in_flight >= self.total:
            raise ServerBusy(f"{self.total} requests queued")
        n = self._in_flight.get(peer, 0)
        if n >= self.per_peer:
            raise ServerBusy(f"{self.per_peer} requests of this peer in flight")
        self._in_flight[peer] = n + 1
        self.total_in_flight += 1

    def release(self, peer: Hashable) -> None:
        """Count one admitted request of `peer` out."""
        self.total_in_flight -= 1
        n = self._in_flight.pop(peer) - 1
        if n:
            self._in_flight[peer] = n
        else:
            self._places.pop(peer, None)  # nobody holds or waits for it

    def charge(self, peer: Hashable) -> None:
        """Take one request from `peer`'s budget of `rate_per_second`; raises ServerBusy when it is spent."""
        now = self.clock()
        tokens, then = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[peer] = (tokens, now)
            raise ServerBusy(f"over {self.rate:g} requests per second")
        self._buckets[peer] = (tokens - 1, now)
        if len(self._buckets) > _TRACKED_PEERS:
            self._forget_rested(now)

    def _place(self, peer: Hashable) -> asyncio.Semaphore:
        if peer not in self._places:
            self._places[peer] = asyncio.Semaphore(self.turns)
        return self._places[peer]

    def _forget_rested(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold nothing a fresh one would not), so peer churn cannot grow
        the table without bound."""
        self._buckets = {
            p: (t, then) for p, (t, then) in self._buckets.items() if t + (now - then) * self.rate < self.burst
        }


_TRACKED_PEERS = 4096
"""Rate buckets kept before the refilled ones are dropped."""

_direct_peer: ContextVar[Hashable] = ContextVar("direct_peer", default="direct")
"""The peer that opened the direct connection the current task serves."""


class _PeerSessions(OrderedDict):
    """DirectServer's pending sessions that also remember the peer that opened each over libp2p. DirectServer pops a
    session in the task that serves its connection, so popping tags that task with the peer (`_direct_peer`): the
    connection's requests then count against that peer's caps, as they do over P2P."""

    def __init__(self):
        super().__init__()
        self.owners: dict[bytes, PeerID] = {}

    def pop(self, sid, *default):
        owner = self.owners.pop(sid, None)
        if owner is not None:
            _direct_peer.set(owner)
        return super().pop(sid, *default)

    def popitem(self, last: bool = True):
        sid, entry = super().popitem(last)
        self.owners.pop(sid, None)
        return sid, entry


class _PeerDirectServer(DirectServer):
    """The direct path, knowing which peer each session belongs to (see `_PeerSessions`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending = _PeerSessions()

    def open_session_for(self, key: bytes, peer: PeerID) -> bytes:
        sid = self.open_session(key)
        self._pending.owners[sid] = peer
        return sid


class ExpertServer:
    """One expert served over P2P: `start()`, `update_weights(state_dict)` from training, `shutdown()`.

    Give it a running `hivemind.DHT` to share that DHT's P2P daemon (the usual case: peers find the expert through
    the DHT), or none to start a private daemon (tests, benchmarks), reachable at `maddrs`.
    """

    def __init__(
        self,
        module: nn.Module,
        config: ServerConfig | None = None,
        dht: DHT | None = None,
        initial_peers: list[str] | None = None,
    ):
        self.config = config or ServerConfig()
        self._dht, self._initial_peers = dht, list(initial_peers or [])
        self._buffers = [self._frozen_copy(module), self._frozen_copy(module)]
        self._locks = [threading.Lock(), threading.Lock()]
        self._active = 0
        self._buffer_versions = [0, 0]
        self._pool = ThreadPoolExecutor(self.config.num_workers, thread_name_prefix="expert-forward")
        self._pool_jobs = 0
        """Forwards handed to the pool and not yet back (read and written on the event loop only)."""
        self.forward_cost = ForwardCost()
        self._loop: LoopThread | None = None
        self.p2p: P2P | None = None
        self.direct: DirectServer | None = None
        cfg = self.config
        self.gate = RequestGate(
            cfg.max_concurrent_requests_per_peer,
            cfg.max_queued_requests,
            cfg.max_requests_per_second_per_peer,
            turns=cfg.num_workers,
        )
        self.session_gate = RequestGate(
            cfg.max_concurrent_requests_per_peer,
            cfg.max_queued_requests,
            cfg.sessions.max_steps_per_second_per_peer,
            turns=cfg.num_workers,
        )
        self.sessions = SessionTable(cfg.sessions)
        """Open inference sessions (only a ByteLM `lm` expert serves them)."""
        self.served, self.rejected, self.busy, self.version = 0, 0, 0, 0
        self._identities: list[Hotkey] = []
        self.ticket_desk: TicketDesk | None = None
        """Checks the ticket of each paid call (moe.net.ticket_desk); None serves every call for free."""

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    # lifecycle

    def start(self, timeout: float = 60.0) -> ExpertServer:
        """Connect to P2P and register the handlers; returns once requests can be served."""
        if self._loop is not None:
            raise RuntimeError("ExpertServer already started")
        self._loop = LoopThread(name=f"expert-server-{self.config.uid or 'default'}")
        try:
            self._loop.run(self._start(), timeout)
        except BaseException:
            self.shutdown()
            raise
        logger.info("serving %s expert %s on peer %s", self.config.kind, self.config.uid or "-", self.peer_id)
        return self

    async def _start(self) -> None:
        if self._dht is not None:
            self.p2p = await replicate_p2p(self._dht)
        else:
            self.p2p = await P2P.create(initial_peers=self._initial_peers, host_maddrs=self.config.host_maddrs)
        await self.p2p.add_protobuf_handler(
            forward_handle(self.config.uid), self._rpc_forward, runtime_pb2.ExpertRequest
        )
        await self.p2p.add_protobuf_handler(info_handle(self.config.uid), self._rpc_info, runtime_pb2.ExpertUID)
        if self.serves_sessions:
            await self.p2p.add_protobuf_handler(
                inference_handle(self.config.uid), self._rpc_forward, runtime_pb2.ExpertRequest
            )
            asyncio.ensure_future(self._sweep_sessions())  # cancelled with the loop
        if self.config.direct_host is not None:
            max_request = self.config.max_tokens * max(self.config.d_in, 1) * 8 + 1024
            self.direct = _PeerDirectServer(
                self._process_direct, self.config.direct_host, max_request_bytes=max_request
            )
            await self.direct.start(self.config.direct_port)
            await self.p2p.add_protobuf_handler(
                session_handle(self.config.uid), self._rpc_session, runtime_pb2.ExpertRequest
            )

    def shutdown(self) -> None:
        """Stop serving and release the daemon (if this server started it) and threads; idempotent."""
        if self._loop is None:
            return
        if self.p2p is not None:
            p2p = self.p2p

            async def _close() -> None:
                if self.direct is not None:
                    await self.direct.stop()
                uid = self.config.uid
                for handle in (forward_handle(uid), info_handle(uid), session_handle(uid), inference_handle(uid)):
                    try:
                        await p2p.remove_protobuf_handler(handle)
                    except Exception as e:  # the daemon may already be gone
                        logger.debug("removing handler %s: %r", handle, e)
                await p2p.shutdown()  # stops the daemon only if this server started it

            try:
                self._loop.run(_close(), timeout=10)
            except Exception as e:
                logger.warning("expert server shutdown was not clean: %r", e)
        self._loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop, self.p2p = None, None

    def __enter__(self) -> ExpertServer:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def peer_id(self) -> PeerID:
        if self.p2p is None:
            raise RuntimeError("ExpertServer is not started")
        return self.p2p.peer_id

    @property
    def maddrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/<peer id>) a client can pass as initial peers."""
        if self._loop is None or self.p2p is None:
            raise RuntimeError("ExpertServer is not started")
        return [str(m) for m in self._loop.run(self.p2p.get_visible_maddrs(), timeout=10)]

    def prove_identity(self, hotkey: Hotkey) -> None:
        """Answer identity challenges for `hotkey` (see moe.net.identity_proof): what makes its records count."""
        if all(h.address != hotkey.address for h in self._identities):
            self._identities.append(hotkey)

    # weights

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load `state_dict` into the idle buffer, then make it the served one; in-flight forwards finish unchanged.

        Raises (and keeps serving the old weights) if `state_dict` does not match the module.
        """
        spare = 1 - self._active
        with self._locks[spare], torch.no_grad():  # waits only for a forward still running on the old weights
            self._buffers[spare].load_state_dict(state_dict, strict=True)
        self._buffer_versions[spare] = self.version + 1
        self._active = spare
        self.version += 1

    # request handling

    async def _rpc_forward(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        return runtime_pb2.ExpertResponse(metadata=await self._process_async(request.metadata, context.remote_id))

    async def _process_direct(self, raw: bytes) -> bytes:
        return await self._process_async(raw, _direct_peer.get())

    async def _process_async(self, raw: bytes, remote: Hashable = "direct") -> bytes:
        """Validate and compute off the loop, in `remote`'s turn. Raises ServerBusy at once when `remote` or the server
        is over a cap, ValueError for a bad request (both sent back as error replies)."""
        session = is_session_message(raw)
        gate = self.session_gate if session else self.gate
        try:
            async with gate.slot(remote):
                positions = None if session else _positions(raw)
                if positions is not None and self._pool_jobs == 0 and self._short(positions):
                    payload = self._timed_serve(raw, remote, positions)  # nothing else computes: no lock to wait for
                else:
                    self._pool_jobs += 1
                    try:
                        loop = asyncio.get_running_loop()
                        payload = await loop.run_in_executor(self._pool, self._timed_serve, raw, remote, positions)
                    finally:
                        self._pool_jobs -= 1
        except ServerBusy as e:
            self.busy += 1
            logger.debug("busy for %s: %s", remote, e)
            raise
        except (WireError, ValueError) as e:
            self.rejected += 1
            logger.warning("rejected request from %s: %s", remote, e)
            raise ValueError(f"bad request: {e}") from None
        self.served += 1
        return payload

    async def _rpc_session(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertInfo:
        self.gate.charge(context.remote_id)  # a session flood would evict other peers' pending sessions
        sid = self.direct.open_session_for(request.metadata, context.remote_id)  # ValueError on a malformed key
        info = {"session": sid.hex(), "host": self.direct.host, "port": self.direct.port}
        return runtime_pb2.ExpertInfo(serialized_info=json.dumps(info).encode())

    async def _rpc_info(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertInfo:
        info = asdict(self.config) | {"version": self.version, "formats": list(self._formats())}
        info.pop("host_maddrs")
        if request.uid:  # an identity challenge: its nonce
            info["identity"] = sign_identities(self._identities, request.uid, self.p2p.peer_id.to_bytes())
        return runtime_pb2.ExpertInfo(serialized_info=json.dumps(info).encode())

    def _short(self, positions: int) -> bool:
        """Whether a forward over `positions` is expected to take at most `inline_forward_ms`."""
        return self.forward_cost.is_short(positions, self.config.inline_forward_ms / 1000)

    def _timed_serve(self, raw: bytes, remote: Hashable, positions: int | None) -> bytes:
        """`_serve`, teaching `forward_cost` how long a forward over `positions` took (None: not a forward)."""
        t0 = time.perf_counter()
        payload = self._serve(raw, remote)
        if positions is not None:
            self.forward_cost.observe(positions, time.perf_counter() - t0)
        return payload

    def _serve(self, raw: bytes, remote: Hashable) -> bytes:
        """The reply payload: the computed reply behind the serving hotkey's receipt for it (moe.net.receipt), or a
        plain reply while no hotkey is proven."""
        ticket_bytes, inner = split_paid(raw)
        if ticket_bytes is not None and not inner:  # a consumer's closing ticket: no call comes with it
            if self.ticket_desk is None:
                raise WireError("this expert takes no payments")
            self.ticket_desk.close(ticket_bytes)
            return frame_reply(b"", None)
        if is_session_message(inner):
            if not self.serves_sessions:
                raise WireError(f"this {self.config.kind} expert serves no inference sessions")
            reply, positions = serve_session_message(self.sessions, inner, remote, self._lease)
        elif self.ticket_desk is not None:
            positions = request_positions(inner)
            ticket = self.ticket_desk.admit(ticket_bytes, positions)  # PaymentRefused before any compute
            reply = self._process(inner)
            self.ticket_desk.answered(ticket, positions)
        else:
            reply, positions = self._process(inner), None
        if not self._identities:
            return frame_reply(reply, None)
        caller = remote.to_bytes() if isinstance(remote, PeerID) else str(remote).encode()
        positions = request_positions(inner) if positions is None else positions
        receipt = sign_receipt(
            self._identities[0], caller_digest(caller), int(get_dht_time() * 1000), positions, raw, reply
        )
        return frame_reply(reply, receipt)

    @property
    def serves_sessions(self) -> bool:
        return self.config.kind == "lm" and isinstance(self._buffers[0], ByteLM)

    @contextmanager
    def _lease(self) -> Iterator[tuple[ByteLM, int]]:
        """The served model and its weights version, held (under inference mode) for one session computation."""
        i = self._active
        with self._locks[i], torch.inference_mode():
            yield self._buffers[i], self._buffer_versions[i]

    async def _sweep_sessions(self) -> None:
        """Free the caches of idle sessions even when no message comes to trigger it."""
        interval = max(0.05, self.config.sessions.idle_timeout_seconds / 2)
        while True:
            await asyncio.sleep(interval)
            self.sessions.expire()

    def _formats(self) -> tuple[str, ...]:
        return DIST_FORMATS if self.config.kind == "lm" else ACT_FORMATS

    def _process(self, raw: bytes) -> bytes:
        """Validate one request and compute its reply payload (runs on a worker thread)."""
        cfg = self.config
        max_bytes = cfg.max_tokens * max(cfg.d_in, 1) * 8
        x, wire_format, topk = decode_request(raw, max_bytes=max_bytes)
        if wire_format not in self._formats():
            raise WireError(f"format {wire_format} not served by a {cfg.kind} expert (use one of {self._formats()})")
        if cfg.kind == "lm":
            self._check_bytes(x)
        else:
            self._check_hidden(x)
        i = self._active
        with self._locks[i], torch.inference_mode():
            out = self._buffers[i](x.long() if cfg.kind == "lm" else x.float())
        if cfg.kind == "hidden":
            return encode_activations(out, wire_format)
        if out.dim() != 3 or out.shape[:2] != x.shape or out.shape[-1] < VOCAB:
            raise RuntimeError(f"expert returned logits of shape {tuple(out.shape)} for input {tuple(x.shape)}")
        logp = F.log_softmax(out[..., :VOCAB].float(), dim=-1)  # (B, T, 256)
        return encode_logp(logp, wire_format, topk=topk or 16)

    def _check_bytes(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dtype not in (torch.uint8, torch.int32, torch.int64):
            raise WireError(f"byte ids must be an integer tensor, got {x.dtype}")
        if x.dim() != 2:
            raise WireError(f"byte ids must have shape (B, T), got {tuple(x.shape)}")
        B, T = x.shape
        if B * T == 0 or B * T > cfg.max_tokens or T > cfg.max_seq_len:
            raise WireError(
                f"batch {B}x{T} outside limits (max_tokens={cfg.max_tokens}, max_seq_len={cfg.max_seq_len})"
            )
        if x.dtype != torch.uint8 and bool(((x < 0) | (x >= VOCAB_SIZE)).any()):
            raise WireError(f"token ids outside 0..{VOCAB_SIZE - 1}")

    def _check_hidden(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dtype not in (torch.float32, torch.float16):
            raise WireError(f"activations must be float32 or float16, got {x.dtype}")
        if x.dim() < 2 or x.shape[-1] != cfg.d_in:
            raise WireError(f"activations must have shape (..., {cfg.d_in}), got {tuple(x.shape)}")
        if x.numel() == 0 or x.numel() // cfg.d_in > cfg.max_tokens:
            raise WireError(f"{x.numel() // max(cfg.d_in, 1)} positions outside limits (max_tokens={cfg.max_tokens})")
        if not bool(torch.isfinite(x).all()):
            raise WireError("activations contain NaN or infinity")
