"""Fixtures shared across test packages."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dht_pair():
    """A real bootstrap DHT peer and a second one joined through it, on loopback, shared by a module's tests."""
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
