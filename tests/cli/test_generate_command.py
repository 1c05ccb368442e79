"""Tests for moe/cli/generate_command.py: `hivemoe generate`, offline from a run directory or live from peers."""

from __future__ import annotations

import pytest

from moe.cli.generate_command import main as generate
from moe.cli.main import main


def test_generate_refuses_unknown_subnet_before_joining(capsys):
    """generate with a subnet nobody declared returns 2 naming it and the known ones, without touching the network."""
    rc = main(["generate", "hi", "--peers", "/ip4/127.0.0.1/tcp/1/p2p/x", "--subnets", "code,klingon"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown subnet(s) klingon" in err and "code" in err.split("known:")[1]


def test_generate_reports_a_bad_peer_address(capsys):
    """generate with a malformed peer multiaddr returns 1 with a one-line error, before starting any process."""
    assert main(["generate", "hi", "--peers", "not-a-multiaddr", "--subnets", "code"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad initial peer 'not-a-multiaddr'") and "\n" not in err


@pytest.mark.parametrize("argv", [["hi"], ["hi", "--run", "r", "--peers", "x"]], ids=["neither", "both"])
def test_exactly_one_of_run_and_peers(argv, capsys):
    """generate needs exactly one source: neither or both of --run/--peers is a usage error (2)."""
    assert main(["generate", *argv]) == 2
    assert "--run" in capsys.readouterr().err


def test_a_missing_run_directory_or_gate_is_one_error_line(tmp_path, capsys):
    """--run on a directory that does not exist, or one without a saved gate, returns 1 with one `error:` line."""
    assert generate(["hi", "--run", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no run directory at {tmp_path / 'nope'}"
    assert generate(["hi", "--run", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "gate.json" in err and "\n" not in err


def test_bad_numbers_are_usage_errors(capsys):
    """A zero --context or --reroute-every is refused with exit 2 before anything is loaded."""
    assert generate(["hi", "--run", "x", "--reroute-every", "0"]) == 2
    assert "--reroute-every" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--stateless"]], ids=["sessions", "stateless"])
def test_offline_generation_from_a_finished_run_streams_the_prompt_and_new_bytes(tiny_run, mode, capsys):
    """`generate --run` samples from the run's experts, seed and gate in-process (route-once sessions by default, or
    the stateless path) and prints the prompt followed by the new bytes; the same seed gives the same text."""
    argv = ["To be, or ", "--run", str(tiny_run.run_dir), "--max-new-bytes", "24", "--seed", "1", *mode]
    assert generate(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("To be, or ") and first.endswith("\n") and len(first.encode()) > len("To be, or ")
    assert generate(argv) == 0
    assert capsys.readouterr().out == first
