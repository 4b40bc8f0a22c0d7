"""A stale or damaged cache never stands in for a new model or new data: sweep cells are
keyed by the checkpoints' and the judge's content, prepared data is reused only while its
files match their recorded sizes and checksums, and a damaged cell record, score, sample
file, floor or latent batch is redone instead of being reused or raising. CPU, offline,
seconds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import make_data, make_judge, make_mdlm

from diladiff_cli import data, pareto
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import (
    CorpusConfig,
    DataConfig,
    EvalConfig,
    GridConfig,
    MauveConfig,
    ParetoConfig,
    ScorerConfig,
    TokenizerConfig,
)
from diladiff_cli.data import file_checksum, load_blocks, prepare
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.pareto import HASHES_FILE, SweepResult, run_sweep
from diladiff_cli.sample import _cached_latents, _latent_cache_file, _store_latents


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stale")
    data_dir = make_data(root)
    return {"data": data_dir, "judge": make_judge(data_dir, root / "judge")}


def _sweep(setup: dict, out: Path, *, mdlm: Path, judge: Path | None = None) -> SweepResult:
    """One cell (MDLM, 2 steps, 8 samples), scored by the judge without MAUVE."""
    cfg = ParetoConfig(
        out=str(out),
        work_dir=str(out / "work"),
        checkpoints={"mdlm": str(mdlm)},
        grids=(GridConfig(ndisc=(2,), selection=("random",)),),
        num_samples=8,
        batch_size=8,
    )
    eval_cfg = EvalConfig(
        scorer=ScorerConfig(name=str(judge or setup["judge"])), mauve=MauveConfig(enabled=False)
    )
    runtime = init_runtime("cpu")
    return run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)


def _count_sampling(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = pareto.sample_cell
    monkeypatch.setattr(
        pareto, "sample_cell", lambda cell, **kw: calls.append(cell.name) or real(cell, **kw)
    )
    return calls


def _truncate(path: Path) -> None:
    """Cut a file in the middle of its content (mid-line for a JSONL file)."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2 + 1])


def _only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


# ----------------------------------------------------------------------------- sweep keys


def test_retrained_weights_with_the_same_metadata_are_sampled_again(setup, tmp_path, monkeypatch):
    """An MDLM rewritten with other weights but the same stage, step and config (what the
    old key was) is sampled again; the same weights written again are not."""
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt", seed=0)
    original = mdlm.read_bytes()
    calls = _count_sampling(monkeypatch)
    first = _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert len(calls) == 1 and first.cells_run == 1

    meta = read_meta(mdlm)
    make_mdlm(setup["data"], mdlm, seed=1)  # "retrained": other weights
    assert read_meta(mdlm) == meta and mdlm.read_bytes() != original
    calls.clear()
    retrained = _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert len(calls) == 1 and (retrained.cells_run, retrained.cells_cached) == (1, 0)
    assert retrained.seed_rows[0]["genppl"] != first.seed_rows[0]["genppl"]

    make_mdlm(setup["data"], mdlm, seed=0)  # the first weights again, a new file
    assert mdlm.read_bytes() == original
    calls.clear()
    again = _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert calls == [] and (again.cells_run, again.cells_cached) == (0, 1)
    assert again.rows == first.rows


def test_checkpoint_hashes_are_remembered_by_path_and_stat(setup, tmp_path, monkeypatch):
    """A checkpoint is hashed once while its stat stays the same; new weights with the
    same size and mtime (another inode and ctime) are hashed and sampled again."""
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt", seed=0)
    old = time.time_ns() - 3600 * 10**9  # an hour old: past the racy-clean window
    os.utime(mdlm, ns=(old, old))
    hashed: list[Path] = []
    real = pareto.file_sha256
    monkeypatch.setattr(pareto, "file_sha256", lambda p: hashed.append(Path(p)) or real(p))
    calls = _count_sampling(monkeypatch)
    _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert hashed.count(mdlm) == 1 and len(calls) == 1
    memo = json.loads((tmp_path / "out" / "work" / HASHES_FILE).read_text())
    assert memo[str(mdlm.resolve())]["sha256"] == real(mdlm)

    hashed.clear()
    calls.clear()
    again = _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert mdlm not in hashed and calls == [] and again.cells_cached == 1

    size = mdlm.stat().st_size
    make_mdlm(setup["data"], mdlm, seed=1)
    os.utime(mdlm, ns=(old, old))
    assert mdlm.stat().st_size == size and mdlm.stat().st_mtime_ns == old
    third = _sweep(setup, tmp_path / "out", mdlm=mdlm)
    assert hashed.count(mdlm) == 1 and len(calls) == 1 and third.cells_run == 1


def test_a_retrained_judge_rescores_without_resampling(setup, tmp_path, monkeypatch):
    """Judge weights rewritten with the same judge.json: the cell and the real-text floor
    are scored again (by the new judge), the samples are reused."""
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt")
    judge = make_judge(setup["data"], tmp_path / "judge", seed=0)
    record = (judge / "judge.json").read_text()
    first = _sweep(setup, tmp_path / "out", mdlm=mdlm, judge=judge)
    make_judge(setup["data"], judge, seed=1)
    assert (judge / "judge.json").read_text() == record
    calls = _count_sampling(monkeypatch)
    second = _sweep(setup, tmp_path / "out", mdlm=mdlm, judge=judge)
    assert calls == [] and second.cells_run == 1
    assert second.seed_rows[0]["genppl"] != first.seed_rows[0]["genppl"]
    assert second.floor.genppl != first.floor.genppl


# ----------------------------------------------------------------------------- damaged sweep files


def test_damaged_sweep_files_are_redone_not_reused(setup, tmp_path, monkeypatch):
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt")
    out = tmp_path / "out"
    first = _sweep(setup, out, mdlm=mdlm)
    cell = _only(out / "cells", "*.json")
    score = _only(out / "work" / "scores", "*.json")
    samples = _only(out / "work" / "samples", "*.jsonl")
    floors = [out / "floor.json", _only(out / "work" / "floors", "*.json")]
    calls = _count_sampling(monkeypatch)
    floors_computed: list[int] = []
    real_floor = pareto.Evaluator.floor
    monkeypatch.setattr(
        pareto.Evaluator,
        "floor",
        lambda self, num: floors_computed.append(num) or real_floor(self, num),
    )

    # A truncated cell record: rebuilt from its score, nothing sampled. A truncated
    # floor.json: read back from the work_dir's copy and rewritten.
    _truncate(cell)
    _truncate(floors[0])
    redone = _sweep(setup, out, mdlm=mdlm)
    assert calls == [] and floors_computed == [] and redone.cells_run == 1
    assert redone.seed_rows == first.seed_rows and redone.floor == first.floor
    assert json.loads(cell.read_text())["row"] == first.seed_rows[0]
    assert json.loads(floors[0].read_text())["floor"]["genppl"] == first.floor.genppl

    # Record, score and samples truncated (mid-line), both floors truncated: sampled,
    # scored and the floor computed again.
    for path in (cell, score, samples, *floors):
        _truncate(path)
    resampled = _sweep(setup, out, mdlm=mdlm)
    assert len(calls) == 1 and floors_computed == [8] and resampled.cells_run == 1
    assert len(samples.read_text().splitlines()) == 8
    assert resampled.seed_rows[0]["genppl"] == pytest.approx(first.seed_rows[0]["genppl"])
    assert resampled.floor.genppl == pytest.approx(first.floor.genppl)

    # Samples cut at a line boundary (every line parses, one is missing), and samples
    # that are not text at all: sampled again.
    for damage in (
        lambda: samples.write_text("".join(samples.read_text().splitlines(True)[:-1])),
        lambda: samples.write_bytes(b"\xff\xfe\x00garbage"),
    ):
        cell.unlink()
        score.unlink()
        damage()
        calls.clear()
        again = _sweep(setup, out, mdlm=mdlm)
        assert len(calls) == 1 and again.cells_run == 1
        assert len(samples.read_text().splitlines()) == 8


# ----------------------------------------------------------------------------- prepared data


def _data_cfg(root: Path) -> DataConfig:
    rng = np.random.default_rng(0)
    words = "a river runs past the old mill where seven owls watch the quiet fields".split()
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 5 + i % 9)) for i in range(60)))
    return DataConfig(
        corpus=CorpusConfig(source=str(corpus), valid_fraction=0.25),
        tokenizer=TokenizerConfig(vocab_size=300),
        seq_len=16,
        out=str(root / "data"),
    )


def test_damaged_prepared_data_is_built_again(tmp_path):
    """A truncated train.npy (caught by its size), a changed byte (by its checksum), a
    changed tokenizer file, and a meta.json without checksums (an older version's) are
    all rebuilt instead of reused; the rebuilt blocks equal the first ones."""
    cfg = _data_cfg(tmp_path)
    info = prepare(cfg)
    out = Path(cfg.out)
    blocks = np.load(out / "train.npy")
    meta = json.loads((out / "meta.json").read_text())
    assert {"train.npy", "valid.npy", "tokenizer/tokenizer.json"} <= set(meta["files"])
    assert meta["files"]["train.npy"]["size"] == (out / "train.npy").stat().st_size

    train = out / "train.npy"
    train.write_bytes(train.read_bytes()[:-10])
    with pytest.raises(DiladiffError, match="train.npy is damaged") as err:
        load_blocks(out, "train")
    assert "\n" not in str(err.value)

    def flip_middle_byte() -> None:
        raw = bytearray(train.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        train.write_bytes(bytes(raw))

    def drop_checksums() -> None:
        record = json.loads((out / "meta.json").read_text())
        del record["files"]
        (out / "meta.json").write_text(json.dumps(record))

    damages = [
        (lambda: None, "train.npy is"),  # the truncation above
        (flip_middle_byte, "train.npy does not match its checksum"),
        (lambda: (out / "tokenizer" / "tokenizer.json").write_text("{}"), "tokenizer.json"),
        (drop_checksums, "no file checksums"),
    ]
    for damage, message in damages:
        damage()
        said: list[str] = []
        again = prepare(cfg, progress=said.append)
        assert not again.reused and any(message in m and "not reusing" in m for m in said), said
        assert again == info
        assert np.array_equal(np.load(train), blocks)
    assert prepare(cfg).reused  # intact again


def test_sampled_checksum_of_large_files(tmp_path, monkeypatch):
    """Beyond FULL_CHECKSUM_BYTES the checksum reads evenly spaced chunks: it sees the
    size, the first and the last byte, not a byte between two chunks (the documented
    trade-off)."""
    monkeypatch.setattr(data, "FULL_CHECKSUM_BYTES", 1024)
    monkeypatch.setattr(data, "CHECKSUM_CHUNK_BYTES", 16)
    path = tmp_path / "big.npy"
    raw = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()

    def checksum_with(index: int | None = None, *, cut: int = 0) -> str:
        changed = bytearray(raw[: len(raw) - cut])
        if index is not None:
            changed[index] ^= 0xFF
        path.write_bytes(bytes(changed))
        return file_checksum(path)

    base = checksum_with()
    assert base.startswith("sampled-sha256:")
    assert checksum_with(0) != base and checksum_with(len(raw) - 1) != base
    assert checksum_with(cut=1) != base
    assert checksum_with(100) == base  # between chunk 0 ([0, 16)) and chunk 1 (~[158, 174))
    path.write_bytes(raw[:1000])
    assert file_checksum(path).startswith("sha256:")


# ----------------------------------------------------------------------------- latents


def test_damaged_latent_cache_files_are_drawn_again(tmp_path):
    z = torch.randn(4, 3, 8)
    _store_latents(tmp_path, "abc-cpu", 3, 7, z, 1.5, 10)
    latents, seconds, passes = _cached_latents(tmp_path, "abc-cpu", 3, 7, 4)
    assert torch.equal(latents, z) and (seconds, passes) == (1.5, 10)
    assert _cached_latents(tmp_path, "other-cpu", 3, 7, 4) is None  # another model's key
    path = _latent_cache_file(tmp_path, "abc-cpu", 3, 7, 4)
    good = path.read_bytes()

    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # a byte of the latents, the header intact
    for damaged in (good[:-5], good[:20], bytes(flipped), b"not a safetensors file"):
        path.write_bytes(damaged)
        assert _cached_latents(tmp_path, "abc-cpu", 3, 7, 4) is None

    import safetensors.torch  # a file written before the checksum: not trusted

    path.write_bytes(
        safetensors.torch.save({"latents": z}, metadata={"seconds": "1.5", "forward_passes": "10"})
    )
    assert _cached_latents(tmp_path, "abc-cpu", 3, 7, 4) is None
    _store_latents(tmp_path, "abc-cpu", 3, 7, z, 1.5, 10)  # drawn again: rewritten
    assert torch.equal(_cached_latents(tmp_path, "abc-cpu", 3, 7, 4)[0], z)
