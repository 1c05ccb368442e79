"""`hivemoe fetch [--slice] [--only NAME ...]`: the subnet plugin package's own fetch of its pinned corpora."""

from __future__ import annotations

import importlib

from moe.cli.subnet_plugin import subnets_package


def main(argv: list[str]) -> int:
    return importlib.import_module(f"{subnets_package().__name__}.fetch").main(argv)
