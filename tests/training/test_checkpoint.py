"""Tests for moe/training/checkpoint.py: exact round trips; a damaged or mismatched one is a CheckpointError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe.model.transformer import ByteLM, ModelConfig, config_dict
from moe.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_bytes,
    model_to_bytes,
    read_state,
    save_checkpoint,
)

CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16)


def make(seed: int = 0, cfg: ModelConfig = CFG) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(cfg)


def trained(steps: int = 3) -> tuple[ByteLM, torch.optim.Optimizer]:
    """A model and AdamW after a few real steps, so the optimizer holds moments and step counts."""
    model = make(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(0, 256, (2, 8), generator=g)
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def ckpt(tmp_path):
    model, opt = trained()
    return save_checkpoint(tmp_path / "ckpt", model, 3, config_dict(CFG), opt, extra={"note": "hi"}), model, opt


def test_round_trip_model_and_optimizer(ckpt):
    """A restored model and AdamW equal the originals, and one more step from each gives identical weights."""
    path, model, opt = ckpt
    model2 = make(1)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2, betas=(0.9, 0.95))
    state = load_checkpoint(path, model2, opt2, expect_config=config_dict(CFG))
    assert state["step"] == 3 and state["extra"] == {"note": "hi"}
    assert_same_model(model, model2)
    assert model2.lm_head.weight is model2.embed_tokens.weight  # tying survives the load
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][k])), (pid, k)
    x = torch.randint(0, 256, (2, 8))
    for m, o in ((model, opt), (model2, opt2)):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
        o.step()
    assert_same_model(model, model2)


def flip_bytes(path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_model_file_mentions_sha256(ckpt):
    """Flipping bytes in model.safetensors is a CheckpointError that mentions sha256."""
    path, _, _ = ckpt
    flip_bytes(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, make())


def test_corrupted_optimizer_file_rejected(ckpt):
    """Flipping bytes in optimizer.safetensors is a CheckpointError when resuming with an optimizer."""
    path, _, _ = ckpt
    flip_bytes(path / "optimizer.safetensors")
    model = make()
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_checkpoint(path, model, torch.optim.AdamW(model.parameters()))


def test_truncated_file_rejected(ckpt):
    """A truncated model.safetensors is a CheckpointError, even when its recorded hash is absent."""
    path, _, _ = ckpt
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, make())
    state = json.loads((path / "state.json").read_text())
    del state["model_sha256"]
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, make())


def test_missing_or_corrupt_state_json(ckpt, tmp_path):
    """A checkpoint without state.json, with a garbled one, or of another format is a CheckpointError."""
    path, _, _ = ckpt
    with pytest.raises(CheckpointError, match="state.json missing"):
        load_checkpoint(tmp_path / "nowhere", make())
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state(path)
    (path / "state.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CheckpointError, match="format"):
        read_state(path)


def test_missing_model_file(ckpt):
    """A checkpoint whose model.safetensors is gone is a CheckpointError naming the file."""
    path, _, _ = ckpt
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        load_checkpoint(path, make())


def test_mismatched_config_rejected(ckpt):
    """Loading into another architecture fails: by config when one is expected, by shape otherwise."""
    path, _, _ = ckpt
    other_cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16)
    with pytest.raises(CheckpointError, match="d_model"):
        load_checkpoint(path, make(cfg=other_cfg), expect_config=config_dict(other_cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, make(cfg=other_cfg))
    deeper = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=16)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, make(cfg=deeper))


def test_non_finite_tensor_rejected(ckpt):
    """A checkpoint holding NaN weights (with a matching hash) is rejected and leaves the model untouched."""
    path, _, _ = ckpt
    tensors = load_file(path / "model.safetensors")
    tensors["norm.weight"][0] = float("nan")
    save_file(tensors, path / "model.safetensors")
    state = json.loads((path / "state.json").read_text())
    state.pop("model_sha256")
    (path / "state.json").write_text(json.dumps(state))
    model = make(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(path, model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_optimizer_missing_from_checkpoint(tmp_path):
    """Resuming with an optimizer from a weights-only checkpoint is a CheckpointError, not a fresh optimizer."""
    model = make()
    save_checkpoint(tmp_path / "c", model, 0, config_dict(CFG))
    with pytest.raises(CheckpointError, match="no optimizer"):
        load_checkpoint(tmp_path / "c", make(), torch.optim.AdamW(model.parameters()))


def test_optimizer_state_of_other_shape_rejected(ckpt):
    """Optimizer moments that do not fit the parameters are a CheckpointError at load, not a crash at step."""
    path, _, _ = ckpt
    wide = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)
    model = make(cfg=wide)
    opt = torch.optim.AdamW(model.parameters())
    tensors = load_file(path / "model.safetensors")
    save_checkpoint(path.parent / "w", model, 0, config_dict(wide), None)
    # pair this optimizer file with a model of another FFN width
    state = json.loads((path / "state.json").read_text())
    (path.parent / "w" / "optimizer.safetensors").write_bytes((path / "optimizer.safetensors").read_bytes())
    wstate = json.loads((path.parent / "w" / "state.json").read_text())
    wstate["optimizer"], wstate["optimizer_sha256"] = state["optimizer"], state["optimizer_sha256"]
    (path.parent / "w" / "state.json").write_text(json.dumps(wstate))
    assert tensors  # the source checkpoint was real
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(path.parent / "w", model, opt)


def test_atomic_save_survives_leftovers(tmp_path):
    """Leftover .tmp and .old directories from a crashed save do not break the next save, which replaces the old."""
    d = tmp_path / "ckpt"
    save_checkpoint(d, make(0), 1, config_dict(CFG))
    (tmp_path / "ckpt.tmp").mkdir()
    (tmp_path / "ckpt.tmp" / "model.safetensors").write_bytes(b"half a file")
    (tmp_path / "ckpt.old").mkdir()
    save_checkpoint(d, make(1), 2, config_dict(CFG))
    model = make(7)
    assert load_checkpoint(d, model)["step"] == 2
    assert_same_model(model, make(1))
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()


def test_crash_between_renames_recovers_previous(tmp_path):
    """A crash after the old checkpoint was moved aside (only `.old` left) still loads the previous checkpoint."""
    d = tmp_path / "ckpt"
    save_checkpoint(d, make(0), 4, config_dict(CFG))
    d.rename(tmp_path / "ckpt.old")  # the state a crash between the two renames leaves
    model = make(3)
    assert load_checkpoint(d, model)["step"] == 4
    assert_same_model(model, make(0))


def test_model_bytes_round_trip():
    """model_to_bytes / load_model_bytes restore the exact weights."""
    src = trained()[0]
    blob = model_to_bytes(src, config_dict(CFG))
    dst = make(9)
    load_model_bytes(dst, blob, config_dict(CFG), source="peer")
    assert_same_model(src, dst)


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage" * 10, (10**6).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]"],
    ids=["empty", "garbage", "huge-header", "bad-header"],
)
def test_garbage_blob_rejected(blob):
    """A blob that is not a safetensors model is a one-line CheckpointError naming the source."""
    with pytest.raises(CheckpointError, match="peer x") as e:
        load_model_bytes(make(), blob, config_dict(CFG), source="peer x")
    assert "\n" not in str(e.value)


def test_blob_for_other_config_or_with_nan_rejected():
    """A valid blob for another config, or with non-finite weights, is rejected."""
    other = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=24, max_seq_len=16)
    with pytest.raises(CheckpointError, match="another model config"):
        load_model_bytes(make(), model_to_bytes(make(cfg=other), config_dict(other)), config_dict(CFG), "peer")
    bad = make()
    with torch.no_grad():
        bad.norm.weight[0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model_bytes(make(), model_to_bytes(bad, config_dict(CFG)), config_dict(CFG), "peer")
    lying = make(cfg=other)  # right header config, wrong tensors
    with pytest.raises(CheckpointError, match="shape"):
        load_model_bytes(make(), model_to_bytes(lying, config_dict(CFG)), config_dict(CFG), "peer")
