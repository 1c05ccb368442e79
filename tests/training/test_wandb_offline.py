"""Tests for moe/training/wandb_offline.py: offline runs wandb wrote read back exactly; damage stops the read."""

from __future__ import annotations

import shutil

import pytest

from moe.training.tracking import Tracker, WandbConfig, close_wandb
from moe.training.wandb_offline import BLOCK_SIZE, read_offline_run, read_offline_runs, read_records

BIG = "x" * (3 * BLOCK_SIZE)
"""A config value longer than a block, so its record is split over FIRST, MIDDLE and LAST chunks."""


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One real offline wandb run: a config spanning several blocks, three logged steps, a summary, finished."""
    pytest.importorskip("wandb")
    mp = pytest.MonkeyPatch()
    mp.delenv("WANDB_API_KEY", raising=False)
    root = tmp_path_factory.mktemp("wandb-offline")
    try:
        cfg = WandbConfig(enabled=True, project="hivemoe-test", mode="offline")
        t = Tracker(cfg, root, "expert-code", {"big": BIG, "model": {"d_model": 8}}, group="g", job_type="expert")
        for step in (10, 20, 30):
            t.log({"train/loss": 1.0 / step, "train/tokens": 100 * step}, step=step)
        t.summary({"eval/bpb/all": 2.5, "eval/bpb/code": 2.25})
        t.finish()
        close_wandb()  # the offline file is complete once the service flushed it
    finally:
        mp.undo()
    [folder] = (root / "wandb").glob("offline-run-*")
    return folder


def test_reads_back_what_was_logged(offline_run):
    """Name, group, job type, the config (one record, a value longer than a block included), every history row and
    the final summary read back as logged."""
    run = read_offline_run(offline_run)
    assert (run.name, run.project, run.group, run.job_type) == ("expert-code", "hivemoe-test", "g", "expert")
    assert run.run_id and offline_run.name.endswith(run.run_id)
    assert run.config == {"big": BIG, "model": {"d_model": 8}} and run.config_records == 1
    assert run.history_rows == 3 and run.exited
    assert run.summary["train/loss"] == pytest.approx(1.0 / 30) and run.summary["train/tokens"] == 3000
    assert run.summary["eval/bpb/all"] == 2.5 and run.summary["eval/bpb/code"] == 2.25
    assert [r.name for r in read_offline_runs(offline_run.parent)] == ["expert-code"]


def test_damaged_file_keeps_the_records_before_the_damage(offline_run, tmp_path):
    """A file cut short, or with a flipped byte, yields the records before the damage and then stops without
    raising; a file without wandb's header is refused."""
    copy = tmp_path / offline_run.name
    shutil.copytree(offline_run, copy)
    [path] = copy.glob("run-*.wandb")
    whole = list(read_records(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])
    cut = list(read_records(path))
    assert 0 < len(cut) < len(whole) and cut == whole[: len(cut)]
    flipped = bytearray(data)
    flipped[BLOCK_SIZE + 100] ^= 0xFF  # inside the big config record
    path.write_bytes(bytes(flipped))
    assert list(read_records(path)) == whole[: len(list(read_records(path)))]
    assert read_offline_run(copy).config == {}  # the run record was the damaged one
    path.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a wandb run file"):
        list(read_records(path))
