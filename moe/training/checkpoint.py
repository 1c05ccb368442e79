"""Checkpoints: tensors in safetensors, everything else in JSON, nothing pickled.

A checkpoint directory holds `model.safetensors`, `optimizer.safetensors` (optional) and `state.json` with the step,
the config and the sha256 of both tensor files. Loading re-hashes the files, so a truncated, corrupted or
mismatched checkpoint raises `CheckpointError` with one line saying what is wrong; it is never a silent restart.
Directories are written to a temporary name and renamed, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moe.fileio import sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied weights stored once (safetensors refuses shared storage), contiguous, on CPU."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `tensors` into `model`, accepting tied duplicates missing; any other mismatch is a CheckpointError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    tied = {k for k in missing if _is_tied_alias(model, k, tensors)}
    missing = [k for k in missing if k not in tied]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(t.shape)}, model expects {tuple(expected[k].shape)}"
            )
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: tensor {k} holds non-finite values")
    model.load_state_dict({**{k: tensors[k] for k in tensors}}, strict=False)


def _is_tied_alias(model: torch.nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    ptr = sd[name].untyped_storage().data_ptr()
    return any(k in tensors and sd[k].untyped_storage().data_ptr() == ptr for k in sd if k != name)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load optimizer state, checking that every per-parameter tensor has its parameter's shape and is finite
    (torch's own load only checks group sizes, so a mismatch would surface later as a crash inside `step`)."""
    state: dict[int, dict[str, Any]] = {}
    try:
        for name, t in tensors.items():
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
        for name, v in meta["scalars"].items():
            pid, k = name.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        saved_ids = [pid for g in meta["param_groups"] for pid in g["params"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"optimizer state is malformed: {e}") from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(saved_ids) != len(params):
        raise CheckpointError(
            f"optimizer state does not fit: {len(saved_ids)} saved parameters, model has {len(params)}"
        )
    for pid, p in zip(saved_ids, params, strict=True):
        for k, t in state.get(pid, {}).items():
            if not isinstance(t, torch.Tensor):
                continue
            if t.dim() > 0 and tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"optimizer state does not fit: {k} of parameter {pid} has shape {tuple(t.shape)}, "
                    f"parameter has {tuple(p.shape)}"
                )
            if not torch.isfinite(t).all():
                raise CheckpointError(f"optimizer state: {k} of parameter {pid} holds non-finite values")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"optimizer state does not fit: {e}") from None


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    step: int,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write atomically to `directory` (replacing an older checkpoint there only once the new one is complete)."""
    directory = Path(directory)
    _recover_interrupted(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_tensors(model), tmp / "model.safetensors")
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "config": config,
        "model_sha256": sha256_file(tmp / "model.safetensors"),
        "extra": extra or {},
    }
    if optimizer is not None:
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        state["optimizer"] = meta
        state["optimizer_sha256"] = sha256_file(tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _recover_interrupted(directory: Path) -> None:
    """Put back the previous checkpoint if a save crashed after moving it aside and before installing the new one."""
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and (old / "state.json").is_file():
        logger.warning("checkpoint %s: an interrupted save left only %s; restoring it", directory, old)
        os.replace(old, directory)


def has_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` holds a checkpoint to resume from (recovering one an interrupted save moved aside)."""
    directory = Path(directory)
    _recover_interrupted(directory)
    return (directory / "state.json").is_file()


def read_state(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    _recover_interrupted(directory)
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory} (state.json missing)")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {directory}: state.json is corrupt ({e})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory}: unknown format (expected format_version {FORMAT_VERSION})")
    return state


def _load_verified(directory: Path, name: str, expected_sha: str | None) -> dict[str, torch.Tensor]:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {name} missing")
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise CheckpointError(f"checkpoint {directory}: {name} does not match its recorded sha256 (corrupt)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory}: {name} is unreadable ({e})") from None


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    expect_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore `model` (and `optimizer`) in place and return the state dict (step, config, extra)."""
    directory = Path(directory)
    state = read_state(directory)
    if expect_config is not None and state.get("config") != expect_config:
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        diff = sorted(k for k in set(expect_config) | set(saved) if expect_config.get(k) != saved.get(k))
        raise CheckpointError(f"checkpoint {directory} was made with a different model config (differs in {diff})")
    tensors = _load_verified(directory, "model.safetensors", state.get("model_sha256"))
    load_model_tensors(model, tensors, source=f"checkpoint {directory}")
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"checkpoint {directory} holds no optimizer state to resume from")
        opt_tensors = _load_verified(directory, "optimizer.safetensors", state.get("optimizer_sha256"))
        _restore_optimizer(optimizer, opt_tensors, state["optimizer"])
    return state


def model_to_bytes(model: torch.nn.Module, config: dict[str, Any]) -> bytes:
    """The model's weights as one safetensors blob with its config in the header: what crosses the network."""
    from safetensors.torch import save

    return save(model_tensors(model), metadata={"config": json.dumps(config, sort_keys=True)})


def load_model_bytes(model: torch.nn.Module, blob: bytes, expect_config: dict[str, Any], source: str) -> None:
    """Load a blob from `model_to_bytes` into `model`; a blob for another architecture is a CheckpointError."""
    from safetensors.torch import load

    try:
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
        config = json.loads(metadata.get("config", "null"))
    except (SafetensorError, ValueError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{source}: not a valid model blob ({e})") from None
    if config != expect_config:
        raise CheckpointError(f"{source} was made for another model config: {config}")
    load_model_tensors(model, tensors, source=source)
