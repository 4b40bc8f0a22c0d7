"""`encode`: texts or whole splits to latents with a trained autoencoder.

A split is written as sharded safetensors (resumable: finished shards are kept and
checked against the autoencoder's sha256); free texts as one safetensors file.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from diladiff_cli import hub
from diladiff_cli.ae import LoadedAutoencoder, load_autoencoder
from diladiff_cli.config.stages import EncodeConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.data import DataInfo, load_data_info
from diladiff_cli.distributed import Runtime, barrier, held_by_main
from diladiff_cli.encoder import TwoViewBlocks, tokenize_for_encoder
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_bytes, read_utf8
from diladiff_cli.latent_shards import (
    LatentIndex,
    ShardPlan,
    ShardRecord,
    load_index,
    read_shard_record,
    shard_name,
    write_index,
    write_shard,
)
from diladiff_cli.locks import output_lock
from diladiff_cli.train import Reporter, autocast


@dataclass
class EncodedTexts:
    """Latents of free texts.

    Attributes:
        latents: ``(B, N, D)`` normalised latents.
        lengths: encoder tokens of each text ([CLS]/[SEP] included, before truncation).
        truncated: indices of the texts cut at the encoder's max length.
    """

    latents: torch.Tensor
    lengths: list[int]
    truncated: list[int]


def encode_texts(
    loaded: LoadedAutoencoder, texts: list[str], *, truncate: bool = False
) -> EncodedTexts:
    """Encode free texts with the frozen encoder and the compressor.

    Args:
        loaded: the autoencoder.
        texts: one or more texts.
        truncate: cut texts longer than the encoder's max length (else refuse).

    Raises:
        DiladiffError: a text is empty or, without ``truncate``, longer than the
            encoder's max length.
    """
    if not texts or any(not t.strip() for t in texts):
        raise DiladiffError("nothing to encode: empty text")
    loaded.require_encoder()  # the bound encodes no text
    max_len = loaded.config.encoder.max_len
    view = tokenize_for_encoder(loaded.encoder_tokenizer, texts, max_len=max_len)
    lengths = view.lengths.tolist()
    long = [i for i, n in enumerate(lengths) if n > max_len]
    if long and not truncate:
        i = long[0]
        raise DiladiffError(
            f"text {i} is {lengths[i]} encoder tokens, longer than the encoder's max length "
            f"{max_len}: shorten it or pass --truncate to encode its first {max_len} tokens"
        )
    return EncodedTexts(latents=loaded.encode_view(view).cpu(), lengths=lengths, truncated=long)


@dataclass
class EncodeResult:
    """What `encode` did for one split.

    Attributes:
        split: the split.
        out: its latent directory.
        count: latents in it.
        shape: ``(N, D)``.
        shards: shards in it.
        encoded: shards encoded by this call (all processes).
        reused: shards found complete on disk and kept.
        seconds: wall time.
    """

    split: str
    out: str
    count: int
    shape: tuple[int, int]
    shards: int
    encoded: int
    reused: int
    seconds: float


def encode_split(
    *,
    checkpoint: str | Path,
    data_dir: str | Path,
    split: str,
    out: str | Path,
    shard_size: int,
    batch_size: int,
    runtime: Runtime,
    precision: Precision = "fp32",
    limit: int | None = None,
    reporter: Reporter | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> EncodeResult:
    """Encode every block of a split into sharded safetensors plus ``index.json``.

    Resumable: shards already on disk (same autoencoder, same range) are kept, the
    others encoded; the index is written last. Under torchrun each process encodes
    its own contiguous range of shards; rank 0 writes the index.

    Args:
        checkpoint: the autoencoder.
        data_dir: the prepared data.
        split: ``"train"`` or ``"valid"``.
        out: the latent directory of this split.
        shard_size: latents per shard.
        batch_size: blocks per forward.
        runtime: process topology and device.
        precision: autocast precision of the compressor (latents are stored fp32).
        limit: encode only the first ``limit`` blocks.
        reporter: progress sink.
        on_shard: called with the shard id after each shard is written (tests).

    Raises:
        DiladiffError: ``out`` holds latents of another autoencoder or another
            sharding; the data is missing; another run is writing ``out``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    # One writer per latent directory, for the whole split: two runs would interleave
    # their shards. Only the main process holds it (it creates, cleans and indexes out).
    with held_by_main(output_lock(out), runtime, what=f"the output {out}"):
        loaded = load_autoencoder(checkpoint, device=runtime.device)
        info = load_data_info(data_dir)
        data = TwoViewBlocks(
            data_dir=data_dir,
            split=split,
            decoder_tokenizer=hub.load_tokenizer(info.tokenizer_dir),
            encoder_tokenizer=loaded.encoder_tokenizer,
            max_len=loaded.config.encoder.max_len,
            limit=limit,
        )
        plan = ShardPlan(count=len(data), shard_size=shard_size)
        _check_existing(out, loaded, plan)
        if runtime.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for tmp in out.glob(".shard-*.tmp"):  # left by a killed write
                tmp.unlink(missing_ok=True)
        barrier()

        mine = plan.for_rank(runtime.rank, runtime.world_size)
        todo = [k for k in mine if not _shard_done(out, k, plan, loaded.sha256, split)]
        if reporter is not None:
            reporter.start(
                total=len(mine), done=len(mine) - len(todo), description=f"encode {split}"
            )
        try:
            for k in todo:
                start, count = plan.range(k)
                latents = _encode_range(loaded, data, start, count, batch_size, runtime, precision)
                record = ShardRecord(
                    shard=k, start=start, count=count, autoencoder_sha256=loaded.sha256, split=split
                )
                write_shard(out, record, latents, torch.arange(start, start + count))
                if reporter is not None:
                    reporter.update(step=mine.index(k) + 1, metrics={})
                if on_shard is not None:
                    on_shard(k)
        finally:
            if reporter is not None:
                reporter.stop()
        encoded = torch.tensor([len(todo)], dtype=torch.float64, device=runtime.device)
        if runtime.distributed:
            torch.distributed.all_reduce(encoded)
        barrier()
        if runtime.is_main:
            _finish_index(out, loaded, plan, split, data_dir, info)
        barrier()
        n_encoded = int(encoded.item())
        return EncodeResult(
            split=split,
            out=str(out),
            count=plan.count,
            shape=loaded.model.latent_shape,
            shards=plan.num_shards,
            encoded=n_encoded,
            reused=plan.num_shards - n_encoded,
            seconds=time.perf_counter() - t0,
        )


def _encode_range(
    loaded: LoadedAutoencoder,
    data: TwoViewBlocks,
    start: int,
    count: int,
    batch_size: int,
    runtime: Runtime,
    precision: Precision,
) -> torch.Tensor:
    """Latents ``(count, N, D)`` (fp32, CPU) of blocks ``start .. start + count - 1``."""
    rows = []
    for lo in range(start, start + count, batch_size):
        idx = np.arange(lo, min(start + count, lo + batch_size))
        with autocast(runtime.device, precision):
            rows.append(loaded.encode_view(data.batch(idx)).cpu())
    return torch.cat(rows)


def _finish_index(
    out: Path,
    loaded: LoadedAutoencoder,
    plan: ShardPlan,
    split: str,
    data_dir: str | Path,
    info: DataInfo,
) -> None:
    """Check that every shard is there, then write the split's ``index.json`` (last)."""
    missing = [
        k for k in range(plan.num_shards) if not _shard_done(out, k, plan, loaded.sha256, split)
    ]
    if missing:
        raise DiladiffError(f"latent shard {missing[0]} of {out} is missing after encoding")
    write_index(
        out,
        LatentIndex(
            split=split,
            count=plan.count,
            shape=loaded.model.latent_shape,
            dtype="float32",
            shard_size=plan.shard_size,
            shards=[
                {"file": shard_name(k), "start": plan.range(k)[0], "count": plan.range(k)[1]}
                for k in range(plan.num_shards)
            ],
            normalization=loaded.normalization(),
            autoencoder={
                "path": str(loaded.path.resolve()),
                "sha256": loaded.sha256,
                "step": loaded.step,
            },
            data={
                "dir": str(Path(data_dir).resolve()),
                "fingerprint": info.fingerprint,
                "seq_len": info.seq_len,
            },
        ),
    )


def _check_existing(out: Path, loaded: LoadedAutoencoder, plan: ShardPlan) -> None:
    """Refuse to mix latents of another autoencoder or another sharding in ``out``."""
    if (out / "index.json").is_file():
        index = load_index(out)
        if index.autoencoder.get("sha256") != loaded.sha256:
            raise DiladiffError(
                f"{out} holds latents of another autoencoder ({index.autoencoder.get('path')}): "
                "choose another --out or delete it"
            )
    for path in sorted(out.glob("shard-*.safetensors")) if out.is_dir() else []:
        record = read_shard_record(path)
        if record is None:
            raise DiladiffError(f"{path} is not a latent shard: delete it or choose another --out")
        if record.autoencoder_sha256 != loaded.sha256:
            raise DiladiffError(
                f"{out} holds latent shards of another autoencoder: choose another --out or "
                "delete it"
            )
        if record.shard >= plan.num_shards or plan.range(record.shard) != (
            record.start,
            record.count,
        ):
            raise DiladiffError(
                f"{out} holds shards of another shard size or block count: use the same "
                "--shard-size (and data) as before, or another --out"
            )


def _shard_done(out: Path, k: int, plan: ShardPlan, sha: str, split: str) -> bool:
    record = read_shard_record(out / shard_name(k))
    start, count = plan.range(k)
    return record == ShardRecord(
        shard=k, start=start, count=count, autoencoder_sha256=sha, split=split
    )


def save_text_latents(path: str | Path, encoded: EncodedTexts, loaded: LoadedAutoencoder) -> None:
    """Write latents of free texts as one safetensors file (``latents`` ``(B, N, D)``)
    with the autoencoder's identity and normalisation in its metadata."""
    meta = {
        "autoencoder": json.dumps({"path": str(loaded.path.resolve()), "sha256": loaded.sha256}),
        "normalization": json.dumps({"kind": loaded.model.latent_norm}),
        "lengths": json.dumps(encoded.lengths),
    }
    data = safetensors.torch.save({"latents": encoded.latents.contiguous()}, metadata=meta)
    atomic_write_bytes(path, data)


def read_text_file(path: str | Path) -> list[str]:
    """The texts of a file, one per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise DiladiffError(f"text file not found: {path}")
    return [line for line in read_utf8(path).splitlines() if line.strip()]


def encode_given_texts(
    *,
    checkpoint: str | Path,
    texts: list[str],
    device: torch.device,
    truncate: bool = False,
    save: str | Path | None = None,
) -> dict[str, Any]:
    """Encode free texts; optionally write them with :func:`save_text_latents`.

    Returns:
        The record `encode --text` prints: shape, normalisation, encoder lengths, which
        texts were cut, where they were saved, and the latents rounded to 4 digits.
    """
    with contextlib.ExitStack() as held:
        if save is not None:  # one writer per file, from before the autoencoder loads
            held.enter_context(output_lock(save))
        loaded = load_autoencoder(checkpoint, device=device)
        encoded = encode_texts(loaded, texts, truncate=truncate)
        if save is not None:
            save_text_latents(save, encoded, loaded)
    return {
        "checkpoint": str(checkpoint),
        "shape": list(encoded.latents.shape),
        "normalization": loaded.model.latent_norm,
        "encoder_tokens": encoded.lengths,
        "truncated": encoded.truncated,
        "saved": str(save) if save is not None else None,
        "latents": [[[round(v, 4) for v in row] for row in z] for z in encoded.latents.tolist()],
    }


def encode_splits(
    cfg: EncodeConfig,
    *,
    data_dir: str | Path,
    runtime: Runtime,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
) -> list[EncodeResult]:
    """Every split of ``cfg.splits`` into ``cfg.out/<split>/`` (see :func:`encode_split`)."""
    return [
        encode_split(
            checkpoint=cfg.checkpoint,
            data_dir=data_dir,
            split=name,
            out=Path(cfg.out) / name,
            shard_size=cfg.shard_size,
            batch_size=cfg.batch_size,
            runtime=runtime,
            precision=precision,
            limit=cfg.limit or None,
            reporter=reporter,
        )
        for name in cfg.splits
    ]
