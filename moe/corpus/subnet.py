"""A subnet: one data domain (a language, code, mathematics) that a group of experts specialises in.

`subnets/<name>.py` declares one of these; this file only defines the shape so `moe/` never imports `subnets/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moe.corpus.sources import Source

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Subnet:
    """A data domain with its source and how its text is cut into documents and splits."""

    name: str
    """Short lowercase id (letters, digits, underscore); names the cache folder and metric keys."""
    netuid: int
    """Numeric subnet id on the network and in the ledger; unique among subnets."""
    source: Source
    """Where the text comes from (see moe.corpus.sources)."""
    description: str = ""
    """One line for humans."""
    max_bytes: int = 4_000_000
    """Cap on the UTF-8 bytes kept; past it, a hash-chosen subset of documents spread across the source is kept."""
    eval_fraction: float = 0.05
    """Share of documents (chosen by a hash of their text) held out for evaluation; never trained on."""
    route_fraction: float = 0.05
    """Share of documents carved out of train (a second hash bucket) for fitting the gate."""
    chunk_bytes: int = 8192
    """Target document size: longer texts are cut at line boundaries into chunks of about this size (max 2x)."""
    shifted: Source | None = None
    """Real text of the same domain from another source (another author, library, database or register): the
    shifted evaluation set, which tells whether a model generalises beyond its corpus. Never trained on."""
    shifted_bytes: int = 32_768
    """UTF-8 bytes of the shifted set kept, as chunks spread over its source."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"subnet name {self.name!r} must match {_NAME.pattern}")
        if self.netuid < 0:
            raise ValueError(f"subnet {self.name}: netuid must be >= 0, got {self.netuid}")
        if not (0 < self.eval_fraction < 1 and 0 <= self.route_fraction < 1 - self.eval_fraction):
            raise ValueError(f"subnet {self.name}: need 0 < eval_fraction and eval_fraction + route_fraction < 1")
        if self.max_bytes <= 0 or self.chunk_bytes < 256 or self.shifted_bytes <= 0:
            raise ValueError(f"subnet {self.name}: max_bytes and shifted_bytes must be > 0 and chunk_bytes >= 256")
