"""Latent shards: encode -> shards -> read back exactly; resume after an interruption without
re-encoding or duplicating; torchrun ranks; latents of another autoencoder refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from _ae_tiny import ae_config

from diladiff_cli.ae import load_autoencoder
from diladiff_cli.checkpoint import CheckpointMeta, load_checkpoint, save_weights
from diladiff_cli.distributed import init_runtime
from diladiff_cli.encode import encode_split
from diladiff_cli.encoder import TwoViewBlocks
from diladiff_cli.errors import DiladiffError
from diladiff_cli.latent_shards import (
    LatentIndex,
    LatentShards,
    ShardPlan,
    ShardRecord,
    load_index,
    shard_name,
    write_index,
    write_shard,
)
from diladiff_cli.structs import to_dict

pytest_plugins = ["_ae_tiny"]  # the tiny_env and trained_ae fixtures

CPU = torch.device("cpu")


def _encode(ckpt, env, out, **kw):
    args = dict(shard_size=10, batch_size=4, runtime=init_runtime("cpu"))
    return encode_split(
        checkpoint=ckpt, data_dir=env.data.out, split="train", out=out, **{**args, **kw}
    )


def _reference(ckpt, env, *, shard_size=10, batch_size=4) -> torch.Tensor:
    """The latents of every training block, batched exactly as encode_split batches them."""
    loaded = load_autoencoder(ckpt, device=CPU)
    data = TwoViewBlocks(
        data_dir=env.data.out,
        split="train",
        decoder_tokenizer=loaded.decoder_tokenizer,
        encoder_tokenizer=loaded.encoder_tokenizer,
        max_len=loaded.config.encoder.max_len,
    )
    plan = ShardPlan(count=len(data), shard_size=shard_size)
    rows = []
    for k in range(plan.num_shards):
        start, count = plan.range(k)
        for lo in range(start, start + count, batch_size):
            idx = np.arange(lo, min(start + count, lo + batch_size))
            rows.append(loaded.encode_view(data.batch(idx)))
    return torch.cat(rows)


def test_shard_plan_covers_every_block_once():
    plan = ShardPlan(count=23, shard_size=5)
    assert plan.num_shards == 5 and plan.range(4) == (20, 3)
    for world in (1, 2, 3, 8):
        ranks = [plan.for_rank(r, world) for r in range(world)]
        assert sorted(k for r in ranks for k in r) == list(range(5))
        assert all(r == list(range(r[0], r[-1] + 1)) for r in ranks if r)  # contiguous
    with pytest.raises(DiladiffError):
        ShardPlan(count=0, shard_size=5)


def test_write_and_read_back_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(7, 3, 5, generator=g)
    write_shard(tmp_path, ShardRecord(0, 0, 4, "abc", "train"), latents[:4], torch.arange(4))
    write_shard(tmp_path, ShardRecord(1, 4, 3, "abc", "train"), latents[4:], torch.arange(4, 7))
    write_index(
        tmp_path,
        LatentIndex(
            split="train",
            count=7,
            shape=(3, 5),
            dtype="float32",
            shard_size=4,
            shards=[
                {"file": shard_name(0), "start": 0, "count": 4},
                {"file": shard_name(1), "start": 4, "count": 3},
            ],
            normalization={"kind": "none"},
            autoencoder={"path": "x", "sha256": "abc", "step": 1},
        ),
    )
    shards = LatentShards(tmp_path)
    assert len(shards) == 7 and shards.shape == (3, 5)
    assert torch.equal(shards.all(), latents)
    assert torch.equal(shards.latents([6, 0, 3, 4]), latents[[6, 0, 3, 4]])
    with pytest.raises(IndexError):
        shards.latents([7])


def test_encode_split_reads_back_exactly(tiny_env, trained_ae, tmp_path):
    result = _encode(trained_ae, tiny_env, tmp_path / "lat")
    index = load_index(tmp_path / "lat")
    n = tiny_env.info.num_train_blocks
    assert result.count == index.count == n and result.encoded == result.shards
    assert index.shape == (4, 8) and index.dtype == "float32"
    assert index.autoencoder["sha256"] == load_autoencoder(trained_ae, device=CPU).sha256
    assert index.normalization["kind"] == "stats" and len(index.normalization["std"]) == 4
    shards = LatentShards(tmp_path / "lat", autoencoder=trained_ae)
    assert torch.equal(shards.all(), _reference(trained_ae, tiny_env))
    z = shards.all()
    # Normalised with the training statistics: about zero mean and unit scale.
    assert z.mean().abs() < 0.5 and 0.3 < z.std() < 3


def test_interrupted_encode_resumes_without_loss_or_duplicates(tiny_env, trained_ae, tmp_path):
    out = tmp_path / "lat"

    def stop_after_two(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _encode(trained_ae, tiny_env, out, on_shard=stop_after_two)
    assert not (out / "index.json").exists()
    with pytest.raises(DiladiffError, match="no latents"):
        LatentShards(out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert sorted(before) == [shard_name(0), shard_name(1)]
    written = []
    result = _encode(trained_ae, tiny_env, out, on_shard=written.append)
    assert written == list(range(2, result.shards)) and result.reused == 2
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before  # not re-encoded
    shards = LatentShards(out)
    blocks = torch.cat([shards._shard(k) for k in range(result.shards)])
    assert len(blocks) == tiny_env.info.num_train_blocks  # nothing lost, nothing twice
    indices = torch.cat(
        [
            safetensors.torch.load_file(str(out / shard_name(k)))["indices"]
            for k in range(result.shards)
        ]
    )
    assert torch.equal(indices, torch.arange(tiny_env.info.num_train_blocks))
    assert torch.equal(shards.all(), _reference(trained_ae, tiny_env))
    # A complete split is reused as is.
    again = _encode(trained_ae, tiny_env, out)
    assert again.encoded == 0 and again.reused == result.shards


def test_latents_of_another_autoencoder_are_refused(tiny_env, trained_ae, tmp_path):
    ckpt = load_checkpoint(trained_ae, stage="ae")
    other = tmp_path / "other-ae.pt"
    meta = ckpt.meta
    tensors = {**ckpt.tensors, "compressor.latents": ckpt.tensors["compressor.latents"] + 1}
    save_weights(other, tensors, CheckpointMeta(meta.stage, meta.step, meta.config, meta.extra))
    out = tmp_path / "lat"
    _encode(trained_ae, tiny_env, out, limit=12)
    with pytest.raises(DiladiffError, match="come from another autoencoder") as err:
        LatentShards(out, autoencoder=other)
    assert "\n" not in str(err.value)
    with pytest.raises(DiladiffError, match="another autoencoder"):
        _encode(other, tiny_env, out, limit=12)
    with pytest.raises(DiladiffError, match="another shard size"):
        (out / "index.json").unlink()
        _encode(trained_ae, tiny_env, out, limit=12, shard_size=7)


def test_torchrun_two_processes_encode_the_same_latents(tiny_env, trained_ae, tmp_path):
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=trained_ae)
    recipe = {
        "name": "latents",
        "data": to_dict(tiny_env.data),
        "mdlm": {"model": {"vocab_size": 300}, "train": {}},
        "ae": to_dict(cfg),
        "encode": {
            "checkpoint": str(trained_ae),
            "splits": ["train"],
            "out": str(tmp_path / "lat"),
            "shard_size": 10,
            "batch_size": 4,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "diladiff_cli", "encode", str(path), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert record["latents"][0]["encoded"] == record["latents"][0]["shards"]
    shards = LatentShards(tmp_path / "lat" / "train", autoencoder=trained_ae)
    assert torch.equal(shards.all(), _reference(trained_ae, tiny_env))
