"""Code: the running interpreter's standard-library Python sources (no download; its version is in the manifest).

Shifted set: the sources of `requests` 2.32.3, a third-party library with its own authors and style.
"""

from __future__ import annotations

from moe.corpus import StdlibSource, Subnet, WheelSource

SUBNET = Subnet(
    name="code",
    netuid=2,
    description="CPython standard-library modules (*.py, tests and site-packages excluded)",
    source=StdlibSource(),
    max_bytes=4_000_000,
    shifted=WheelSource(
        package="requests",
        version="2.32.3",
        filename="requests-2.32.3-py3-none-any.whl",
        sha256="70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6",
        members="requests/*.py",
        license="Apache-2.0",
        boundary=r"(def |class |@)",
    ),
)
