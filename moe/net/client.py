"""Call remote experts: parallel forwards with timeouts, back-off for failing peers, and no trust in any reply.

Experts are used for inference only (frozen from the caller's side: no backward through them). Every reply is
decoded and validated before it is returned; a malformed or non-normalized reply is dropped, the peer is backed off,
and a `FaultReport` is recorded for validators to turn into a penalty. Nothing a peer sends can raise out of
`call_many`: missing experts are simply absent from its result, as in hivemind's RemoteMixtureOfExperts. A reply is
held to the size and frame layout its request calls for before it is decoded, so a small reply cannot make the client
allocate gigabytes. Inputs the caller got wrong raise ValueError before any peer is called, and never count against
a peer.

`ExpertClient` is async and lives on the event loop of its P2P; `SyncExpertClient` wraps it on a private loop
thread for synchronous training/validation code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from google.protobuf.message import DecodeError
from hivemind.dht import DHT
from hivemind.p2p import P2P, P2PDaemonError, P2PHandlerError, PeerID
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time

from moe.config_checks import require_at_least, require_between, require_one_of, require_positive
from moe.model.tokenizer import VOCAB_SIZE
from moe.net.direct import KEY_BYTES, DirectConnection, DirectError, OversizedReply, RemoteError
from moe.net.identity_proof import new_nonce, verify_identities
from moe.net.loop import LoopThread, replicate_p2p
from moe.net.payer import Payer
from moe.net.receipt import RECEIPT_OVERHEAD, Receipt, ReceiptError, caller_digest, unframe_reply
from moe.net.server import BUSY_REPLY, forward_handle, info_handle, session_handle
from moe.net.ticket_desk import PAYMENT_REFUSED, PaymentRefused, paid_request, split_paid
from moe.net.wire import (
    ACT_FORMATS,
    VOCAB,
    WIRE_FORMATS,
    MaliciousReply,
    decode_activations,
    decode_logp,
    decode_request,
    encode_request,
    reply_nbytes,
    request_positions,
    validate_reply,
)

logger = logging.getLogger(__name__)


@dataclass
class ClientConfig:
    """How remote experts are called (by the router, validators and any other consumer)."""

    forward_timeout_seconds: float = 5.0
    """Seconds to wait for an expert before giving up on it (counts as a failure)."""
    k_min: int = 0
    """Answers a parallel call wants before the slower experts get only `timeout_after_k_min_seconds` more (and are
    then skipped, not counted as failures); 0 waits for every expert called."""
    timeout_after_k_min_seconds: float = 0.05
    """Once k_min experts answered, seconds to wait for the rest before skipping them."""
    wire_format: str = "q8"
    """Reply encoding: fp32, fp16, q8 (a quarter of fp32, ~0 bits per byte lost), topk (distributions) or act32,
    act16 (hidden states)."""
    topk: int = 16
    """Bytes sent exactly by the topk format (1..255)."""
    backoff_base_seconds: float = 1.0
    """Seconds a peer is skipped after its first consecutive failure; doubles with each further one."""
    backoff_cap_seconds: float = 300.0
    """Longest back-off, seconds."""
    tol: float = 1e-3
    """Largest |logsumexp| of a decoded row accepted as a distribution."""
    direct: bool = True
    """Use the server's direct TCP path (moe.net.direct) when it offers one; P2P otherwise."""
    max_reply_bytes: int = 1 << 26
    """Largest reply a request may call for (a bigger batch raises ValueError before any peer is called). Every
    reply is also held to the exact size of an honest one for its request; on the direct path a server claiming
    more than this is cut off unread."""

    def __post_init__(self):
        require_one_of(self, "wire_format", WIRE_FORMATS)
        require_at_least(self, 0, ["k_min", "timeout_after_k_min_seconds", "backoff_base_seconds"])
        require_at_least(self, 1, ["max_reply_bytes"])
        require_between(self, "topk", 1, VOCAB - 1)
        require_positive(self, ["forward_timeout_seconds", "backoff_cap_seconds", "tol"])


@dataclass(frozen=True)
class FaultReport:
    """Evidence that `peer_id` sent a malicious reply at `time` (DHT time): validators turn these into penalties."""

    peer_id: PeerID
    reason: str
    time: float


@dataclass(frozen=True)
class Request:
    """One encoded forward request and the reply it calls for: every reply is checked against these, not against
    what the reply's own headers claim."""

    raw: bytes
    wire_format: str
    reply_shape: tuple[int, ...]
    """(B, T) for a distribution format, the whole output shape for an activation format."""
    topk: int
    reply_bytes: int
    """Exact length of an honest reply; a longer one is refused before it is decoded."""


class PeerUnavailable(RuntimeError):
    """The peer is backed off after recent failures."""


class ExpertBusy(TimeoutError):
    """The expert refused the call for load (moe.net.server.BUSY_REPLY). The call failed as if it had timed out, but
    the peer is neither backed off nor blamed: it answered, and it may be loaded by a flooder, whose work a back-off
    would finish."""


class PeerHealth:
    """Consecutive failures per peer; after n of them the peer is skipped until t + min(base * 2^(n-1), cap)."""

    def __init__(
        self, backoff_base: float = 1.0, backoff_cap: float = 300.0, clock: Callable[[], float] = time.monotonic
    ):
        self.backoff_base, self.backoff_cap, self.clock = backoff_base, backoff_cap, clock
        self._failures: dict[PeerID, int] = {}
        self._until: dict[PeerID, float] = {}

    def available(self, peer_id: PeerID) -> bool:
        return self.clock() >= self._until.get(peer_id, 0.0)

    def failures(self, peer_id: PeerID) -> int:
        return self._failures.get(peer_id, 0)

    def banned_until(self, peer_id: PeerID) -> float:
        return self._until.get(peer_id, 0.0)

    def record_failure(self, peer_id: PeerID) -> float:
        """Count a failure; returns the back-off in seconds now applied to the peer."""
        n = self._failures.get(peer_id, 0) + 1
        self._failures[peer_id] = n
        delay = min(self.backoff_base * 2 ** (n - 1), self.backoff_cap)
        self._until[peer_id] = self.clock() + delay
        return delay

    def record_success(self, peer_id: PeerID) -> None:
        self._failures.pop(peer_id, None)
        self._until.pop(peer_id, None)


class ExpertClient:
    """Async calls to experts served by `moe.net.server.ExpertServer`; must be used on `p2p`'s event loop."""

    def __init__(
        self,
        p2p: P2P,
        config: ClientConfig | None = None,
        on_fault: Callable[[FaultReport], None] | None = None,
        uid: str | None = None,
    ):
        self.p2p, self.config, self.uid, self.on_fault = p2p, config or ClientConfig(), uid, on_fault
        self.health = PeerHealth(self.config.backoff_base_seconds, self.config.backoff_cap_seconds)
        self.faults: list[FaultReport] = []
        self._idle: dict[PeerID, list[DirectConnection]] = {}
        self.on_receipt: Callable[[PeerID, bytes, Receipt | None], None] | None = None
        """Called with (peer, request bytes, checked receipt or None) for every reply (a router samples its traffic
        and drops experts that send none)."""
        self._no_direct: set[PeerID] = set()
        self.payer: Payer | None = None
        """Signs a ticket for each call to a priced expert (moe.net.payer); None makes only free calls."""
        self.prices: dict[PeerID, tuple[str, int]] = {}
        """Peer -> (expert hotkey address, price in rao per million bytes) of the experts `payer` pays."""

    async def call(
        self,
        peer_id: PeerID,
        inputs: torch.Tensor,
        timeout: float | None = None,
        wire_format: str | None = None,
        out_dim: int | None = None,
    ) -> torch.Tensor:
        """One validated forward of `inputs` (byte ids (B, T), or activations (..., d) for act formats).

        Returns float32 log-probs (B, T, 256), or activations (..., out_dim or d). Raises ValueError if `inputs`
        cannot make a valid request (the caller's mistake: the peer is neither called nor backed off). Otherwise
        raises PeerUnavailable if the peer is backed off, TimeoutError, P2PHandlerError (the server refused), or
        MaliciousReply (also recorded as a FaultReport); every failure backs the peer off, a success clears its record.
        A busy reply raises ExpertBusy (a TimeoutError) and leaves the peer's record as it was.
        """
        return await self._call(peer_id, self.prepare(inputs, wire_format, out_dim), timeout)

    def prepare(self, inputs: torch.Tensor, wire_format: str | None = None, out_dim: int | None = None) -> Request:
        """Check and encode the caller's `inputs`; raises ValueError, naming the problem, if they are unusable."""
        cfg = self.config
        wire_format = wire_format or cfg.wire_format
        if wire_format not in WIRE_FORMATS:
            raise ValueError(f"unknown wire format {wire_format!r}, expected one of {', '.join(WIRE_FORMATS)}")
        if wire_format in ACT_FORMATS:
            inputs = _activation_batch(inputs)
            reply_shape = (*inputs.shape[:-1], out_dim or inputs.shape[-1])
        else:
            inputs = _byte_batch(inputs)
            reply_shape = tuple(inputs.shape)
        reply_bytes = reply_nbytes(wire_format, reply_shape, cfg.topk)
        if reply_bytes > cfg.max_reply_bytes:
            raise ValueError(
                f"a {wire_format} reply of shape {reply_shape} takes {reply_bytes} bytes, over max_reply_bytes="
                f"{cfg.max_reply_bytes}; split the batch"
            )
        raw = encode_request(inputs, wire_format, cfg.topk)
        return Request(raw, wire_format, reply_shape, cfg.topk, reply_bytes)

    async def close_accounts(self, timeout: float | None = None) -> int:
        """Send each priced expert the payer's closing ticket, acknowledging the calls answered since the last
        ticket (otherwise never paid); returns how many experts took theirs. An expert that is gone keeps only what
        earlier tickets acknowledged."""
        if self.payer is None:
            return 0
        peers = {expert: peer for peer, (expert, _) in self.prices.items()}
        closing = [(peers[e], t) for e, t in self.payer.closing_tickets().items() if e in peers]
        timeout = self.config.forward_timeout_seconds if timeout is None else timeout

        async def close(peer: PeerID, ticket) -> bool:
            try:
                raw = paid_request(ticket, b"")
                await asyncio.wait_for(self.send_raw(peer, raw, RECEIPT_OVERHEAD, forward_handle(self.uid)), timeout)
                return True
            except Exception as e:  # noqa: BLE001 - a gone expert is logged, not raised: closing is best effort
                logger.warning("closing ticket not taken by %s: %s", peer, e)
                return False

        return sum(await asyncio.gather(*(close(p, t) for p, t in closing)))

    async def replay(self, peer_id: PeerID, raw: bytes, timeout: float | None = None) -> tuple[bytes, Receipt | None]:
        """Send the exact bytes of a recorded distribution request again → (reply payload, receipt or None), checked
        like any reply (a validator re-asking what a router was answered: moe.poi.traffic_check). Raises ValueError
        if `raw` is not a valid distribution request, else fails like `call`."""
        raw = split_paid(raw)[1]  # a recorded paid call: the caller's ticket is spent, this call brings its own
        x, wire_format, topk = decode_request(raw, max_bytes=self.config.max_reply_bytes)
        if wire_format in ACT_FORMATS:
            raise ValueError("only distribution requests can be replayed")
        shape = tuple(x.shape)
        request = Request(bytes(raw), wire_format, shape, topk, reply_nbytes(wire_format, shape, topk))
        return await self._call(peer_id, request, timeout, decode=False)

    async def _call(self, peer_id: PeerID, request: Request, timeout: float | None, decode: bool = True):
        """`call` after the caller's inputs passed: from here on every failure is the peer's (or the network's)."""
        if not self.health.available(peer_id):
            raise PeerUnavailable(
                f"peer {peer_id} backed off for {self.health.banned_until(peer_id) - time.monotonic():.1f} s"
            )
        ticket, positions = None, 0
        expert, price = self.prices.get(peer_id, ("", 0))
        if self.payer is not None and expert and (price > 0 or self.payer.free):
            positions = request_positions(request.raw)
            ticket = self.payer.ticket(expert, 0 if self.payer.free else price)
            request = replace(request, raw=paid_request(ticket, request.raw))
        try:
            reply, receipt = await self._exchange(peer_id, request, timeout)
            out = self._decode(request, reply) if decode else (reply, receipt)
        except asyncio.CancelledError:
            raise
        except MaliciousReply as e:
            self._report(peer_id, str(e))
            self.health.record_failure(peer_id)
            raise
        except P2PHandlerError as e:
            if BUSY_REPLY in str(e):
                raise ExpertBusy(f"expert {peer_id} is busy") from None
            if PAYMENT_REFUSED in str(e):  # the consumer's own account, not the peer's fault: no back-off
                raise PaymentRefused(f"expert {peer_id}: {str(e).split(PAYMENT_REFUSED, 1)[1].strip(': ')}") from None
            self.health.record_failure(peer_id)
            raise
        except BaseException:
            self.health.record_failure(peer_id)
            raise
        self.health.record_success(peer_id)
        if ticket is not None:
            self.payer.answered(ticket, positions)  # only a valid reply is ever acknowledged, so paid for
        return out

    async def _exchange(
        self, peer_id: PeerID, request: Request, timeout: float | None
    ) -> tuple[bytes, Receipt | None]:
        """Send `request` → (reply, its receipt or None); raises MaliciousReply for a reply it does not call for or
        a receipt that is not the signed receipt of exactly this call (moe.net.receipt)."""
        timeout = self.config.forward_timeout_seconds if timeout is None else timeout
        try:
            payload = await asyncio.wait_for(self._request(peer_id, request), timeout=timeout)
        except DecodeError:
            raise MaliciousReply("reply is not a valid protobuf message") from None
        except asyncio.TimeoutError:
            raise TimeoutError(f"peer {peer_id} did not answer within {timeout} s") from None
        limit = request.reply_bytes + RECEIPT_OVERHEAD
        if len(payload) > limit:  # checked before decoding, whatever the reply's headers claim
            raise MaliciousReply(f"{request.wire_format} reply of {len(payload)} bytes, at most {limit} expected")
        try:
            reply, receipt = unframe_reply(payload)
            if receipt is not None:
                receipt.check(request.raw, reply, caller_digest(self.p2p.peer_id.to_bytes()))
        except ReceiptError as e:
            raise MaliciousReply(f"bad receipt: {e}") from None
        if self.on_receipt is not None:
            self.on_receipt(peer_id, request.raw, receipt)
        return reply, receipt

    def _decode(self, request: Request, reply: bytes) -> torch.Tensor:
        """The reply checked against its request (shape, size, normalisation); raises MaliciousReply."""
        fmt, shape = request.wire_format, request.reply_shape
        if len(reply) > request.reply_bytes:
            raise MaliciousReply(f"{fmt} reply of {len(reply)} bytes, at most {request.reply_bytes} expected")
        if fmt in ACT_FORMATS:
            return decode_activations(reply, fmt, shape)
        return validate_reply(decode_logp(reply, fmt, shape, request.topk), shape, self.config.tol)

    async def _request(self, peer_id: PeerID, request: Request) -> bytes:
        """Send one encoded request, directly if the peer offers it, else over P2P; returns the reply payload."""
        return await self.send_raw(
            peer_id, request.raw, request.reply_bytes + RECEIPT_OVERHEAD, forward_handle(self.uid), request.wire_format
        )

    async def send_raw(self, peer_id: PeerID, raw: bytes, max_reply_bytes: int, handle: str, what: str = "") -> bytes:
        """Send `raw` directly if the peer offers it, else to its P2P `handle`; returns the reply payload (framed,
        unchecked). Raises P2PHandlerError when refused, MaliciousReply for an authenticated direct reply over
        `max_reply_bytes`, DirectError or P2PDaemonError when the transport fails. No timeout, no back-off."""
        conn = await self._direct_conn(peer_id) if self.config.direct and peer_id not in self._no_direct else None
        if conn is not None:
            exchange = asyncio.ensure_future(conn.request(raw, max_reply_bytes=max_reply_bytes))
            try:
                out = await asyncio.shield(exchange)
            except asyncio.CancelledError:  # skipped or timed out: let it finish, and keep the connection
                self._finish_abandoned(peer_id, conn, exchange)
                raise
            except RemoteError as e:
                self._idle.setdefault(peer_id, []).append(conn)
                raise P2PHandlerError(f"expert {peer_id} refused: {e}") from None
            except OversizedReply as e:
                conn.close()
                raise MaliciousReply(f"{what} {e}".strip()) from None
            except DirectError:
                conn.close()
                self._no_direct.add(peer_id)  # later calls go over P2P
                raise
            except BaseException:
                conn.close()
                raise
            self._idle.setdefault(peer_id, []).append(conn)
            return out
        reply = await self.p2p.call_protobuf_handler(
            peer_id, handle, runtime_pb2.ExpertRequest(metadata=raw), runtime_pb2.ExpertResponse
        )
        return reply.metadata

    def _finish_abandoned(self, peer_id: PeerID, conn: DirectConnection, exchange: asyncio.Future) -> None:
        """A direct call its caller stopped waiting for (a straggler once k_min replied, or a timeout) runs on for
        up to `forward_timeout_seconds`: its reply is dropped and the connection pooled again, where closing it would
        cost the next call to this peer a new session over P2P (milliseconds). Past that, the connection closes."""
        cutoff = asyncio.get_running_loop().call_later(self.config.forward_timeout_seconds, exchange.cancel)

        def done(t: asyncio.Future) -> None:
            cutoff.cancel()
            if not t.cancelled() and t.exception() is None:
                self._idle.setdefault(peer_id, []).append(conn)
            else:
                conn.close()

        exchange.add_done_callback(done)

    async def _direct_conn(self, peer_id: PeerID) -> DirectConnection | None:
        """An idle direct connection to the peer, or a new one keyed over P2P; None if it offers none."""
        idle = self._idle.get(peer_id)
        if idle:
            return idle.pop()
        key = os.urandom(KEY_BYTES)
        try:
            reply = await self.p2p.call_protobuf_handler(
                peer_id, session_handle(self.uid), runtime_pb2.ExpertRequest(metadata=key), runtime_pb2.ExpertInfo
            )
            info = json.loads(reply.serialized_info)
            sid, host, port = bytes.fromhex(info["session"]), str(info["host"]), int(info["port"])
            return await DirectConnection.open(host, port, sid, key, self.config.max_reply_bytes)
        except (P2PHandlerError, P2PDaemonError, DirectError, DecodeError, ValueError, KeyError, TypeError) as e:
            logger.debug("no direct path to %s (%r); using P2P", peer_id, e)
            self._no_direct.add(peer_id)
            return None

    async def aclose(self) -> None:
        """Close the pooled direct connections."""
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    async def call_many(
        self,
        peer_ids: Sequence[PeerID],
        inputs: torch.Tensor | Mapping[PeerID, torch.Tensor],
        timeout: float | None = None,
        k_min: int | None = None,
        timeout_after_k_min: float | None = None,
        wire_format: str | None = None,
        out_dim: int | None = None,
    ) -> dict[PeerID, torch.Tensor]:
        """Call `peer_ids` in parallel (the same `inputs`, or one tensor per peer) and return the valid replies.

        Backed-off peers are not called. Each call gets `timeout` seconds; once `k_min` replies are in (0: every
        peer called), the others get `timeout_after_k_min` more and are then skipped. Failed, timed-out and malicious
        peers are missing from the result (and backed off); fewer than `k_min` replies is not an error, the caller
        decides what to do. Inputs that cannot make a valid request raise ValueError before any peer is called.
        """
        peer_ids = list(dict.fromkeys(peer_ids))  # de-duplicated, order kept
        requests = self._prepare_each(peer_ids, inputs, wire_format, out_dim)
        cfg = self.config
        timeout = cfg.forward_timeout_seconds if timeout is None else timeout
        k_min = cfg.k_min if k_min is None else k_min
        grace = cfg.timeout_after_k_min_seconds if timeout_after_k_min is None else timeout_after_k_min
        loop = asyncio.get_running_loop()
        tasks: dict[asyncio.Task, PeerID] = {}
        for pid in peer_ids:
            if not self.health.available(pid):
                logger.debug("skipping backed-off peer %s", pid)
                continue
            tasks[asyncio.ensure_future(self._call(pid, requests[pid], timeout))] = pid
        k_min = len(tasks) if k_min <= 0 else k_min

        results: dict[PeerID, torch.Tensor] = {}
        pending, deadline, k_min_at = set(tasks), loop.time() + timeout, None
        try:
            while pending:
                until = deadline if k_min_at is None else min(deadline, k_min_at + grace)
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, until - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for t in done:
                    if t.exception() is None:
                        results[tasks[t]] = t.result()
                    else:
                        logger.debug("expert %s failed: %s", tasks[t], t.exception())
                if k_min_at is None and len(results) >= k_min:
                    k_min_at = loop.time()
        finally:
            timed_out = loop.time() >= deadline - 1e-3  # past the full timeout, not just the grace after k_min
            for t in pending:
                t.cancel()
                if timed_out:
                    self.health.record_failure(tasks[t])
                    logger.debug("expert %s timed out after %.3f s", tasks[t], timeout)
                else:  # too slow once k_min answered: skipped, not backed off
                    logger.debug("skipped slow expert %s", tasks[t])
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return results

    def _prepare_each(
        self,
        peer_ids: list[PeerID],
        inputs: torch.Tensor | Mapping[PeerID, torch.Tensor],
        wire_format: str | None,
        out_dim: int | None,
    ) -> dict[PeerID, Request]:
        """The request for each peer (one shared encoding when every peer gets the same tensor)."""
        if isinstance(inputs, Mapping):
            return {pid: self.prepare(inputs[pid], wire_format, out_dim) for pid in peer_ids}
        request = self.prepare(inputs, wire_format, out_dim)
        return dict.fromkeys(peer_ids, request)

    async def info(self, peer_id: PeerID, timeout: float | None = None, nonce: str = "") -> dict:
        """The expert's served metadata (kind, formats, limits, weights version, and with a `nonce` its identity
        proofs); raises MaliciousReply on garbage."""
        timeout = self.config.forward_timeout_seconds if timeout is None else timeout
        try:
            reply = await asyncio.wait_for(
                self.p2p.call_protobuf_handler(
                    peer_id, info_handle(self.uid), runtime_pb2.ExpertUID(uid=nonce), runtime_pb2.ExpertInfo
                ),
                timeout=timeout,
            )
            if len(reply.serialized_info) > 1 << 16:
                raise MaliciousReply("expert info larger than 64 KiB")
            info = json.loads(reply.serialized_info)
        except (DecodeError, ValueError) as e:
            raise MaliciousReply(f"expert info unreadable: {e}") from None
        if not isinstance(info, dict):
            raise MaliciousReply("expert info is not a JSON object")
        return info

    async def prove_identities(self, peer_ids: Sequence[PeerID], timeout: float | None = None) -> dict[str, set[str]]:
        """Challenge each peer for the hotkeys it serves (moe.net.identity_proof): base58 peer id → proven hotkeys
        (empty for a peer that did not answer or proved nothing)."""

        async def ask(peer_id: PeerID) -> set[str]:
            nonce = new_nonce()
            try:
                info = await self.info(peer_id, timeout=timeout, nonce=nonce)
            except (MaliciousReply, P2PDaemonError, P2PHandlerError, asyncio.TimeoutError, OSError) as e:
                logger.info("identity challenge to %s failed: %r", peer_id, e)
                return set()
            return verify_identities(info.get("identity"), nonce, peer_id.to_bytes())

        proven = await asyncio.gather(*(ask(p) for p in peer_ids))
        return {p.to_base58(): hotkeys for p, hotkeys in zip(peer_ids, proven, strict=True)}

    def _report(self, peer_id: PeerID, reason: str) -> None:
        report = FaultReport(peer_id, reason, get_dht_time())
        logger.warning("dropped malicious reply from %s: %s", peer_id, reason)
        self.faults.append(report)
        if self.on_fault is not None:
            try:
                self.on_fault(report)
            except Exception:
                logger.exception("fault callback failed")


def _byte_batch(inputs: torch.Tensor) -> torch.Tensor:
    """Byte ids (B, T) as the smallest wire dtype; raises ValueError for anything that is not a non-empty id batch."""
    if not isinstance(inputs, torch.Tensor) or inputs.dtype not in _ID_DTYPES or inputs.dim() != 2:
        raise ValueError(f"byte batch must be an integer (B, T) tensor, got {_describe(inputs)}")
    if inputs.numel() == 0:
        raise ValueError(f"byte batch {tuple(inputs.shape)} is empty")
    inputs = inputs.detach().cpu()
    if bool(((inputs < 0) | (inputs >= VOCAB_SIZE)).any()):
        raise ValueError(f"token batch holds ids outside 0..{VOCAB_SIZE - 1}")
    # 8x less upload than int64; a batch with special ids (EOS between documents) needs int32
    return inputs.to(torch.uint8 if bool((inputs < 256).all()) else torch.int32)


def _activation_batch(inputs: torch.Tensor) -> torch.Tensor:
    """Finite float activations (..., d) as float16 or float32; raises ValueError otherwise."""
    if not isinstance(inputs, torch.Tensor) or not inputs.dtype.is_floating_point or inputs.dim() < 2:
        raise ValueError(f"activations must be a float (..., d) tensor, got {_describe(inputs)}")
    if inputs.numel() == 0:
        raise ValueError(f"activations {tuple(inputs.shape)} are empty")
    inputs = inputs.detach().cpu()
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("activations contain NaN or infinity")
    return inputs if inputs.dtype == torch.float16 else inputs.float()


_ID_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


class SyncExpertClient:
    """Blocking facade over `ExpertClient` for synchronous torch loops; runs P2P on a private event-loop thread.

    With a `dht`, it shares that DHT's P2P daemon; otherwise it starts its own, bootstrapped from `initial_peers`.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        dht: DHT | None = None,
        initial_peers: Sequence[str] = (),
        on_fault: Callable[[FaultReport], None] | None = None,
        uid: str | None = None,
        start_timeout: float = 60.0,
    ):
        self._loop = LoopThread(name="expert-client")
        try:

            async def _make() -> ExpertClient:
                if dht is not None:
                    p2p = await replicate_p2p(dht)
                else:
                    p2p = await P2P.create(initial_peers=list(initial_peers), host_maddrs=["/ip4/127.0.0.1/tcp/0"])
                return ExpertClient(p2p, config, on_fault, uid)

            self.client = self._loop.run(_make(), start_timeout)
        except BaseException:
            self._loop.stop()
            raise

    @property
    def faults(self) -> list[FaultReport]:
        return self.client.faults

    @property
    def health(self) -> PeerHealth:
        return self.client.health

    @property
    def peer_id(self) -> PeerID:
        return self.client.p2p.peer_id

    def call(self, peer_id: PeerID, inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        """Blocking `ExpertClient.call` (same arguments and errors)."""
        # not LoopThread.run: it reports any TimeoutError (ExpertBusy included) as its own wait running out
        return self._loop.submit(self.client.call(peer_id, inputs, **kwargs)).result()

    def run(self, coro):
        """Run a coroutine of this client (e.g. a moe.net.session_client call) on its loop and wait for it; its own
        exceptions come through unchanged."""
        return self._loop.submit(coro).result()

    def call_many(self, peer_ids: Sequence[PeerID], inputs, **kwargs) -> dict[PeerID, torch.Tensor]:
        """Blocking `ExpertClient.call_many` (same arguments)."""
        return self._loop.run(self.client.call_many(peer_ids, inputs, **kwargs))

    def close_accounts(self, **kwargs) -> int:
        """`ExpertClient.close_accounts`, blocking."""
        return self._loop.submit(self.client.close_accounts(**kwargs)).result()

    def replay(self, peer_id: PeerID, raw: bytes, **kwargs) -> tuple[bytes, Receipt | None]:
        """Blocking `ExpertClient.replay` (same arguments and errors)."""
        return self._loop.submit(self.client.replay(peer_id, raw, **kwargs)).result()

    def info(self, peer_id: PeerID, **kwargs) -> dict:
        return self._loop.run(self.client.info(peer_id, **kwargs))

    def prove_identities(self, peer_ids: Sequence[PeerID], **kwargs) -> dict[str, set[str]]:
        """Blocking `ExpertClient.prove_identities`."""
        return self._loop.run(self.client.prove_identities(peer_ids, **kwargs))

    def shutdown(self) -> None:
        """Close the P2P connection (and its daemon if this client started it) and stop the loop; idempotent."""
        if self.client is not None and self.client.p2p is not None:
            p2p = self.client.p2p
            try:
                self._loop.run(self.client.aclose(), timeout=10)
                self._loop.run(p2p.shutdown(), timeout=10)  # a replica only closes its connection
            except Exception as e:
                logger.debug("client shutdown: %r", e)
            self.client.p2p = None
        self._loop.stop()

    def __enter__(self) -> SyncExpertClient:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


__all__ = [
    "ClientConfig",
    "ExpertBusy",
    "ExpertClient",
    "FaultReport",
    "P2PDaemonError",
    "P2PHandlerError",
    "PeerHealth",
    "PeerUnavailable",
    "Request",
    "SyncExpertClient",
]
