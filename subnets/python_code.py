"""Code: the running interpreter's standard-library Python sources (no download; its version is in the manifest)."""

from __future__ import annotations

from moe.corpus import StdlibSource, Subnet

SUBNET = Subnet(
    name="code",
    netuid=2,
    description="CPython standard-library modules (*.py, tests and site-packages excluded)",
    source=StdlibSource(),
    max_bytes=4_000_000,
)
