"""Fixtures shared across test packages: real hivemind DHT peers on loopback, always shut down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def _joined_pair() -> Iterator[tuple]:
    """A bootstrap peer and a second peer joined through it."""
    from moe.net.join import start_bootstrap_dht, start_dht, visible_maddrs

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
def dht_pair():
    """Two joined DHT peers shared by a module's tests (each test uses its own keys, so records do not collide)."""
    with _joined_pair() as pair:
        yield pair


@pytest.fixture
def fresh_dht_pair():
    """Two joined DHT peers for one test (for tests of global keys, such as the seed's)."""
    with _joined_pair() as pair:
        yield pair
