"""`Sessions` (moe.routing.generation) over remote experts' inference sessions, plus the local generalist.

Each chosen expert gets a KV-cached session (moe.net.session_client) opened with the routing window; every step sends
the sampled byte to all of them in one parallel round. An expert whose open or step fails, or whose reply lacks a
receipt signed by its own hotkey, is left out of the rest of the route (the mixture renormalises over the others).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from hivemind.p2p import PeerID

from moe.net.client import SyncExpertClient
from moe.net.session_client import RemoteSession, SessionClient
from moe.routing.generation import GENERALIST, LocalSessions

logger = logging.getLogger(__name__)


class RemoteSessions:
    """Sessions on the experts `peer_of` names (hotkey → base58 peer id) and on a local `generalist`, if any."""

    def __init__(
        self,
        client: SyncExpertClient,
        peer_of: Callable[[], dict[str, str]],
        generalist: torch.nn.Module | None = None,
        on_unreceipted: Callable[[str], None] | None = None,
        max_context: int = 0,
    ):
        self.client, self.peer_of, self.on_unreceipted = client, peer_of, on_unreceipted
        self.sessions_client = SessionClient(client.client)
        self.max_context = max_context
        self.local = LocalSessions({GENERALIST: generalist} if generalist is not None else {})
        self._open: dict[str, RemoteSession] = {}

    def open(self, keys: list[str], window: torch.Tensor) -> dict[str, torch.Tensor]:
        self.close()
        peers = self.peer_of()
        remote = {k: PeerID.from_base58(peers[k]) for k in keys if k in peers}
        opened = self.client.run(self.sessions_client.open_many(remote, window, self.max_context))
        out = {}
        for k, (session, logp) in opened.items():
            self._open[k] = session
            if self._receipted(k, session):
                out[k] = logp
            else:
                self._drop(k)
        out.update(self.local.open([k for k in keys if k == GENERALIST], window))
        return out

    def step(self, byte: int) -> dict[str, torch.Tensor]:
        replies = self.client.run(self.sessions_client.step_many(self._open, torch.tensor([byte])))
        out = {k: r[-1] for k, r in replies.items() if self._receipted(k, self._open[k])}
        for k in [k for k in self._open if k not in out]:
            self._drop(k)
        out.update(self.local.step(byte))
        return out

    def close(self) -> None:
        if self._open:
            self.client.run(self.sessions_client.close_many(self._open))
        self._open.clear()
        self.local.close()

    def _receipted(self, hotkey: str, session: RemoteSession) -> bool:
        receipt = session.receipts[-1]
        if receipt is not None and receipt.address == hotkey:
            return True
        logger.warning("expert %s answered a session without its receipt; leaving it out", hotkey[:16])
        if self.on_unreceipted is not None:
            self.on_unreceipted(hotkey)
        return False

    def _drop(self, hotkey: str) -> None:
        session = self._open.pop(hotkey)
        self.client.run(self.sessions_client.close(session, timeout=1.0))


__all__ = ["RemoteSessions"]
