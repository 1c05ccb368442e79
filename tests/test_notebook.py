"""notebooks/explore_run.ipynb runs top to bottom on a finished run, and is committed without outputs.

Run: python -m pytest -q tests/test_notebook.py
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore_run.ipynb"
CELL_TIMEOUT_SECONDS = 120
"""Per cell; the slowest replays the ledger (about a second on the tiny run) and imports matplotlib."""


def test_committed_notebook_has_no_outputs():
    """Every code cell of the committed notebook has no outputs and no execution count, and metadata stays minimal."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs"
            assert cell.execution_count is None, f"cell {i} has an execution count"
        assert not cell.get("metadata"), f"cell {i} has metadata {cell.metadata}"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, nb.metadata


@pytest.mark.slow
def test_notebook_runs_on_tiny_run(tiny_run, monkeypatch):
    """The notebook executes without a cell error on the tiny run (no baselines), reading it via HIVEMOE_RUN_DIR."""
    from nbclient import NotebookClient

    assert (tiny_run.run_dir / "summary.json").is_file(), tiny_run.result
    # the kernel is `python3` as ipykernel ships it; jupyter_client starts its "python" with this very interpreter
    # (sys.executable), and the repository root goes first on its path so it imports this checkout's `moe`
    monkeypatch.setenv("HIVEMOE_RUN_DIR", str(tiny_run.run_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # run where Jupyter would: the notebook's folder
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run {tiny_run.summary['run_id']} at {tiny_run.run_dir.resolve()}" in text
    assert "ledger ledger.sqlite: ok:" in text
