"""Read offline wandb runs back, as `wandb sync --view` would show them: name, group, job type, config, summary.

    runs = read_offline_runs(run_dir / "wandb")   # one OfflineRun per `offline-run-*` folder
    {r.name: r.job_type for r in runs}

wandb keeps no Python reader of its run files since its core moved to Go, so this parses the file format itself:
a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB-log framing in 32 KiB blocks (each chunk: CRC32 of
type byte and data, little-endian uint32; length, uint16; type, FULL 1, FIRST 2, MIDDLE 3, LAST 4), each record a
`wandb.proto.wandb_internal_pb2.Record` protobuf. A chunk that fails its checksum or is cut short ends the read (a
run killed mid-write keeps every record before it), as wandb's own reader does.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
"""The first 7 bytes of every run file this reader understands."""
BLOCK_SIZE = 32768
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What one offline run holds: its identity, the config logged at init and updates, and the final summary."""

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The user's config keys, each value as logged (wandb's own `_wandb` key left out)."""
    config_records: int = 0
    """How many records set the user's config: 1 when it was logged once at init and never re-logged."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The last value of every summary key, explicit `summary.update`s and logged history alike."""
    history_rows: int = 0
    exited: bool = False
    """Whether the run was finished (an exit record was written)."""


def read_records(path: str | Path) -> Iterator[bytes]:
    """Every record's bytes in a `.wandb` file, in order; ValueError if the header is not wandb's."""
    data = Path(path).read_bytes()
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{path} is not a wandb run file (header {data[:7]!r})")
    pos, parts = len(HEADER), []
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # the writer pads a block's tail too short for a chunk header
            pos += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        chunk = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            logger.warning("%s: damaged or truncated record at byte %d; reading stops there", path, pos)
            return
        pos += CHUNK_HEADER.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            yield b"".join([*parts, chunk])
            parts = []


def _item_value(item) -> Any:
    """A config, summary or history item's value: JSON text, or for history items possibly a typed field."""
    typed = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if typed == "none":
        return None
    if typed == "json":
        return json.loads(item.json)
    if typed is not None:
        return getattr(item, typed)
    return json.loads(item.value_json) if item.value_json else None


def _update(target: dict[str, Any], items) -> None:
    """Apply config, summary or history items to `target`; a nested key (a table's or image's fields under its
    metric key) sets a value inside a dict under its first part."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part), dict | None) else {}
        node[path[-1]] = _item_value(item)


def _first_key(item) -> str:
    return item.nested_key[0] if item.nested_key else item.key


def _update_config(run: OfflineRun, items) -> None:
    """Apply a config record, counting it only if it sets the user's keys (wandb adds its own `_wandb` key in
    records of its own)."""
    user = [i for i in items if _first_key(i) != "_wandb"]
    if user:
        run.config_records += 1
        _update(run.config, user)


def read_offline_run(folder: str | Path) -> OfflineRun:
    """The run in one `offline-run-*` folder (its `run-<id>.wandb` file)."""
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    run = OfflineRun(path=folder)
    for blob in read_records(next(folder.glob("run-*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(blob)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.project = r.run_id, r.display_name, r.project
            run.group, run.job_type = r.run_group, r.job_type
            _update_config(run, r.config.update)
            _update(run.summary, r.summary.update)
        elif kind == "config":
            _update_config(run, rec.config.update)
        elif kind == "history":
            run.history_rows += 1
            _update(run.summary, [i for i in rec.history.item if not _first_key(i).startswith("_")])
        elif kind == "summary":
            _update(run.summary, rec.summary.update)
        elif kind == "exit":
            run.exited = True
    return run


def read_offline_runs(wandb_dir: str | Path) -> list[OfflineRun]:
    """Every offline run under a `wandb` folder, oldest first."""
    return [read_offline_run(f) for f in sorted(Path(wandb_dir).glob("offline-run-*")) if f.is_dir()]
