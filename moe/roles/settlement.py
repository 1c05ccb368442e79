"""A priced expert's settlement: its server checks tickets against the ledger head, and it claims what it earned.

`start_paid_serving` attaches a ticket desk (moe.net.ticket_desk) to the expert's server, priced from the node's
config and bound to the ledger's chain, and starts a `Settler`: a thread that, every `interval` seconds, refreshes
the consumers' escrows from the ledger head (what the desk checks calls against) and posts the desk's new claims to
the ledger host's inbox as signed settle records. Claims are running totals, so a settle record that is lost or
refused is simply claimed again, in full, by the next one; the ledger pays each ticket once.
"""

from __future__ import annotations

import logging
import threading
import time

from moe.identity import Hotkey
from moe.ledger.emission import RAO_PER_TAO
from moe.ledger.records import settle_record
from moe.net.ledger_client import read_head, submit_records
from moe.net.ticket_desk import TicketDesk

logger = logging.getLogger(__name__)

CLAIMS_PER_RECORD = 32
"""Claims per settle record (a record must fit one DHT value with room to spare: ~500 bytes a claim)."""


class Settler:
    """Keeps a ticket desk's view of escrows fresh and settles its claims on the ledger; `stop()` settles once more."""

    def __init__(self, dht, hotkey: Hotkey, host: str, desk: TicketDesk, interval: float):
        self.dht, self.hotkey, self.host, self.desk, self.interval = dht, hotkey, host, desk, interval
        self.escrow: dict[str, int] = {}
        self.posted = 0
        """Settle records posted so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="settler", daemon=True)

    def start(self) -> Settler:
        self.refresh()
        self._thread.start()
        return self

    def coverable(self, consumer: str) -> int:
        return self.escrow.get(consumer, 0)

    def refresh(self) -> None:
        """Read the consumers' escrows from the latest head (kept as they were when no head is found)."""
        head = read_head(self.dht, self.host)
        if head is not None:
            self.escrow = dict(head.escrow)

    def settle(self) -> int:
        """Post the desk's new claims; returns how many settle records went out."""
        claims = self.desk.claims()
        records = [
            settle_record(self.hotkey, claims[i : i + CLAIMS_PER_RECORD])
            for i in range(0, len(claims), CLAIMS_PER_RECORD)
        ]
        if records:
            submit_records(self.dht, self.hotkey, records)
            self.posted += len(records)
            logger.info("settling %d claims worth %d rao", len(claims), sum(a for _, _, a in claims))
        return len(records)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                self.settle()
            except Exception:  # a DHT hiccup costs one round, never the expert
                logger.exception("settlement round failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.settle()
        except Exception:
            logger.exception("final settlement failed")


def start_paid_serving(
    dht, server, hotkey: Hotkey, host: str, price_tao_per_mbyte: float, interval: float, timeout: float
) -> Settler:
    """Make `server` charge `price_tao_per_mbyte` and settle every `interval` seconds on the ledger hosted by `host`.
    Raises TimeoutError when no ledger head (which names the chain) arrives within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (head := read_head(dht, host)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ledger head from {host[:16]} within {timeout:.0f}s: cannot take payments")
        time.sleep(0.2)
    price = round(price_tao_per_mbyte * RAO_PER_TAO)
    settler = Settler(dht, hotkey, host, None, interval)  # the desk reads escrows through the settler
    settler.desk = TicketDesk(hotkey.address, bytes.fromhex(head.chain), price, settler.coverable)
    server.ticket_desk = settler.desk
    return settler.start()
