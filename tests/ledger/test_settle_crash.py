"""Killing the ledger (kill -9) while it settles tickets loses no settled payment and pays none twice."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.records import escrow_record, settle_record
from moe.ledger.ticket import chain_digest, sign_ticket
from moe.ledger.verify import verify_ledger

TAO = 10**9
DEPOSIT = 100 * TAO
STEP = TAO // 10
"""Each ticket acknowledges this much more than the one before."""
CONSUMER, EXPERT = Hotkey.from_seed(b"c" * 32), Hotkey.from_seed(b"e" * 32)

SETTLER = f"""
import sys
from moe.identity import Hotkey
from moe.ledger.chain import Ledger
from moe.ledger.records import settle_record
from moe.ledger.ticket import chain_digest, sign_ticket
consumer, expert = Hotkey.from_seed(b"c" * 32), Hotkey.from_seed(b"e" * 32)
with Ledger.open(sys.argv[1]) as led:
    chain = chain_digest(led.state.chain_id)
    counter = led.state.settled.get((consumer.address, expert.address), (0, 0, 0))[0]
    while True:
        counter += 1
        t = sign_ticket(consumer, chain, expert.address, counter, 5, counter, counter * {STEP})
        assert led.submit(settle_record(expert, [(t.to_bytes(), counter, counter * {STEP})]))
        led.produce_block()
        print(counter, flush=True)
"""


def test_kill_9_during_settlement_loses_nothing_and_pays_nothing_twice(tmp_path, genesis):
    """20 times: a settling ledger process is killed at a random moment; the file then verifies (reconciliation
    included), the expert holds exactly the latest settled claim, escrow + paid = deposit, the last settled ticket
    replayed is refused and the next one pays only its increase."""
    path = tmp_path / "ledger.sqlite"
    genesis.balances[CONSUMER.address] = DEPOSIT
    with Ledger.open(path, genesis) as led:
        assert led.submit(escrow_record(CONSUMER, DEPOSIT, 0))
        led.produce_block()
    rng = random.Random(0)
    pair = (CONSUMER.address, EXPERT.address)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", SETTLER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # it has settled at least one ticket
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        report = verify_ledger(path, workers=0)
        assert report.ok, report
        st = report.state
        counter, _, amount = st.settled[pair]
        assert amount == counter * STEP and st.paid[EXPERT.address] == amount
        assert st.escrow[CONSUMER.address] + st.paid[EXPERT.address] == DEPOSIT
    with Ledger.open(path) as led:
        chain = chain_digest(led.state.chain_id)
        counter, _, paid = led.state.settled[pair]
        again = sign_ticket(CONSUMER, chain, EXPERT.address, counter, 5, counter, paid)
        assert not led.submit(settle_record(EXPERT, [(again.to_bytes(), counter, paid)]))
        nxt = sign_ticket(CONSUMER, chain, EXPERT.address, counter + 1, 5, counter + 1, paid + STEP)
        assert led.submit(settle_record(EXPERT, [(nxt.to_bytes(), counter + 1, paid + STEP)]))
        led.produce_block()
        assert led.state.paid[EXPERT.address] == paid + STEP
