"""Tests that the README's set-up-and-run commands and CI agree: CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def command_lines(script: str) -> list[str]:
    """Non-empty, non-comment lines of a shell script."""
    return [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_starts_with_two_bash_commands():
    """The README's first two code blocks are bash blocks of exactly one command each: set up + run, then test."""
    blocks = fenced_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    for lang, body in blocks[:2]:
        assert lang == "bash"
        assert len(command_lines(body)) == 1, body
    first = command_lines(blocks[0][1])[0]
    assert "pip install" in first and "train.py" in first
    assert "pytest" in command_lines(blocks[1][1])[0]


def test_ci_runs_the_readme_test_command():
    """The last command line of .ci/run is the README's second fenced command, verbatim."""
    readme_test = command_lines(fenced_blocks((ROOT / "README.md").read_text())[1][1])[0]
    ci = command_lines((ROOT / ".ci" / "run").read_text())
    assert ci[-1] == readme_test
