"""What the benchmark runs on: the recipe's trained checkpoints when all of them exist,
else random initialisation at the recipe's sizes, written as checkpoints to a temporary
directory (so that both cases run the same code), and random token blocks and two-view
batches of the recipe's shapes.

Frozen encoders whose weights are not on this machine are stood in for by a randomly
initialised BERT of the same shape with the uncased WordPiece vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diladiff_cli import hub
from diladiff_cli.ae import build_autoencoder
from diladiff_cli.checkpoint import CheckpointMeta, save_weights
from diladiff_cli.config import EncoderConfig, Recipe
from diladiff_cli.data import DataInfo, DataRecord, load_data_info, special_ids
from diladiff_cli.diffusion.masked import TokenBatch
from diladiff_cli.distributed import Runtime
from diladiff_cli.encoder import TwoViewBatch, load_encoder
from diladiff_cli.errors import DiladiffError
from diladiff_cli.latent_shards import file_sha256
from diladiff_cli.models.dit import DiT
from diladiff_cli.prior import (
    LatentData,
    LatentSource,
    fit_prior,
    fit_student,
    load_prior,
)
from diladiff_cli.structs import to_dict

# Frozen encoders the random-init mode can stand in for when their weights are not on
# this machine: a randomly initialised BERT of the same shape, with the uncased WordPiece
# vocabulary of all-MiniLM-L6-v2 (bert-base-uncased's, 30522 tokens).
RANDOM_ENCODER_SHAPES = {
    "bert-base-uncased": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "bert-large-uncased": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}


@dataclass
class Weights:
    """The checkpoints every stage starts from.

    Attributes:
        mdlm: a ``mdlm`` checkpoint.
        ae: an ``ae`` checkpoint (None when the recipe has no ``ae`` section).
        prior: a ``prior`` checkpoint (None without ``ae`` and ``prior`` sections).
        student: a ``distill`` checkpoint (None without a prior).
        trained: the recipe's trained checkpoints (False: random initialisation).
        origin: where they come from, in one line.
        notes: what the reader should know about them.
    """

    mdlm: Path
    ae: Path | None
    prior: Path | None
    student: Path | None
    trained: bool
    origin: str = ""
    notes: list[str] = field(default_factory=list)


class RandomBlocks:
    """Uniform random token blocks (the mask token never appears): throughput does not
    depend on the text."""

    def __init__(self, *, n: int, seq_len: int, vocab_size: int, mask_id: int) -> None:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab_size - 1, (n, seq_len), generator=g)
        self.tokens = tokens + (tokens >= mask_id).long()  # skip the mask id

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: np.ndarray) -> TokenBatch:
        return TokenBatch(tokens=self.tokens[torch.as_tensor(indices)])


class RandomTwoView:
    """Random blocks with a random encoder view of ``enc_len`` tokens (no padding: the
    longest a batch can be) and, for the cached variant, random encoder states."""

    def __init__(
        self, blocks: RandomBlocks, *, enc_len: int, enc_vocab: int, states_dim: int | None
    ) -> None:
        g = torch.Generator().manual_seed(1)
        n = len(blocks)
        self.blocks = blocks
        self.enc_ids = torch.randint(0, enc_vocab, (n, enc_len), generator=g)
        self.states = (
            None
            if states_dim is None
            else torch.randn(n, enc_len, states_dim, generator=g).half()  # (n, S, H)
        )

    def __len__(self) -> int:
        return len(self.blocks)

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        idx = torch.as_tensor(indices)
        ids = self.enc_ids[idx]
        return TwoViewBatch(
            tokens=self.blocks.tokens[idx],
            enc_ids=ids,
            enc_mask=torch.ones_like(ids, dtype=torch.bool),
            states=None if self.states is None else self.states[idx].float(),
        )


def prepared(recipe: Recipe) -> bool:
    return (Path(recipe.data.out) / "meta.json").is_file()


def vocabulary(recipe: Recipe, tmp: Path) -> DataInfo:
    """The data facts a random-init checkpoint records: the prepared data's, else the
    recipe's named tokenizer's (GPT-2 from the offline stand-in when the hub is out of reach).

    Raises:
        DiladiffError: no prepared data and a tokenizer the recipe trains itself.
    """
    if prepared(recipe):
        return load_data_info(recipe.data.out)
    name = recipe.data.tokenizer.name
    if name is None:
        raise DiladiffError(
            f"no prepared data at {recipe.data.out} and the recipe trains its own tokenizer: "
            "run `diladiff prepare` first (the samplers decode with the data's tokenizer)"
        )
    try:
        tokenizer, tokenizer_dir = hub.load_tokenizer(name), name
    except DiladiffError:
        if name != "gpt2":
            raise
        tokenizer_dir = str(hub.gpt2_tokenizer_dir(tmp))
        tokenizer = hub.load_tokenizer(tokenizer_dir)
    vocab_size, mask_id, bos_id, eos_id = special_ids(tokenizer)
    return DataInfo(
        out_dir=recipe.data.out,
        fingerprint="none",
        seq_len=recipe.data.seq_len,
        vocab_size=vocab_size,
        mask_id=mask_id,
        bos_id=bos_id,
        eos_id=eos_id,
        num_train_blocks=0,
        num_valid_blocks=0,
        num_train_documents=0,
        num_valid_documents=0,
        tokenizer_dir=tokenizer_dir,
        corpus="none (benchmark: random tokens)",
    )


def recipe_checkpoints(recipe: Recipe) -> dict[str, Path | None]:
    has_prior = recipe.ae is not None and recipe.prior is not None
    return {
        "mdlm": Path(recipe.mdlm.out),
        "ae": Path(recipe.ae.out) if recipe.ae is not None else None,
        "prior": Path(recipe.prior.out) if has_prior else None,
        "student": Path(recipe.distill.out) if has_prior else None,
    }


def stand_in_encoder(cfg: EncoderConfig, tmp: Path) -> tuple[EncoderConfig, str | None]:
    """The recipe's encoder when it loads; else, for a known shape, a random BERT of that
    shape saved under ``tmp`` (and a note saying so)."""
    try:
        load_encoder(cfg, device=torch.device("cpu"))
        return cfg, None
    except DiladiffError:
        if cfg.name not in RANDOM_ENCODER_SHAPES:
            raise
    from transformers import BertConfig, BertModel

    shape = RANDOM_ENCODER_SHAPES[cfg.name]
    target = tmp / f"random-{cfg.name}"
    tokenizer = hub.load_tokenizer(str(hub.minilm_dir()))
    config = BertConfig(
        vocab_size=len(tokenizer),
        intermediate_size=4 * shape["hidden_size"],
        max_position_embeddings=512,
        **shape,
    )
    BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    note = f"encoder: {cfg.name} is not on this machine; a random BERT of its shape stands in"
    return dataclasses.replace(cfg, name=str(target)), note


def random_checkpoints(recipe: Recipe, tmp: Path) -> Weights:
    """Random-init checkpoints at the recipe's sizes, in the stages' own formats."""
    cpu = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    info = vocabulary(recipe, tmp)
    extra = to_dict(DataRecord.of(info, recipe.data.out))
    torch.manual_seed(0)
    weights = Weights(mdlm=tmp / "mdlm.pt", ae=None, prior=None, student=None, trained=False)
    dit_cfg = recipe.mdlm.model
    save_weights(
        weights.mdlm,
        DiT.from_config(dit_cfg).state_dict(),
        CheckpointMeta(
            stage="mdlm",
            step=0,
            config={"model": to_dict(dit_cfg), "noise_eps": recipe.mdlm.noise_eps},
            extra=extra,
        ),
    )
    if recipe.ae is None:
        return weights
    encoder_cfg, note = stand_in_encoder(recipe.ae.encoder, tmp)
    if note:
        weights.notes.append(note)
    ae_cfg = dataclasses.replace(recipe.ae, encoder=encoder_cfg, out=str(tmp / "ae.pt"))
    encoder, _ = load_encoder(ae_cfg.encoder, device=torch.device("cpu"))
    # The decoder at the mdlm section's size: the recipes chain mdlm.out -> ae.decoder.base.
    model = build_autoencoder(ae_cfg, dit=DiT.from_config(dit_cfg), encoder_dim=encoder.hidden_size)
    weights.ae = tmp / "ae.pt"
    save_weights(
        weights.ae,
        model.state_dict(),
        CheckpointMeta(
            stage="ae",
            step=0,
            config=to_dict(ae_cfg),
            extra={
                **extra,
                "encoder_name": ae_cfg.encoder.name,
                "encoder_hidden": encoder.hidden_size,
                "decoder": to_dict(dit_cfg),
                "base_mdlm": "random init",
                "noise_eps": recipe.mdlm.noise_eps,
                "latent_stats": {"random_init": True},  # identity statistics
            },
        ),
    )
    if recipe.prior is None:
        return weights
    # Prior and student through their own stage functions, zero steps: exact formats.
    shape = model.latent_shape
    record = {
        "shape": list(shape),
        "normalization": {"kind": ae_cfg.latent_norm, "stats_sha256": None},
        "autoencoder": {"path": str(weights.ae), "sha256": file_sha256(weights.ae), "step": 0},
        "latents": None,
    }
    latents = LatentSource(torch.zeros(1, *shape))
    zero = {"steps": 0, "compile": False}
    prior_cfg = dataclasses.replace(
        recipe.prior,
        out=str(tmp / "ladiff.pt"),
        latents=None,
        autoencoder=str(weights.ae),
        train=dataclasses.replace(recipe.prior.train, **zero),
    )
    fit_prior(
        cfg=prior_cfg,
        data=LatentData(train=latents, valid=None, shape=shape, record=record),
        runtime=cpu,
        resume=False,
    )
    weights.prior = Path(prior_cfg.out)
    teacher = load_prior(weights.prior)
    student_cfg = dataclasses.replace(
        recipe.distill,
        teacher=prior_cfg.out,
        out=str(tmp / "diladiff.pt"),
        latents=None,
        train=dataclasses.replace(recipe.distill.train, **zero),
    )
    fit_student(
        cfg=student_cfg,
        teacher=teacher,
        data=LatentData(train=latents, valid=None, shape=shape, record=teacher.latent),
        runtime=cpu,
        resume=False,
    )
    weights.student = Path(student_cfg.out)
    return weights


def resolve_weights(recipe: Recipe, choice: str | None, tmp: Path) -> Weights:
    """``choice``: ``checkpoints``, ``random`` or None (checkpoints when all exist)."""
    named = {k: v for k, v in recipe_checkpoints(recipe).items() if v is not None}
    missing = [str(p) for p in named.values() if not p.is_file()]
    if choice == "checkpoints" and missing:
        raise DiladiffError(f"--use-checkpoints: missing {', '.join(missing)}")
    if choice == "checkpoints" or (choice is None and not missing):
        paths = ", ".join(str(p) for p in named.values())
        return Weights(
            **recipe_checkpoints(recipe), trained=True, origin=f"trained checkpoints {paths}"
        )
    weights = random_checkpoints(recipe, tmp)
    why = "--random-init" if choice == "random" else f"missing {', '.join(missing)}"
    weights.origin = f"random initialisation at the recipe's sizes ({why})"
    return weights
