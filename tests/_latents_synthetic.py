"""Synthetic latents for the stage 2/3 tests: a Gaussian mixture written as `encode` writes
latents (sharded safetensors + index.json), so the tests never depend on stage 1."""

from __future__ import annotations

from pathlib import Path

import torch

from diladiff_cli.latent_shards import write_split

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
    record = {"path": "synthetic-ae.pt", "sha256": ae_sha, "step": 0}
    return write_split(directory, latents, split=split, autoencoder=record, shard_size=shard_size)
