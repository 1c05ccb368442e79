"""The console the commands print tables on: the terminal's width, or a wide page when output goes to a file or a
pipe (rich would otherwise squeeze every table into 80 columns)."""

from __future__ import annotations

import sys

PIPED_WIDTH = 160
"""Columns of a table written to a file or pipe."""


def table_console():
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
