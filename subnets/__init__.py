"""Subnets: one module a data domain, each defining `SUBNET = Subnet(...)`; adding a domain is adding a file here."""

from __future__ import annotations

import importlib
import logging
import pkgutil

from moe.corpus import Subnet

logger = logging.getLogger(__name__)


def all_subnets() -> dict[str, Subnet]:
    """Every subnet declared in this package, by name, ordered by netuid; duplicate names or netuids are an error."""
    found: dict[str, Subnet] = {}
    netuids: dict[int, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        subnet = getattr(module, "SUBNET", None)
        if subnet is None:
            continue  # helpers such as subnets.fetch
        if not isinstance(subnet, Subnet):
            raise TypeError(f"{module.__name__}.SUBNET is a {type(subnet).__name__}, not a moe.corpus.Subnet")
        if subnet.name in found:
            raise ValueError(f"subnet name {subnet.name!r} is declared twice ({module.__name__})")
        if subnet.netuid in netuids:
            raise ValueError(f"netuid {subnet.netuid} is used by both {netuids[subnet.netuid]!r} and {subnet.name!r}")
        found[subnet.name] = subnet
        netuids[subnet.netuid] = subnet.name
    return dict(sorted(found.items(), key=lambda kv: kv[1].netuid))


def get_subnet(name: str) -> Subnet:
    """The subnet called `name`; `KeyError` listing the known names otherwise."""
    subnets = all_subnets()
    if name not in subnets:
        raise KeyError(f"unknown subnet {name!r}; known subnets: {', '.join(subnets)}")
    return subnets[name]
