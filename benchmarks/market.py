"""Marketplace costs: checking a consumer's ticket on the expert's hot path, and settling tickets on the ledger.

    PYTHONPATH=. python3 benchmarks/market.py                 # default expert, 2,000 tickets, 200 settle records
    PYTHONPATH=. python3 benchmarks/market.py --tickets 500   # quicker

(i) Ticket check: what an expert does per paid call before answering: parse the 244-byte ticket and verify the
consumer's Ed25519 signature (the counter, price and escrow checks are dictionary lookups), in microseconds per
ticket. The baseline, measured in the same run, is the expert's own work on one call: a forward of the default
expert (`ModelConfig()`, ~0.84M parameters) over `--windows` windows of `--seq-len` bytes, one thread, as a
distribution request asks for. `overhead_pct` = ticket µs / call µs; target < 2%.
(ii) Settlement: `--experts` experts each settle the latest tickets of `--consumers` consumers every block (one
settle record per expert per block), for `--blocks` blocks; receipts (claims) settled per second, appended and
then verified from genesis. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, LedgerConfig, verify_ledger
from moe.ledger.records import escrow_record, settle_record
from moe.ledger.ticket import Ticket, chain_digest, sign_ticket
from moe.model.transformer import ByteLM, ModelConfig

TAO = 10**9


def ticket_check_us(n: int) -> float:
    """Microseconds to parse and verify one ticket, over `n` distinct tickets."""
    consumer, expert = Hotkey.from_seed(b"c" * 32), Hotkey.from_seed(b"e" * 32)
    chain = chain_digest("bench")
    raw = [
        sign_ticket(consumer, chain, expert.address, i, 5000, i * 128, i * 128 * 5000 // 10**6).to_bytes()
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for r in raw:
        assert Ticket.from_bytes(r).verify()
    return (time.perf_counter() - t0) / n * 1e6


def call_us(windows: int, seq_len: int, reps: int) -> float:
    """Median microseconds of the default expert's forward on one distribution request, one thread."""
    torch.set_num_threads(1)
    model = ByteLM(ModelConfig()).eval()
    x = torch.randint(0, 256, (windows, seq_len))
    times = []
    with torch.inference_mode():
        for i in range(reps + 3):
            t0 = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e6


def settlement(experts: int, consumers: int, blocks: int) -> dict:
    """Claims settled per second on append and on verify."""
    ex = [Hotkey.from_seed(b"e" + i.to_bytes(31, "little")) for i in range(experts)]
    co = [Hotkey.from_seed(b"c" + i.to_bytes(31, "little")) for i in range(consumers)]
    cfg = LedgerConfig(tempo=100, subnet_shares={1: 1.0})
    g = GenesisConfig(ledger=cfg, balances={k.address: 10**6 * TAO for k in ex + co})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "market.db"
        led = Ledger.open(path, g)
        for c in co:
            assert led.submit(escrow_record(c, 10**5 * TAO, 0))
        led.produce_block(1.0)
        chain = chain_digest(led.state.chain_id)
        # consumers sign their tickets as they make calls, off the ledger's path: sign ahead, time only settling
        signed = [
            [[sign_ticket(c, chain, e.address, h, 5000, h * 1000, h * 5000).to_bytes() for c in co] for e in ex]
            for h in range(1, blocks + 1)
        ]
        t0 = time.perf_counter()
        for h in range(1, blocks + 1):
            for e, tickets in zip(ex, signed[h - 1], strict=True):
                assert led.submit(settle_record(e, [(t, h * 1000, h * 5000) for t in tickets]))
            led.produce_block(1.0 + h)
        append_s = time.perf_counter() - t0
        led.close()
        t0 = time.perf_counter()
        report = verify_ledger(path, workers=0)
        verify_s = time.perf_counter() - t0
        assert report.ok, str(report)
        claims = experts * consumers * blocks
        assert report.payments == experts * consumers * blocks * 5000
    return {
        "claims": claims,
        "append_claims_per_s": round(claims / append_s, 1),
        "verify_claims_per_s": round(claims / verify_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=2000)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=50)
    args = ap.parse_args()
    check = ticket_check_us(args.tickets)
    call = call_us(args.windows, args.seq_len, args.reps)
    out = {
        "ticket_check_us": round(check, 1),
        "tickets_per_s": round(1e6 / check, 1),
        "baseline": f"default expert forward on {args.windows}x{args.seq_len} bytes, one thread",
        "call_us": round(call, 1),
        "overhead_pct": round(100 * check / call, 3),
        "ratio": round(check / call, 5),
        **settlement(args.experts, args.consumers, args.blocks),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
