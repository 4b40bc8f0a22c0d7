"""Tiny stand-ins for the evaluation tests: prepared data, a judge, an MDLM checkpoint and
sample files, all built in a temporary directory in a few seconds (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diladiff_cli.checkpoint import CheckpointMeta, save_weights
from diladiff_cli.config import (
    CorpusConfig,
    DataConfig,
    DiTConfig,
    JudgeModelConfig,
    TokenizerConfig,
)
from diladiff_cli.data import DataRecord, load_data_info, prepare
from diladiff_cli.judge import build_judge, export_judge
from diladiff_cli.models.dit import DiT
from diladiff_cli.structs import to_dict

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wise owls watch from tall oak "
    "trees and a river runs past the old mill where children play"
).split()
SEQ_LEN = 16
VOCAB = 300


def make_data(root: Path, *, docs: int = 400) -> Path:
    """A prepared corpus of word salad: BPE vocab 300, blocks of 16 tokens."""
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=4 + i % 13)) + "." for i in range(docs)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(
        corpus=CorpusConfig(source=str(corpus), valid_fraction=0.25),
        tokenizer=TokenizerConfig(vocab_size=VOCAB),
        seq_len=SEQ_LEN,
        out=str(root / "data"),
    )
    prepare(cfg)
    return Path(cfg.out)


def make_judge(
    data_dir: Path,
    out: Path,
    *,
    n_positions: int = 32,
    valid_ppl: float | None = 42.0,
    seed: int = 0,
) -> Path:
    """An untrained GPT-2 judge exported the way `train-judge` exports it."""
    info = load_data_info(data_dir)
    torch.manual_seed(seed)
    model = build_judge(
        JudgeModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=n_positions),
        vocab_size=info.vocab_size,
        bos_id=info.bos_id,
        eos_id=info.eos_id,
    )
    record = {"valid_ppl": valid_ppl} if valid_ppl is not None else {}
    return export_judge(model, tokenizer_dir=info.tokenizer_dir, out=out, record=record)


def make_mdlm(data_dir: Path, path: Path, *, seed: int = 0) -> Path:
    """An untrained (randomly initialised, head perturbed) MDLM checkpoint."""
    info = load_data_info(data_dir)
    cfg = DiTConfig(
        vocab_size=info.vocab_size, hidden=16, depth=1, heads=2, cond_dim=8, max_len=SEQ_LEN,
        dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DiT.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised head would give uniform samples
            p.add_(0.05 * torch.randn_like(p))
    meta = CheckpointMeta(
        stage="mdlm",
        step=1,
        config={"model": to_dict(cfg), "noise_eps": 1e-3},
        extra=to_dict(DataRecord.of(info, data_dir)),
    )
    save_weights(path, model.state_dict(), meta)
    return path


def timing(**kw: float | str) -> dict:
    base = {
        "seconds_total": 2.0,
        "seconds_latent": 0.0,
        "seconds_discrete": 2.0,
        "forward_passes_discrete": 8.0,
        "forward_passes_latent": 0.0,
        "tokens_per_forward": SEQ_LEN / 8,
        "seconds_per_sample": 0.25,
        "latent_share": 0.0,
        "device": "cpu (1 threads)",
    }
    return {**base, **kw}


def write_samples(path: Path, tokens: np.ndarray, data_dir: Path, **meta: object) -> Path:
    """A sample file (JSONL + meta record) like `diladiff sample` writes."""
    info = load_data_info(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"index": i, "seed": 0, "text": "", "tokens": [int(t) for t in row]}) + "\n"
            for i, row in enumerate(tokens)
        )
    )
    record = {
        "samples": str(path),
        "num_samples": len(tokens),
        "settings": {"ndisc": 8, "selection": "random", "temperature": 1.0},
        "timing": timing(),
        "model": "mdlm",
        "checkpoint": None,
        "seq_len": info.seq_len,
        "tokenizer": str(Path(info.tokenizer_dir).resolve()),
        "vocab_size": info.vocab_size,
        **meta,
    }
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(record))
    return path


def shuffled_blocks(data_dir: Path, n: int, *, seed: int = 1) -> np.ndarray:
    """``n`` training blocks with their interiors shuffled: plausible-looking samples."""
    train = np.load(Path(data_dir) / "train.npy")
    rng = np.random.default_rng(seed)
    rows = train[rng.choice(len(train), size=n, replace=False)].astype(np.int64)
    for row in rows:
        rng.shuffle(row[1:-1])
    return rows
