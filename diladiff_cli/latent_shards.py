"""Latent shards on disk: what `encode` writes and the latent prior reads.

A latent directory holds one split::

    shard-00000.safetensors   "latents" (n, N, D) and "indices" (n,) int64 block ids,
                              with the shard's own record in the metadata
    shard-00001.safetensors
    ...
    index.json                written last: count, shape, dtype, the shards, the
                              latent normalisation (with its statistics) and the
                              autoencoder checkpoint they came from (path, sha256)

Shard ``k`` always holds blocks ``[k * shard_size, min(count, (k + 1) * shard_size))``,
so the plan is a pure function of (count, shard_size): an interrupted run resumes by
skipping the shards already on disk, and no block can be written twice. Every file
is written atomically; a directory without ``index.json`` is incomplete.

The autoencoder is identified by the sha256 of its checkpoint file: latents from one
autoencoder can never be mistaken for another's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_bytes, atomic_write_json

FORMAT = "diladiff-latents"
VERSION = 1
INDEX = "index.json"
META_KEY = "diladiff_latents"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (the identity of an autoencoder checkpoint)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


@dataclass(frozen=True)
class ShardPlan:
    """Which blocks each shard holds: shard k covers ``[start, start + count)``."""

    count: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.count < 1 or self.shard_size < 1:
            raise DiladiffError("a latent split needs at least one block and shard_size >= 1")

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def range(self, k: int) -> tuple[int, int]:
        """``(start, count)`` of shard k."""
        start = k * self.shard_size
        return start, min(self.shard_size, self.count - start)

    def for_rank(self, rank: int, world_size: int) -> list[int]:
        """The contiguous range of shard ids that process ``rank`` encodes."""
        return [int(k) for k in np.array_split(np.arange(self.num_shards), world_size)[rank]]


@dataclass(frozen=True)
class ShardRecord:
    """What a shard says about itself (its safetensors metadata)."""

    shard: int
    start: int
    count: int
    autoencoder_sha256: str
    split: str


def write_shard(
    directory: str | Path,
    record: ShardRecord,
    latents: torch.Tensor,
    indices: torch.Tensor,
) -> Path:
    """Atomically write shard ``record.shard``.

    Args:
        directory: the latent directory.
        record: the shard's identity.
        latents: ``(n, N, D)`` latents.
        indices: ``(n,)`` block indices of the rows.

    Returns:
        The shard path.
    """
    if latents.shape[0] != record.count or indices.shape != (record.count,):
        raise ValueError(
            f"shard {record.shard}: expected {record.count} rows, got {latents.shape[0]}"
        )
    path = Path(directory) / shard_name(record.shard)
    tensors = {
        "latents": latents.detach().cpu().contiguous(),
        "indices": indices.detach().cpu().long().contiguous(),
    }
    meta = {META_KEY: json.dumps(record.__dict__)}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=meta))
    return path


def read_shard_record(path: str | Path) -> ShardRecord | None:
    """The record of a shard file, or None when the file is not a readable shard."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
        return ShardRecord(**json.loads(raw)) if raw else None
    except Exception:  # a foreign or truncated file is simply not a shard
        return None


@dataclass(frozen=True)
class LatentIndex:
    """``index.json`` of a latent directory.

    Attributes:
        split: the data split encoded.
        count: number of latents (= blocks).
        shape: ``(N, D)`` of one latent.
        dtype: tensor dtype name (``float32``).
        shard_size: blocks per shard (the last shard may hold fewer).
        shards: ``[{"file", "start", "count"}]`` in order.
        normalization: ``{"kind": "none" | "l2" | "stats"}``; for ``"stats"`` also
            ``"mean"`` and ``"std"`` ``(N, D)`` nested lists: the latents on disk are
            normalised, ``raw = z * std + mean``.
        autoencoder: ``{"path", "sha256", "step"}`` of the checkpoint.
        data: ``{"dir", "fingerprint", "seq_len"}`` of the prepared data.
    """

    split: str
    count: int
    shape: tuple[int, int]
    dtype: str
    shard_size: int
    shards: list[dict[str, Any]]
    normalization: dict[str, Any]
    autoencoder: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.__dict__, "shape": list(self.shape)}


def write_index(directory: str | Path, index: LatentIndex) -> Path:
    """Atomically write ``index.json`` (the last file of a complete split)."""
    path = Path(directory) / INDEX
    atomic_write_json(path, index.to_json(), indent=1)
    return path


def load_index(directory: str | Path) -> LatentIndex:
    """Read ``index.json``.

    Raises:
        DiladiffError: no (complete) latent split there.
    """
    path = Path(directory) / INDEX
    if not path.is_file():
        raise DiladiffError(
            f"no latents at {directory} (no {INDEX}): run `diladiff encode` (it resumes an "
            "interrupted run)"
        )
    try:
        doc = json.loads(path.read_text())
        if doc.pop("format", None) != FORMAT or doc.pop("version", None) != VERSION:
            raise ValueError("not a diladiff latent index of this version")
        doc["shape"] = tuple(doc["shape"])
        return LatentIndex(**doc)
    except (ValueError, TypeError, KeyError) as err:
        raise DiladiffError(f"unreadable latent index {path}: {err}") from None


def check_source(index: LatentIndex, checkpoint: str | Path, *, where: str | Path) -> None:
    """Raise unless the latents come from exactly this autoencoder checkpoint.

    Raises:
        DiladiffError: one line naming both checkpoints.
    """
    sha = file_sha256(checkpoint)
    if index.autoencoder.get("sha256") != sha:
        raise DiladiffError(
            f"the latents in {where} come from another autoencoder "
            f"({index.autoencoder.get('path')}, sha256 {str(index.autoencoder.get('sha256'))[:12]}), "
            f"not {checkpoint} (sha256 {sha[:12]}): encode again with this checkpoint"
        )


class LatentShards:
    """A complete latent split, read back exactly as written.

    Args:
        directory: the latent directory.
        autoencoder: when given, the checkpoint the latents must come from
            (checked by sha256; a mismatch is a one-line :class:`DiladiffError`).

    Shards are loaded on first use and kept in memory.
    """

    def __init__(self, directory: str | Path, *, autoencoder: str | Path | None = None) -> None:
        self.directory = Path(directory)
        self.index = load_index(self.directory)
        if autoencoder is not None:
            check_source(self.index, autoencoder, where=self.directory)
        self._starts = np.array([s["start"] for s in self.index.shards], dtype=np.int64)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.index.count

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, D)`` of one latent."""
        return self.index.shape

    def _shard(self, k: int) -> torch.Tensor:
        if k not in self._cache:
            info = self.index.shards[k]
            path = self.directory / info["file"]
            record = read_shard_record(path)
            expected = (k, info["start"], info["count"], self.index.autoencoder["sha256"])
            if not path.is_file():
                raise DiladiffError(f"latent shard {path} is missing: run `diladiff encode`")
            if record is None:
                raise DiladiffError(
                    f"latent shard {path} is unreadable (truncated or not a shard): delete it "
                    "and run `diladiff encode` again"
                )
            if (record.shard, record.start, record.count, record.autoencoder_sha256) != expected:
                raise DiladiffError(f"latent shard {path} does not match {INDEX}")
            self._cache[k] = safetensors.torch.load_file(str(path))["latents"]
        return self._cache[k]

    def latents(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """The latents of blocks ``indices`` as ``(B, N, D)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.index.count):
            raise IndexError(f"latent index out of range [0, {self.index.count})")
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        out = torch.empty(len(idx), *self.shape, dtype=getattr(torch, self.index.dtype))
        for k in np.unique(shard_of):
            rows = shard_of == k
            out[torch.from_numpy(rows)] = self._shard(int(k))[
                torch.from_numpy(idx[rows] - self._starts[k])
            ]
        return out

    def all(self) -> torch.Tensor:
        """Every latent, ``(count, N, D)``, in block order."""
        return torch.cat([self._shard(k) for k in range(len(self.index.shards))])


def write_split(
    directory: str | Path,
    latents: torch.Tensor,
    *,
    split: str,
    autoencoder: dict[str, Any],
    shard_size: int,
    normalization: dict[str, Any] | None = None,
) -> Path:
    """Write latents ``(n, N, D)`` known in full as one complete split, laid out as
    `encode` lays out its own (stand-in and synthetic latents use it).

    Args:
        directory: the latent directory; the split goes to ``directory/split``.
        latents: the latents, float32.
        split: ``train`` or ``valid``.
        autoencoder: the record naming the autoencoder (``path``, ``sha256``, ``step``).
        shard_size: latents per shard.
        normalization: how they are normalised (default: not at all).

    Returns:
        The split's directory.
    """
    out = Path(directory) / split
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(latents), shard_size)):
        rows = latents[start : start + shard_size]
        record = ShardRecord(
            shard=k,
            start=start,
            count=len(rows),
            autoencoder_sha256=autoencoder["sha256"],
            split=split,
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
            normalization=normalization or {"kind": "none"},
            autoencoder=autoencoder,
        ),
    )
    return out
