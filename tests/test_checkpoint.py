"""Checkpoints: exact save/load, stage checks, foreign files, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

from diladiff_cli.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    load_into,
    read_meta,
    save_weights,
)
from diladiff_cli.config import DiTConfig
from diladiff_cli.errors import CheckpointError
from diladiff_cli.models.dit import DiT

CFG = DiTConfig(vocab_size=40, hidden=32, depth=2, heads=2, cond_dim=16, max_len=16, dropout=0.0)


def trained_like_model() -> DiT:
    torch.manual_seed(0)
    model = DiT.from_config(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # leave the zero-init so outputs are non-trivial
    return model.eval()


def test_save_load_gives_identical_logits(tmp_path):
    model = trained_like_model()
    path = tmp_path / "ladiff.pt"  # the suffix does not decide the format
    save_weights(path, model.state_dict(), CheckpointMeta(stage="mdlm", step=7, config={"a": 1}))
    ckpt = load_checkpoint(path, stage="mdlm")
    assert ckpt.meta.step == 7 and ckpt.meta.config == {"a": 1}
    other = DiT.from_config(CFG).eval()
    load_into(other, ckpt.tensors, source=str(path))
    x = torch.randint(0, 39, (3, 16))
    sigma = torch.zeros(3)
    assert torch.equal(model(x, sigma), other(x, sigma))


def test_wrong_stage_and_foreign_files(tmp_path):
    model = trained_like_model()
    path = tmp_path / "m.pt"
    save_weights(path, model.state_dict(), CheckpointMeta(stage="prior", step=1, config={}))
    with pytest.raises(CheckpointError, match="is a 'prior' checkpoint, expected 'mdlm'"):
        load_checkpoint(path, stage="mdlm")
    junk = tmp_path / "junk.pt"
    torch.save({"x": torch.ones(1)}, junk)
    with pytest.raises(CheckpointError, match="not a diladiff checkpoint"):
        read_meta(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_meta(tmp_path / "missing.pt")


def test_shape_mismatch_is_one_line(tmp_path):
    model = trained_like_model()
    bigger = DiT.from_config(DiTConfig(**{**CFG.__dict__, "hidden": 64, "heads": 2}))
    with pytest.raises(CheckpointError, match="has shape") as err:
        load_into(bigger, model.state_dict(), source="m.pt")
    assert "\n" not in str(err.value)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    model = trained_like_model()
    save_weights(path, model.state_dict(), CheckpointMeta(stage="mdlm", step=1, config={}))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_weights(path, model.state_dict(), CheckpointMeta(stage="mdlm", step=2, config={}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
