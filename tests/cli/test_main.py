"""Tests for moe/cli/main.py: the `hivemoe` dispatcher, its usage errors, and the subnet plugin package."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from moe.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
USAGE = "usage: hivemoe [--debug] {train,fetch,status,eval,generate,report,export,ledger} ..."
FIRST_LINE = "The `hivemoe` command line: a subcommand for each thing a user does with a network or a run."


def test_no_command_prints_usage_and_returns_2(capsys):
    """Without a command, hivemoe prints its usage to stderr and returns 2."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [FIRST_LINE, USAGE]


@pytest.mark.parametrize(
    "argv, name", [(["bogus"], "bogus"), (["Ledger", "verify", "x.db"], "Ledger"), (["--debug", "nope"], "nope")]
)
def test_unknown_command_is_named_and_returns_2(argv, name, capsys):
    """A command hivemoe does not know is named in one error line after the usage, and returns 2."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [FIRST_LINE, USAGE, f"error: unknown command {name!r}"]


def test_help_lists_every_command_and_returns_0(capsys):
    """`hivemoe --help` prints, to stdout, every command with a one-line summary, and returns 0."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name}" in out and summary in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_its_own_help(name, capsys):
    """`hivemoe COMMAND --help` exits 0 and describes that command (each command module imports and parses)."""
    assert main([name, "--help"]) == 0
    assert capsys.readouterr().out.strip()


def test_argv_defaults_to_sys_argv(monkeypatch, capsys):
    """main() with no argument reads the command from sys.argv, skipping the program name."""
    monkeypatch.setattr(sys, "argv", ["hivemoe"])
    assert main() == 2
    monkeypatch.setattr(sys, "argv", ["hivemoe", "ledger", "verify", "/nonexistent/ledger.db"])
    assert main() == 1
    assert "no ledger file" in capsys.readouterr().out


def test_module_entry_point_exits_with_main_status():
    """`python -m moe.cli.main` exits with main's status: 2 and the usage for no command."""
    proc = subprocess.run(
        [sys.executable, "-m", "moe.cli.main"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and USAGE in proc.stderr


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A subnet plugin package selected by $HIVEMOE_SUBNETS, whose fetch records its arguments."""
    name = f"toy_subnets_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from moe.corpus import LocalFiles, Subnet

            def all_subnets():
                return {"toy": Subnet(name="toy", netuid=77, source=LocalFiles(paths=("/nonexistent",)))}
            """
        )
    )
    (pkg / "fetch.py").write_text("calls = []\n\ndef main(argv):\n    calls.append(argv)\n    return 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HIVEMOE_SUBNETS", name)
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[mod]


def test_subnets_plugin_package_is_honoured(plugin, capsys):
    """$HIVEMOE_SUBNETS picks the package whose fetch runs (with the remaining arguments) and whose subnets
    generate knows."""
    assert main(["fetch", "--slice", "--only", "toy"]) == 5
    assert sys.modules[f"{plugin}.fetch"].calls == [["--slice", "--only", "toy"]]
    assert main(["generate", "hi", "--peers", "x", "--subnets", "code"]) == 2
    assert "known: toy" in capsys.readouterr().err


def test_every_command_is_documented():
    """Each dispatched command appears in the module docstring's usage lines."""
    import moe.cli.main as cli

    for name in COMMANDS:
        assert f"hivemoe {name}" in cli.__doc__


def test_unexpected_error_is_one_line_unless_debug(plugin, capsys):
    """A failure no command expected is one `error:` line naming the command, and exit 1; with --debug the exception
    propagates with its traceback."""
    importlib.import_module(f"{plugin}.fetch").main = lambda argv: int("not a number\nsecond line")
    assert main(["fetch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hivemoe fetch: invalid literal for int()") and "\n" not in err
    with pytest.raises(ValueError):
        main(["--debug", "fetch"])


def test_train_runs_train_py_with_its_exit_status(capsys):
    """`hivemoe train` is `python train.py`: a bad key is train.py's one-line config error and exit 2."""
    assert main(["train", "configs/tiny.yaml", "no_such_key=1"]) == 2
    assert "config error" in capsys.readouterr().err
