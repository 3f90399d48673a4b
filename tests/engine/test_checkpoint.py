"""Checkpoints round-trip weights, optimizer state and RNG state, and fail loudly."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from atrous.engine.checkpoint import MODEL_FILE, load_checkpoint, save_checkpoint


def _trained_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 2, 5, 5)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_continues_identically(tmp_path):
    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer, meta={"epoch": 2, "name": "x"})
    # Reference continuation: the next random batch and step from the original objects.
    state_after_save = torch.get_rng_state()
    batch = torch.randn(2, 2, 5, 5)
    optimizer.zero_grad()
    model(batch).square().mean().backward()
    optimizer.step()

    torch.manual_seed(123)  # disturb the RNG; restore_rng must bring it back
    restored = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    meta = load_checkpoint(tmp_path / "ckpt", restored, optimizer=restored_opt, restore_rng=True)
    assert meta == {"epoch": 2, "name": "x"}
    assert torch.equal(torch.get_rng_state(), state_after_save)
    batch2 = torch.randn(2, 2, 5, 5)
    assert torch.equal(batch, batch2)
    restored(batch2).square().mean().backward()
    restored_opt.step()
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)


def test_python_and_numpy_rng_restored(tmp_path):
    model, _ = _trained_pair()
    save_checkpoint(tmp_path, model)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    load_checkpoint(tmp_path, restore_rng=True)
    assert (random.random(), np.random.rand()) == expected


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no checkpoint.json"):
        load_checkpoint(tmp_path)
    model, _ = _trained_pair()
    save_checkpoint(tmp_path, model)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_checkpoint(tmp_path, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "checkpoint.json")


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, _ = _trained_pair()
    save_checkpoint(tmp_path, model, meta={"epoch": 1})
    before = (tmp_path / MODEL_FILE).read_bytes()
    from pathlib import Path

    def broken(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:7])
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, model, meta={"epoch": 2})
    assert (tmp_path / MODEL_FILE).read_bytes() == before
    assert load_checkpoint(tmp_path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_corrupt_or_mismatched_weight_files_are_refused(tmp_path):
    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "a", model, optimizer=optimizer)
    save_checkpoint(tmp_path / "b", model, optimizer=optimizer)
    # Weights of one save beside the metadata of another: what a crash between replaces leaves.
    (tmp_path / "a" / MODEL_FILE).write_bytes((tmp_path / "b" / MODEL_FILE).read_bytes())
    with pytest.raises(ValueError, match="model.safetensors' is corrupt or was changed: its SHA-256"):
        load_checkpoint(tmp_path / "a", model)
    (tmp_path / "b" / MODEL_FILE).write_bytes(b"\x00\x01truncated")
    with pytest.raises(ValueError, match="corrupt or was changed"):
        load_checkpoint(tmp_path / "b", model)


def test_a_flipped_byte_is_refused_and_old_checkpoints_still_check_their_stamp(tmp_path):
    import json

    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "a", model, optimizer=optimizer)
    data = bytearray((tmp_path / "a" / MODEL_FILE).read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: safetensors alone would load it
    (tmp_path / "a" / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(tmp_path / "a", model)
    # A checkpoint from before the digests (files listed by name) is still paired by its stamp.
    save_checkpoint(tmp_path / "b", model)
    save_checkpoint(tmp_path / "c", model)
    record = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    record["files"] = list(record["files"])
    (tmp_path / "b" / "checkpoint.json").write_text(json.dumps(record))
    assert load_checkpoint(tmp_path / "b", model) == {}
    (tmp_path / "b" / MODEL_FILE).write_bytes((tmp_path / "c" / MODEL_FILE).read_bytes())
    with pytest.raises(ValueError, match="belongs to another save"):
        load_checkpoint(tmp_path / "b", model)


def test_files_get_the_usual_permissions(tmp_path):
    import os

    model, _ = _trained_pair()
    save_checkpoint(tmp_path, model)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / MODEL_FILE).stat().st_mode & 0o777 == 0o666 & ~umask


def test_optimizer_hyperparameters_come_from_the_optimizer_not_the_file(tmp_path):
    import json

    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path, model, optimizer=optimizer)
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    record["optimizer"]["param_groups"][0]["betas"] = "ab"  # crafted: would fail inside optimizer.step()
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_checkpoint(tmp_path, optimizer=fresh)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999) and fresh.param_groups[0]["lr"] == 0.5
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    record["optimizer"]["state"] = {"x": {}}
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="field optimizer.state must map parameter numbers"):
        load_checkpoint(tmp_path, optimizer=fresh)
    del record["optimizer"]["param_groups"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="field optimizer.param_groups"):
        load_checkpoint(tmp_path, optimizer=fresh)
