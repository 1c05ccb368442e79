"""Ledger speed: blocks appended per second with realistic per-subnet records, and verify speed in blocks per second.

    PYTHONPATH=. python3 benchmarks/ledger.py                      # 100000 blocks (a few minutes on 2 cores)
    PYTHONPATH=. python3 benchmarks/ledger.py --blocks 20000       # quicker
    PYTHONPATH=. python3 benchmarks/ledger.py --transfers 2        # the old benchmark's two transfers every block

The chain has `--subnets` subnets (4) of 32 uids each. The 8 validators register and stake on every subnet and,
every epoch (tempo 100), submit weights over that subnet's uids on each subnet; 64 miners are spread evenly across
the subnets; a latecomer registers on one subnet every 1000 blocks (pruning once the subnet is full); transfers
between miners arrive at `--transfers` per block on average (0.25: one every fourth block). Every signed record
costs about 30 us to sign and 60 us to verify on this machine's cores, so the signed-record density bounds both
rates: `signed_records_per_block` is in the output. Append time includes the clients signing their records, as
before. Verify checks signatures in a worker process per core but the replay's (the replay checks the chunks it
reaches before a worker does); reopening replays the file without signature checks. The baseline is a bare SQLite
insert of the same block bytes (no validation, no state, the ledger's SQLite settings) measured in the same run:
ratio = ledger blocks/s / bare inserts/s. CPU microseconds per block (verify's
with its workers') are reported too, as wall rates swing with other load on a shared machine. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

import tqdm

from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, LedgerConfig, verify_ledger
from moe.ledger.chain import WAL_CHECKPOINT_PAGES

TEMPO = 100
FREE_UIDS = 8
"""Uids per subnet left for latecomers at the start (4 subnets: 8 validators + 16 miners + 8 = 32 uids)."""
N_VALIDATORS = 8
N_MINERS = 64
N_LATECOMERS = 32
REGISTRATION_EVERY = 1000
"""Blocks between two latecomer registrations."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--subnets", type=int, default=4)
    ap.add_argument("--transfers", type=float, default=0.25, help="transfers per block on average")
    ap.add_argument("--synchronous", default="NORMAL", help="SQLite synchronous mode (FULL fsyncs every block)")
    args = ap.parse_args()
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: verify forks its workers only in a single-threaded process
    keys = [Hotkey.from_seed(i.to_bytes(32, "little")) for i in range(1, 1 + N_VALIDATORS + N_MINERS + N_LATECOMERS)]
    vals, miners, late = keys[:N_VALIDATORS], keys[N_VALIDATORS : N_VALIDATORS + N_MINERS], keys[-N_LATECOMERS:]
    netuids = list(range(1, args.subnets + 1))
    cfg = LedgerConfig(
        tempo=TEMPO,
        subnet_shares={n: 1.0 for n in netuids},
        max_uids=N_VALIDATORS + N_MINERS // len(netuids) + FREE_UIDS,
        initial_difficulty=2,
        immunity_period=5 * REGISTRATION_EVERY,
    )
    g = GenesisConfig(ledger=cfg, balances={k.address: 10**14 for k in keys})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.db"
        led = Ledger.open(path, g, synchronous=args.synchronous)
        for n in netuids:
            for k in vals + miners[n - 1 :: len(netuids)]:
                assert led.register(k, n)
        led.produce_block(1.0)
        for v in vals:
            assert led.add_stake(v, 10**13)
        led.produce_block(2.0)
        n_records, owed = 0, 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for h in tqdm.tqdm(range(3, args.blocks), desc="append", mininterval=2):
            if h % TEMPO == 3:  # uids read before the first submit: a read between submits re-applies the queue
                uids_of = {n: sorted(led.state.subnets[n].registry.slots) for n in netuids}
                for n, uids in uids_of.items():
                    for i, v in enumerate(vals):
                        weights = [((u * 7 + i + h) % 64) + 1.0 for u in uids]
                        n_records += led.set_weights(v, n, uids, weights)
            if h % REGISTRATION_EVERY == REGISTRATION_EVERY // 2:
                i = h // REGISTRATION_EVERY
                k, n = late[i % N_LATECOMERS], netuids[i % len(netuids)]
                if led.uid(n, k.address) is None:
                    n_records += led.register(k, n)
            owed += args.transfers
            while owed >= 1.0:
                owed -= 1.0
                a, b = miners[h % N_MINERS], miners[(h * 5 + 1) % N_MINERS]
                n_records += led.transfer(a, b.address, 1000)
            led.produce_block(float(h))
        append_s, append_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        led.close()
        appended = args.blocks - 3
        blobs = [r[0] for r in sqlite3.connect(path).execute("SELECT records FROM blocks ORDER BY height")]
        bare = sqlite3.connect(Path(d) / "bare.db", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute(f"PRAGMA synchronous={args.synchronous}")
        bare.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")  # the ledger's SQLite settings
        bare.execute("CREATE TABLE b (height INTEGER PRIMARY KEY, records TEXT)")
        t0 = time.perf_counter()
        for h, blob in enumerate(blobs):
            bare.execute("BEGIN")
            bare.execute("INSERT INTO b VALUES (?, ?)", (h, blob))
            bare.execute("COMMIT")
        bare_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), _cpu_with_children()
        report = verify_ledger(path)
        verify_s, verify_cpu_s = time.perf_counter() - t0, _cpu_with_children() - c0
        assert report.ok, str(report)
        t0 = time.perf_counter()
        Ledger.open(path).close()
        reopen_s = time.perf_counter() - t0
    out = {
        "blocks": args.blocks,
        "subnets": args.subnets,
        "records": n_records,
        "signed_records_per_block": round(n_records / appended, 3),
        "synchronous": args.synchronous,
        "append_blocks_per_s": round(appended / append_s, 1),
        "verify_blocks_per_s": round(report.blocks / verify_s, 1),
        "append_cpu_us_per_block": round(append_cpu_s / appended * 1e6, 1),
        "verify_cpu_us_per_block": round(verify_cpu_s / report.blocks * 1e6, 1),
        "reopen_s": round(reopen_s, 2),
        "baseline": "bare sqlite insert of the same block bytes, one transaction each",
        "bare_insert_blocks_per_s": round(len(blobs) / bare_s, 1),
        "ratio": round((appended / append_s) / (len(blobs) / bare_s), 4),
    }
    print(json.dumps(out))


def _cpu_with_children() -> float:
    """CPU seconds of this process and its reaped children (verify's signature workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
