"""Ledger speed: blocks appended per second with realistic records, and verify speed in blocks per second.

    PYTHONPATH=. python3 benchmarks/ledger.py                  # 100000 blocks (about a minute on 2 cores)
    PYTHONPATH=. python3 benchmarks/ledger.py --blocks 5000    # quicker

Each block carries transfers; every epoch (tempo 100) the 8 validators submit weights over 64 uids, and a few
registrations arrive early. Append time includes the clients signing their records. Verify checks signatures in
one worker process per core; reopening replays the file without signature checks. The baseline is a bare SQLite
insert of the same block bytes (no validation, no state) measured in the same run: ratio = ledger blocks/s / bare
inserts/s. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from moe.identity import Hotkey
from moe.ledger import GenesisConfig, Ledger, LedgerConfig, verify_ledger


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--synchronous", default="NORMAL", help="SQLite synchronous mode (FULL fsyncs every block)")
    args = ap.parse_args()
    keys = [Hotkey.from_seed(i.to_bytes(32, "little")) for i in range(1, 73)]
    vals, miners = keys[:8], keys[8:]
    cfg = LedgerConfig(tempo=100, max_uids=72, initial_difficulty=2, immunity_period=10**6)
    g = GenesisConfig(ledger=cfg, balances={k.address: 10**14 for k in keys})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.db"
        led = Ledger.open(path, g, synchronous=args.synchronous)
        for k in keys:
            led.register(k, 1)
        led.produce_block(1.0)
        for v in vals:
            led.add_stake(v, 10**13)
        led.produce_block(2.0)
        uids = [led.uid(1, m.address) for m in miners[:64]]
        n_records = 0
        t0 = time.perf_counter()
        for h in tqdm(range(3, args.blocks), desc="append", mininterval=2):
            if h % cfg.tempo == 3:
                for i, v in enumerate(vals):
                    n_records += led.set_weights(v, 1, uids, [((u * 7 + i + h) % 64) + 1.0 for u in range(64)])
            for j in range(2):
                a = miners[(h + j) % 64]
                n_records += led.transfer(a, miners[(h + j + 1) % 64].address, 1000)
            led.produce_block(float(h))
        append_s = time.perf_counter() - t0
        led.close()
        appended = args.blocks - 3
        blobs = [r[0] for r in sqlite3.connect(path).execute("SELECT records FROM blocks ORDER BY height")]
        bare = sqlite3.connect(Path(d) / "bare.db", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute(f"PRAGMA synchronous={args.synchronous}")
        bare.execute("CREATE TABLE b (height INTEGER PRIMARY KEY, records TEXT)")
        t0 = time.perf_counter()
        for h, blob in enumerate(blobs):
            bare.execute("BEGIN")
            bare.execute("INSERT INTO b VALUES (?, ?)", (h, blob))
            bare.execute("COMMIT")
        bare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = verify_ledger(path)
        verify_s = time.perf_counter() - t0
        assert report.ok, str(report)
        t0 = time.perf_counter()
        Ledger.open(path).close()
        reopen_s = time.perf_counter() - t0
    out = {
        "blocks": args.blocks,
        "records": n_records,
        "synchronous": args.synchronous,
        "append_blocks_per_s": round(appended / append_s, 1),
        "verify_blocks_per_s": round(report.blocks / verify_s, 1),
        "reopen_s": round(reopen_s, 2),
        "baseline": "bare sqlite insert of the same block bytes, one transaction each",
        "bare_insert_blocks_per_s": round(len(blobs) / bare_s, 1),
        "ratio": round((appended / append_s) / (len(blobs) / bare_s), 4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
