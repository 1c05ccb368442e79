"""Which package declares the subnets: `subnets` by default, `$HIVEMOE_SUBNETS` for another (a plugin).

Looked up by name at run time, so the library never depends on which domains exist.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def subnets_package() -> ModuleType:
    return importlib.import_module(os.environ.get("HIVEMOE_SUBNETS", "subnets"))


def declared_subnets() -> dict:
    """{name: Subnet} of the plugin package."""
    return subnets_package().all_subnets()
