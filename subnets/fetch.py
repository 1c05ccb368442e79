"""Fetch every default subnet's corpus into the local cache (once; later runs only verify it).

    python -m subnets.fetch                 # full corpora into $HIVEMOE_DATA or ~/.cache/hivemoe/data
    python -m subnets.fetch --slice         # ~200 KB a subnet, for tests and quick runs
    python -m subnets.fetch --cache DIR english code

Prints one line a subnet: documents, bytes and sha256 of the train file, or why it was skipped. A source that cannot
be reached here (no apt, no network) is skipped with a warning; a checksum mismatch fails the run (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from moe.corpus import SLICE_BYTES, CorpusError, SourceUnavailable, default_cache_dir, fetch_subnet, read_manifest
from subnets import all_subnets

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="subnets to fetch (default: all)")
    p.add_argument("--cache", default=None, help="cache folder (default: $HIVEMOE_DATA or ~/.cache/hivemoe/data)")
    p.add_argument("--slice", action="store_true", help=f"fetch a ~{SLICE_BYTES // 1000} KB slice of each subnet")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    subnets = all_subnets()
    unknown = [n for n in args.names if n not in subnets]
    if unknown:
        print(f"error: unknown subnet(s) {', '.join(unknown)}; known: {', '.join(subnets)}", file=sys.stderr)
        return 2
    cache = args.cache or default_cache_dir()
    failed = False
    for name, subnet in subnets.items():
        if args.names and name not in args.names:
            continue
        t0 = time.perf_counter()
        try:
            out = fetch_subnet(subnet, cache, max_bytes=SLICE_BYTES if args.slice else None, force=args.force)
        except SourceUnavailable as e:
            print(f"{name:>8}: skipped: {e}")
            continue
        except CorpusError as e:
            print(f"{name:>8}: FAILED: {e}")
            failed = True
            continue
        m = read_manifest(out)
        s = m["splits"]
        shifted = s["shifted"]["bytes"] if "shifted" in s else "none"
        print(
            f"{name:>8}: {m['documents']} docs, {m['bytes']} bytes (train {s['train']['bytes']}, "
            f"val {s['val']['bytes']}, route {s['route']['bytes']}, shifted {shifted}), "
            f"train sha256 {s['train']['sha256'][:16]}, {time.perf_counter() - t0:.1f}s -> {out}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
