"""Shared fixtures for ledger tests: deterministic keys and a tiny, fast chain configuration."""

from __future__ import annotations

import pytest

from moe.identity import Hotkey
from moe.ledger.genesis import GenesisConfig, LedgerConfig

TAO = 10**9


@pytest.fixture
def keys() -> list[Hotkey]:
    return [Hotkey.from_seed(bytes([i + 1]) * 32) for i in range(8)]


@pytest.fixture
def genesis(keys) -> GenesisConfig:
    cfg = LedgerConfig(tempo=4, max_uids=8, immunity_period=3, initial_difficulty=4, subnet_shares={1: 3.0, 2: 1.0})
    return GenesisConfig(ledger=cfg, balances={k.address: 1000 * TAO for k in keys}, timestamp=1000.0)
