"""Synthetic latents for the stage 2/3 tests: a Gaussian mixture written as `encode` writes
latents (sharded safetensors + index.json), so the tests never depend on stage 1."""

from __future__ import annotations

from pathlib import Path

import torch

from diladiff_cli.latent_shards import (
    LatentIndex,
    ShardRecord,
    shard_name,
    write_index,
    write_shard,
)

SHAPE = (4, 8)


def mixture(n: int, *, seed: int = 0, shape: tuple[int, int] = SHAPE) -> torch.Tensor:
    """``(n, N, D)`` draws of a 4-component Gaussian mixture (well separated, std 0.3)."""
    g = torch.Generator().manual_seed(1234)  # the same components for every seed
    centres = torch.randn(4, *shape, generator=g)
    g.manual_seed(seed)
    which = torch.randint(0, 4, (n,), generator=g)
    return centres[which] + 0.3 * torch.randn(n, *shape, generator=g)


def write_latents(
    directory: Path,
    latents: torch.Tensor,
    *,
    split: str = "train",
    ae_sha: str = "a" * 64,
    shard_size: int = 64,
) -> Path:
    """Write ``latents`` ``(n, N, D)`` as one complete split of `encode`'s output."""
    out = Path(directory) / split
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(latents), shard_size)):
        rows = latents[start : start + shard_size]
        record = ShardRecord(
            shard=k, start=start, count=len(rows), autoencoder_sha256=ae_sha, split=split
        )
        write_shard(out, record, rows, torch.arange(start, start + len(rows)))
        shards.append({"file": shard_name(k), "start": start, "count": len(rows)})
    write_index(
        out,
        LatentIndex(
            split=split,
            count=len(latents),
            shape=tuple(latents.shape[1:]),
            dtype="float32",
            shard_size=shard_size,
            shards=shards,
            normalization={"kind": "none"},
            autoencoder={"path": "synthetic-ae.pt", "sha256": ae_sha, "step": 0},
        ),
    )
    return out
