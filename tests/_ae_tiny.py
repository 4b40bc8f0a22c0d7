"""PYTEST_DONT_REWRITE. Seconds-scale parts for the autoencoder and latent tests: a random 2-layer BERT with
the real WordPiece tokenizer, a prepared text corpus (trained 300-token BPE, L = 32),
a random base MDLM checkpoint, and a tiny stage config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from diladiff_cli import hub
from diladiff_cli.checkpoint import CheckpointMeta, save_weights
from diladiff_cli.config import (
    AEStageConfig,
    AugmentConfig,
    CompressorConfig,
    CorpusConfig,
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    TokenizerConfig,
    TrainConfig,
)
from diladiff_cli.data import DataInfo, DataRecord, prepare
from diladiff_cli.models.dit import DiT
from diladiff_cli.structs import to_dict

SEQ_LEN = 32
WORDS = (
    "the king and queen of a far country rode over the hills to see the sea where seven "
    "ships with white sails waited for the wind that never came to the old harbour town"
).split()


def randomize_zero_init(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give zero-initialised layers (adaLN, output, cross-attention outputs) random values,
    as training would: at init they hide most behaviour."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "output_layer.linear" in name or "to_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def build_bert(root: Path) -> Path:
    """A random 2-layer, 32-wide BERT with the real uncased WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    target = root / "tiny-bert"
    tokenizer = hub.load_tokenizer(str(hub.minilm_dir()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=96,
    )
    BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_data(root: Path) -> tuple[DataConfig, DataInfo]:
    rng = np.random.default_rng(0)
    docs = [
        f"Story {i}. " + " ".join(rng.choice(WORDS, size=8 + (i * 5) % 23)) + "." for i in range(90)
    ]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(docs) + "\n")
    cfg = DataConfig(
        corpus=CorpusConfig(source=str(corpus), valid_fraction=0.2),
        tokenizer=TokenizerConfig(vocab_size=300),
        seq_len=SEQ_LEN,
        out=str(root / "data"),
    )
    return cfg, prepare(cfg)


def build_mdlm(path: Path, info: DataInfo, data_dir: str, *, vocab_size: int | None = None) -> Path:
    """A random base MDLM checkpoint (zero-init layers randomised) of the `mdlm` stage."""
    torch.manual_seed(1)
    dit = DiT(
        vocab_size=vocab_size or info.vocab_size,
        hidden=32,
        depth=2,
        heads=2,
        cond_dim=16,
        max_len=SEQ_LEN,
        dropout=0.0,
    )
    randomize_zero_init(dit)
    meta = CheckpointMeta(
        stage="mdlm",
        step=7,
        config={"model": to_dict(dit.config), "noise_eps": 1e-3},
        extra=to_dict(DataRecord.of(info, data_dir)),
    )
    save_weights(path, dit.state_dict(), meta)
    return path


def ae_config(*, base: Path, bert: Path, out: Path, **changes) -> AEStageConfig:
    cfg = AEStageConfig(
        out=str(out),
        encoder=EncoderConfig(name=str(bert), max_len=48, stats_batches=2),
        compressor=CompressorConfig(num_latents=4, latent_dim=8, width=32, depth=1, heads=2),
        decoder=DecoderConfig(base=str(base), cross_attn_after=(0, 1), cross_attn_heads=2),
        augment=AugmentConfig(embed_noise=0.5, embed_mask=0.3, latent_mask=0.3, latent_dropout=0.2),
        latent_norm="stats",
        latent_stats_batches=2,
        train=TrainConfig(
            steps=3, batch_size=4, lr=3e-3, log_every=1, ckpt_every=2, eval_batches=1
        ),
    )
    return dataclasses.replace(cfg, **changes)


@dataclasses.dataclass
class TinyEnv:
    root: Path
    bert: Path
    data: DataConfig
    info: DataInfo
    base: Path


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory) -> TinyEnv:
    root = tmp_path_factory.mktemp("ae")
    data, info = build_data(root)
    base = build_mdlm(root / "mdlm.pt", info, data.out)
    return TinyEnv(root=root, bert=build_bert(root), data=data, info=info, base=base)


@pytest.fixture(scope="session")
def trained_ae(tiny_env: TinyEnv) -> Path:
    """A 3-step autoencoder checkpoint (latent statistics measured)."""
    from diladiff_cli.ae import train_ae
    from diladiff_cli.distributed import init_runtime

    out = tiny_env.root / "ae.pt"
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=out)
    train_ae(
        cfg=cfg,
        data=tiny_env.data,
        stage_config=to_dict(cfg),
        runtime=init_runtime("cpu"),
    )
    return out
