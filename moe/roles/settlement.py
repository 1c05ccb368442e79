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
from moe.ledger.records import escrow_record, settle_record
from moe.net.ledger_client import LedgerHead, read_head, submit_records
from moe.net.ticket_desk import TicketDesk

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5
"""Least time between two head reads a call for an unknown consumer may trigger."""
CLAIMS_PER_RECORD = 32
"""Claims per settle record (a record must fit one DHT value with room to spare: ~500 bytes a claim)."""


class EscrowView:
    """What a priced expert reads from the ledger head: the consumers' coverable escrows and the validators' stakes,
    re-read at most every REFRESH_SECONDS when asked about a hotkey the last read did not know."""

    def __init__(self, dht, host: str):
        self.dht, self.host = dht, host
        self.escrow: dict[str, int] = {}
        self.stakes: dict[str, int] = {}
        self._refreshed = 0.0

    def coverable(self, consumer: str) -> int:
        """The consumer's escrow as the head shows it (it may have funded its escrow since the last read)."""
        if consumer not in self.escrow:
            self._refresh_if_stale()
        return self.escrow.get(consumer, 0)

    def is_validator(self, hotkey: str) -> bool:
        """Whether the hotkey has stake on the ledger (a validator's free pass is honoured)."""
        if hotkey not in self.stakes:
            self._refresh_if_stale()
        return self.stakes.get(hotkey, 0) > 0

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._refreshed > REFRESH_SECONDS:
            self.refresh()

    def refresh(self) -> None:
        """Read the consumers' escrows and the stakes from the latest head (kept as they were when none is found)."""
        self._refreshed = time.monotonic()
        head = read_head(self.dht, self.host)
        if head is not None:
            self.escrow, self.stakes = dict(head.escrow), dict(head.stakes)


class Settler:
    """Keeps a ticket desk's view of escrows fresh and settles its claims on the ledger; `stop()` settles once more."""

    def __init__(self, dht, hotkey: Hotkey, desk: TicketDesk, view: EscrowView, interval: float):
        self.dht, self.hotkey, self.desk, self.view, self.interval = dht, hotkey, desk, view, interval
        self.posted = 0
        """Settle records posted so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="settler", daemon=True)

    def start(self) -> Settler:
        self.view.refresh()
        self._thread.start()
        return self

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
                self.view.refresh()
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


def await_head(dht, host: str, timeout: float, why: str) -> LedgerHead:
    """The ledger head of `host` (which names the chain tickets are signed for); TimeoutError saying `why` it was
    needed when none arrives within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (head := read_head(dht, host)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ledger head from {host[:16]} within {timeout:.0f}s: {why}")
        time.sleep(0.2)
    return head


def start_paid_serving(
    dht, server, hotkey: Hotkey, host: str, price_tao_per_mbyte: float, interval: float, timeout: float
) -> Settler:
    """Make `server` charge `price_tao_per_mbyte` and settle every `interval` seconds on the ledger hosted by `host`.
    Raises TimeoutError when no ledger head (which names the chain) arrives within `timeout` seconds."""
    head = await_head(dht, host, timeout, "cannot take payments")
    price = round(price_tao_per_mbyte * RAO_PER_TAO)
    view = EscrowView(dht, host)
    desk = TicketDesk(hotkey.address, bytes.fromhex(head.chain), price, view.coverable, is_validator=view.is_validator)
    server.ticket_desk = desk
    return Settler(dht, hotkey, desk, view, interval).start()


def fund_escrow(dht, hotkey: Hotkey, host: str, amount_tao: float, timeout: float) -> LedgerHead:
    """Deposit `amount_tao` of the consumer's balance in escrow (once: a consumer whose escrow already holds it, as
    after a restart, deposits nothing) and wait until the head shows it; returns that head. Raises TimeoutError
    (one line) when the deposit does not show within `timeout` seconds (e.g. the balance cannot cover it)."""
    amount = round(amount_tao * RAO_PER_TAO)
    deadline = time.monotonic() + timeout
    posted = False
    while True:
        head = read_head(dht, host)
        if head is not None and head.escrow.get(hotkey.address, 0) >= amount:
            return head
        if head is not None and not posted:
            submit_records(dht, hotkey, [escrow_record(hotkey, amount, 0)])  # a fresh consumer key: nonce 0
            posted = True
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"escrow of {amount_tao} TAO for {hotkey.address[:16]} not on the ledger after {timeout:.0f}s"
            )
        time.sleep(0.2)


def pay_as_consumer(mixture, hotkey: Hotkey, host: str, escrow_tao: float, timeout: float) -> None:
    """Fund the node's escrow with `escrow_tao` and make `mixture` pay priced experts from it (moe.net.payer)."""
    from moe.net.payer import Payer

    head = fund_escrow(mixture.dht, hotkey, host, escrow_tao, timeout)
    mixture.pay_with(Payer(hotkey, bytes.fromhex(head.chain)))


def pass_as_validator(mixture, hotkey: Hotkey, host: str, timeout: float) -> None:
    """Make a staked validator's `mixture` sign a price-0 ticket for every call, which priced experts serve free."""
    from moe.net.payer import Payer

    head = await_head(mixture.dht, host, timeout, "cannot sign a validator's pass")
    mixture.pay_with(Payer(hotkey, bytes.fromhex(head.chain), free=True))
