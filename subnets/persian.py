"""Persian: the Divan of Hafez (495 ghazals with modern Persian readings) inside the MIT-licensed `hafez` wheel.

Shifted set: the Persian (fa_IR) providers of `faker`: everyday modern Persian (companies, addresses, names, common
words) in another register than classical verse, with the ASCII markup of the Python source it sits in.
"""

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
    shifted=WheelSource(
        package="faker",
        version="40.63.0",
        filename="faker-40.63.0-py3-none-any.whl",
        sha256="36627c20b575b4138f54b6c21f8703e9ab122fd487aca11319beec2aa6ca7232",
        members="faker/providers/*/fa_IR/__init__.py",
        license="MIT",
    ),
)
