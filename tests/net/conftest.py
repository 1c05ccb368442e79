"""Fixtures of the network tests: real hivemind DHT peers on loopback, always shut down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import hivemind
import pytest

from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs


@contextmanager
def joined_pair() -> Iterator[tuple[hivemind.DHT, hivemind.DHT]]:
    """A bootstrap peer and a second peer joined through it."""
    a = start_bootstrap_dht()
    try:
        b = start_dht(visible_maddrs(a))
        try:
            yield a, b
        finally:
            b.shutdown()
    finally:
        a.shutdown()


@pytest.fixture(scope="module")
def module_pair():
    """Two joined DHT peers shared by a module's tests (each test uses its own keys, so records do not collide)."""
    with joined_pair() as pair:
        yield pair


@pytest.fixture
def fresh_pair():
    """Two joined DHT peers for one test (for tests of global keys, such as the seed's)."""
    with joined_pair() as pair:
        yield pair
