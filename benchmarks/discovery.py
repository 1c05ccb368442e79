"""Discovery and seed distribution on loopback: what the router's hot path pays for knowing its experts.

Run:  python3 benchmarks/discovery.py [--experts 16] [--seed-mib 32]

Three DHT peers on 127.0.0.1; miners on two of them announce `--experts` signed records over two subnets; the
router peer reads them (i) with a direct `discover()` DHT lookup (the baseline) and (ii) from an `ExpertDirectory`
snapshot refreshed in the background. Then a `--seed-mib` seed checkpoint is published on one peer and fetched,
verified, on another. The last line is a JSON object; `ratio_discover_vs_directory` is how many times slower the
direct lookup is than the snapshot read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moe.identity import Hotkey  # noqa: E402
from moe.net.discovery import ExpertDirectory, announce, discover  # noqa: E402
from moe.net.expert_record import ExpertRecord  # noqa: E402
from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs  # noqa: E402
from moe.net.seed_transfer import SeedPublisher, fetch_seed  # noqa: E402

NETUIDS = [1, 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--seed-mib", type=int, default=32)
    parser.add_argument("--lookups", type=int, default=20)
    args = parser.parse_args()

    t0 = time.perf_counter()
    boot = start_bootstrap_dht()
    maddrs = visible_maddrs(boot)
    t1 = time.perf_counter()
    miner = start_dht(maddrs)
    router = start_dht(maddrs)
    join_ms = (time.perf_counter() - t1) / 2 * 1e3
    boot_ms = (t1 - t0) * 1e3
    peers = [boot, miner]
    try:
        for i in range(args.experts):
            hotkey = Hotkey.from_seed(i.to_bytes(32, "big"))
            record = ExpertRecord(
                uid=i,
                hotkey=hotkey.address,
                subnet=f"s{NETUIDS[i % 2]}",
                netuid=NETUIDS[i % 2],
                peer_id=peers[i % 2].peer_id.to_base58(),
                model=dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, vocab_size=256, params=5_000_000),
                train_step=i,
                signature_centroid=[0.01 * j for j in range(32)],
            )
            assert announce(peers[i % 2], record, hotkey, ttl=120)

        lookup_ms = []
        for _ in range(args.lookups):
            t = time.perf_counter()
            found = discover(router, NETUIDS)
            lookup_ms.append((time.perf_counter() - t) * 1e3)
        assert len(found) == args.experts, f"discovered {len(found)} of {args.experts}"

        with ExpertDirectory(router, NETUIDS, refresh_interval=1.0) as directory:
            directory.wait_for(args.experts, timeout=30)
            reads = 10_000
            t = time.perf_counter()
            for _ in range(reads):
                snapshot = directory.experts()
            read_us = (time.perf_counter() - t) / reads * 1e6
            assert len(snapshot) == args.experts

        blob = os.urandom(args.seed_mib << 20)
        with SeedPublisher(boot, Hotkey.from_seed(b"\x07" * 32), blob):
            t = time.perf_counter()
            got = fetch_seed(router, timeout=120)
            fetch_s = time.perf_counter() - t
        assert got == blob
    finally:
        for dht in (router, miner, boot):
            dht.shutdown()

    discover_ms = statistics.median(lookup_ms)
    result = dict(
        experts=args.experts,
        bootstrap_start_ms=round(boot_ms, 1),
        join_ms=round(join_ms, 1),
        discover_p50_ms=round(discover_ms, 2),
        discover_max_ms=round(max(lookup_ms), 2),
        directory_read_us=round(read_us, 2),
        ratio_discover_vs_directory=round(discover_ms * 1e3 / read_us, 1),
        seed_mib=args.seed_mib,
        seed_fetch_s=round(fetch_s, 3),
        seed_fetch_mib_per_s=round(args.seed_mib / fetch_s, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
