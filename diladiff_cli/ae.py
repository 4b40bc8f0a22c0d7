"""Stage 1, the latent autoencoder (`train-ae`): build, objective, train, load, decode.

The two views of a block and the frozen encoder are :mod:`diladiff_cli.encoder`'s;
writing latents is :mod:`diladiff_cli.encode`'s; reconstruction sampling is a mode of
:func:`diladiff_cli.sample.generate`.

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

The perfect-latent bound (``encoder.name: oracle-topic``, oracle corpus only) is the
same decoder, objective and loop with another input: no encoder, each block's states
are the one-hot of its document's topic (:class:`~diladiff_cli.encoder.OracleTopicBlocks`),
and the compressor is the topic's learned embedding
(:class:`~diladiff_cli.models.autoencoder.TopicEmbedding`), so z is the topic; the
decoder, its cross-attention and the budget are the autoencoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diladiff_cli import hub
from diladiff_cli.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    load_into,
    read_meta,
    save_weights,
)
from diladiff_cli.config.data import DataConfig
from diladiff_cli.config.models import DiTConfig
from diladiff_cli.config.stages import (
    ORACLE_TOPIC,
    AEStageConfig,
    AugmentConfig,
)
from diladiff_cli.config.train import Precision
from diladiff_cli.data import DataInfo, DataRecord, load_data_info
from diladiff_cli.diffusion.masked import (
    LogLinearSchedule,
    MaskedDiffusionLoss,
    SampleOutput,
    TokenBatch,
    sample_masked,
)
from diladiff_cli.distributed import Runtime, barrier, held_by_main, raise_together
from diladiff_cli.encoder import (
    CachedStates,
    EncoderView,
    OracleTopicBlocks,
    TwoViewBatch,
    TwoViewBlocks,
    load_encoder,
    state_statistics,
    topic_statistics,
)
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.latent_shards import (
    file_sha256,
)
from diladiff_cli.locks import output_lock
from diladiff_cli.mdlm import check_model_fits_data, load_mdlm
from diladiff_cli.models.autoencoder import (
    Autoencoder,
    Corruption,
    FrozenEncoder,
    LatentDecoder,
    TopicEmbedding,
)
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.mdlm_import import load_mdlm_pretrained
from diladiff_cli.models.perceiver import PerceiverCompressor
from diladiff_cli.objective import LossOutput, StepContext, unwrap
from diladiff_cli.oracle import Oracle, load_oracle
from diladiff_cli.structs import from_dict, to_dict
from diladiff_cli.train import Reporter, TrainResult, autocast, seed_everything, train

STAGE = "ae"


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
        if loaded.data.mask_id != info.mask_id:
            raise DiladiffError(
                f"decoder.base {source}: its mask token {loaded.data.mask_id} is not the "
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
    if cfg.encoder.name == ORACLE_TOPIC:  # the bound: encoder_dim is the number of topics
        compressor = TopicEmbedding(
            num_topics=encoder_dim, num_latents=c.num_latents, latent_dim=c.latent_dim
        )
    else:
        compressor = PerceiverCompressor.from_config(c, input_dim=encoder_dim)
    return Autoencoder(
        encoder_dim=encoder_dim,
        compressor=compressor,
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
        encoder: the frozen encoder (on the training device); None when every batch
            carries its states (the bound's topic one-hots).
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
        encoder: FrozenEncoder | None,
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
    statistics with the final weights and store them in the checkpoint. With
    ``ae.encoder.name: oracle-topic`` (the perfect-latent bound, oracle corpora only) the
    states of a block are the one-hot ``(1, K)`` of its document's topic, normalised by
    the prior's exact statistics, instead of the frozen encoder's; the rest is the same.

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
    bound = cfg.encoder.name == ORACLE_TOPIC
    info = load_data_info(data.out)
    oracle = _bound_oracle(data.out) if bound else None
    encoder, enc_tokenizer = (None, None)
    if oracle is None:
        encoder, enc_tokenizer = load_encoder(cfg.encoder, device=runtime.device)
    base = load_base_decoder(cfg.decoder.base, info)
    dec_tokenizer = hub.load_tokenizer(info.tokenizer_dir)
    seed_everything(cfg.train.seed)
    encoder_dim = encoder.hidden_size if encoder is not None else oracle.num_topics
    model = build_autoencoder(cfg, dit=base.dit, encoder_dim=encoder_dim)
    # cache_blocks: train on the first N blocks (the bound too, so that it sees the
    # autoencoder's data as well as its steps).
    limit = cfg.encoder.cache_blocks or None
    if oracle is not None:  # the states of a block: the one-hot (1, K) of its topic

        def source(split: str, limit: int | None = None) -> Any:
            return OracleTopicBlocks(
                data_dir=data.out,
                split=split,
                decoder_tokenizer=dec_tokenizer,
                oracle=oracle,
                limit=limit,
            )

    else:

        def source(split: str, limit: int | None = None) -> Any:
            return TwoViewBlocks(
                data_dir=data.out,
                split=split,
                decoder_tokenizer=dec_tokenizer,
                encoder_tokenizer=enc_tokenizer,
                max_len=cfg.encoder.max_len,
                limit=limit,
            )

    train_data, valid_data = source("train", limit), source("valid")
    if encoder is not None and cfg.encoder.cache_blocks:
        train_data = CachedStates(train_data, encoder=encoder, device=runtime.device)
    if cfg.encoder.normalize and oracle is not None:  # the prior's exact statistics
        model.set_state_stats(*topic_statistics(oracle.prior))
    elif cfg.encoder.normalize:
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
        max_len=cfg.encoder.max_len if oracle is None else 1,  # the bound: one state
    )
    extra = {
        **to_dict(DataRecord.of(info, data.out)),
        "encoder_name": cfg.encoder.name,
        "encoder_hidden": encoder_dim,
    }
    if oracle is not None:
        extra["bound"] = {
            "conditioning": "the true document topic (argmax of the oracle posterior)",
            "oracle_fingerprint": oracle.fingerprint,
            "num_topics": oracle.num_topics,
            "prior": oracle.prior.tolist(),
        }
    extra.update(
        {"decoder": to_dict(base.dit.config), "base_mdlm": base.source, "noise_eps": base.noise_eps}
    )
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
    if cfg.latent_norm == "stats":
        # The loop released the output's lock when it returned: hold it again, so that no
        # other run writes the checkpoint between the read and the rewrite of the stats.
        with held_by_main(output_lock(cfg.out), runtime, what=f"the output {cfg.out}"):
            failure: Exception | None = None
            if runtime.is_main:
                try:
                    _store_latent_stats(
                        cfg,
                        model=model,
                        encoder=encoder,
                        data=train_data,
                        runtime=runtime,
                        precision=precision,
                    )
                except Exception as err:  # raised below on every process: none waits
                    failure = err
            raise_together(
                failure, runtime, f"the main process could not store the latent stats in {cfg.out}"
            )
    barrier()
    return result


def _bound_oracle(data_dir: str) -> Oracle:
    """The oracle whose topics the perfect-latent bound is given.

    Raises:
        DiladiffError: ``data_dir`` is not an oracle corpus.
    """
    try:
        return load_oracle(data_dir)
    except DiladiffError as err:
        raise DiladiffError(
            f"ae.encoder.name {ORACLE_TOPIC} needs an oracle corpus: {err}"
        ) from None


def _store_latent_stats(
    cfg: AEStageConfig,
    *,
    model: Autoencoder,
    encoder: FrozenEncoder | None,
    data: TwoViewBlocks | CachedStates | OracleTopicBlocks,
    runtime: Runtime,
    precision: Precision,
) -> None:
    """Measure the per-entry statistics of the raw latents with the checkpoint's final
    (EMA) weights and rewrite the checkpoint with them (skipped when already there).

    The checkpoint's config and step are unchanged, so the loop still recognises the
    run as complete; ``extra["latent_stats"]`` marks the statistics as measured. The
    caller holds the output's lock; the rewrite is atomic (``save_weights``).
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
        encoder: the frozen encoder (reloaded from its name); None for the bound
            (``oracle-topic``), which encodes no text, and when loaded for decoding only
            (``load_autoencoder(..., with_encoder=False)``).
        encoder_tokenizer: the encoder's tokenizer (None when ``encoder`` is).
        decoder_tokenizer: the data's tokenizer.
        config: the stage config it was trained with.
        data: the data it was trained on (vocab, special tokens, tokenizer, seq_len).
        decoder_config: the decoder DiT's shape.
        extra: the checkpoint's raw ``extra`` metadata (also the encoder width, the
            base MDLM and the latent statistics record).
        schedule: the decoder's noise schedule.
        step: training steps.
        path: the checkpoint file.
        sha256: the checkpoint file's hash (identifies its latents).
    """

    model: Autoencoder
    encoder: FrozenEncoder | None
    encoder_tokenizer: Any
    decoder_tokenizer: Any
    config: AEStageConfig
    data: DataRecord
    decoder_config: DiTConfig
    extra: dict[str, Any]
    schedule: LogLinearSchedule
    step: int
    path: Path
    sha256: str

    @property
    def seq_len(self) -> int:
        return self.data.seq_len

    @property
    def mask_id(self) -> int:
        return self.data.mask_id

    @property
    def is_bound(self) -> bool:
        """Conditioned on the oracle's topic (``encoder.name: oracle-topic``), not on text."""
        return self.config.encoder.name == ORACLE_TOPIC

    def require_encoder(self) -> FrozenEncoder:
        """The frozen encoder; a one-line DiladiffError for the bound, which has none."""
        if self.is_bound:
            raise DiladiffError(
                f"{self.path} is the perfect-latent bound (encoder {ORACLE_TOPIC}): it encodes "
                "no text; sample it with --model bound"
            )
        if self.encoder is None:
            raise DiladiffError(f"{self.path} was loaded without its encoder (decoding only)")
        return self.encoder

    def objective(self, latent: Literal["encoder", "null"] = "encoder") -> AutoencoderLoss:
        """The training objective of this autoencoder (its schedule, mask and
        augmentations; one state per block for the bound), e.g. to measure its NELBO."""
        return AutoencoderLoss(
            encoder=self.encoder,
            schedule=self.schedule,
            mask_id=self.mask_id,
            augment=self.config.augment,
            max_len=1 if self.is_bound else self.config.encoder.max_len,
            latent=latent,
        )

    def normalization(self) -> dict[str, Any]:
        """The latent normalisation as recorded in a latent index."""
        kind = self.model.latent_norm
        record: dict[str, Any] = {"kind": kind}
        if kind == "stats":
            record["mean"] = self.model.latent_mean.cpu().tolist()
            record["std"] = self.model.latent_std.cpu().tolist()
        return record

    def blocks(self, data_dir: str | Path, split: str) -> TwoViewBlocks:
        """The two views of a split of prepared data, with this autoencoder's tokenizers
        and the encoder's maximum length."""
        self.require_encoder()
        return TwoViewBlocks(
            data_dir=data_dir,
            split=split,
            decoder_tokenizer=self.decoder_tokenizer,
            encoder_tokenizer=self.encoder_tokenizer,
            max_len=self.config.encoder.max_len,
        )

    @torch.no_grad()
    def encode_view(self, view: TwoViewBatch | EncoderView) -> torch.Tensor:
        """Clean latents z ``(B, N, D)`` (normalised) of an encoder view."""
        encoder = self.require_encoder()
        ids = view.enc_ids if isinstance(view, TwoViewBatch) else view.ids
        mask = view.enc_mask if isinstance(view, TwoViewBatch) else view.mask
        device = self.model.state_mean.device
        ids, mask = ids.to(device), mask.to(device)
        return self.model.encode(encoder(ids, mask), mask).float()


def load_autoencoder(
    path: str | Path, *, device: torch.device, with_encoder: bool = True
) -> LoadedAutoencoder:
    """Load an ``ae`` checkpoint with its frozen encoder (unless ``with_encoder`` is False).

    Args:
        path: the checkpoint.
        device: where the model (and the encoder) go.
        with_encoder: False: leave the frozen encoder out (``encoder`` None), for what
            only decodes latents (a sweep loads the autoencoder once per cell, and the
            encoder, which nothing there reads, cost about 0.2 s of each on 2 CPU cores).

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
    decoder_config = from_dict(DiTConfig, extra["decoder"], source=f"{path} metadata")
    dit = DiT.from_config(decoder_config)
    model = build_autoencoder(cfg, dit=dit, encoder_dim=int(extra["encoder_hidden"]))
    tensors = load_checkpoint(path, stage=STAGE).tensors
    if cfg.encoder.name == ORACLE_TOPIC and "compressor.latents" in tensors:
        raise CheckpointError(
            f"{path} is a perfect-latent bound from before its topic embedding (its z, a "
            "Perceiver over the topic's one-hot, barely depends on the topic): train it again "
            "(remove it; `make reproduce` or `train-ae ... --set ae.encoder.name=oracle-topic`)"
        )
    load_into(model, tensors, source=str(path))
    encoder, enc_tokenizer = None, None  # the bound's states are topics, not text
    if cfg.encoder.name != ORACLE_TOPIC and with_encoder:
        encoder, enc_tokenizer = load_encoder(cfg.encoder, device=device)
    if encoder is not None and encoder.hidden_size != int(extra["encoder_hidden"]):
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
        data=DataRecord.from_extra(extra, source=f"{path} metadata"),
        decoder_config=decoder_config,
        extra=extra,
        schedule=LogLinearSchedule(eps=float(extra.get("noise_eps", 1e-3))),
        step=meta.step,
        path=path,
        sha256=file_sha256(path),
    )


# ----------------------------------------------------------------------------- decoding


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
    fixed: torch.Tensor | None = None,
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
        fixed: ``(L,)`` given tokens the sampler keeps (``mask_id`` where it draws), or
            None (see :func:`~diladiff_cli.diffusion.masked.sample_masked`).

    Returns:
        The sampler's output, ``tokens`` ``(num, L)``.
    """
    model = loaded.model
    device = model.state_mean.device
    zz = None if z is None else z.to(device)

    def model_fn(tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model.decode_logits(tokens, sigma, zz)

    time_cond = loaded.decoder_config.time_conditioning
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
        fixed=fixed,
    )
