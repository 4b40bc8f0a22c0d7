"""Generation with timing: one entry, :func:`generate`, for every model.

Six modes, compared on equal footing (one batch loop, one timing record):

* ``mdlm``: the base MDLM checkpoint (``train-mdlm``), or an autoencoder checkpoint,
  whose decoder then runs with the null latent (the same network LaDiff decodes with);
* ``ladiff``: z from the latent prior's probability-flow ODE (``ncont``, ~200), then
  the autoencoder's latent-conditioned decoder;
* ``diladiff``: z from the distilled MeanFlow student (``ncont``, ~5), then the decoder;
* ``reconstruct``: z from the autoencoder's encoder on given texts or held-out blocks,
  then the decoder (stage 1's reconstruction; the record holds the token accuracy);
* ``ar``: the autoregressive baseline, the GenPPL judge (``train-judge``) as a generator:
  BOS, then one token per forward pass with its key-value cache (Hugging Face
  ``generate``), a whole block like the MDLM's. Ndisc and selection do not apply: its
  record holds null for them;
* ``bound``: the perfect-latent bound on an oracle corpus, an autoencoder trained with
  ``encoder.name: oracle-topic``: a topic drawn from the oracle's prior, its one-hot
  through the compressor, then the decoder (the record lists the topics drawn).

Every batch ``b`` decodes with a generator seeded :func:`batch_seed` ``(seed, b)`` (``ar``:
the device's global generator, seeded so for the batch and restored afterwards).

Output of :func:`write_samples`, both files written atomically:

* ``<out>`` (JSONL): one sample a line, ``{"index", "seed", "text", "tokens"}``;
  ``tokens`` are the raw ids of the whole block (BOS/EOS included), ``text`` is
  their decoding with special tokens removed.
* ``<out stem>.meta.json``: the settings, the checkpoint, the device and the timing
  record (seconds and forward passes per stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diladiff_cli.ae import LoadedAutoencoder, decode_latents, load_autoencoder
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config.stages import ORACLE_TOPIC, SampleConfig, Selection
from diladiff_cli.config.train import Precision
from diladiff_cli.data import special_ids
from diladiff_cli.diffusion.masked import SampleOutput, sample_masked
from diladiff_cli.distributed import Runtime, device_name, synchronize
from diladiff_cli.encode import encode_texts
from diladiff_cli.encoder import topic_states
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from diladiff_cli.hub import load_auto_model, load_tokenizer
from diladiff_cli.judge import JUDGE_RECORD, read_judge_record
from diladiff_cli.latent_shards import file_sha256
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.prior import LatentModel, check_autoencoder, load_latent_model, sample_latents
from diladiff_cli.train import Reporter, autocast

SEED_STRIDE = 100003  # a prime: batch b of seed s draws from s * SEED_STRIDE + b


def batch_seed(seed: int, batch: int) -> int:
    """The generator seed of batch ``batch`` of a run seeded ``seed``: runs with other
    seeds never share a batch's noise."""
    return seed * SEED_STRIDE + batch


@dataclass(frozen=True)
class SampleSettings:
    """How to sample (recorded with the samples).

    ``ndisc`` and ``selection`` are the masked sampler's; None where they do not apply
    (the record of an ``ar`` run).
    """

    num_samples: int
    batch_size: int
    ndisc: int | None
    selection: Selection | None = "random"
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise DiladiffError("--num-samples and --batch-size must be at least 1")
        if self.ndisc is not None and self.ndisc < 1:
            raise DiladiffError(f"--ndisc must be at least 1, got {self.ndisc}")
        if self.temperature <= 0:
            raise DiladiffError(f"--temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DiladiffError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Timing:
    """Where the sampling time went.

    Attributes:
        seconds_total: wall time of all batches (model loading excluded).
        seconds_latent: time drawing latents (0 for the plain MDLM).
        seconds_discrete: time in the masked-diffusion decoder.
        forward_passes_discrete: decoder forward passes per batch, averaged.
        forward_passes_latent: latent-network evaluations per batch.
        tokens_per_forward: sequence length / decoder forward passes.
        seconds_per_sample: seconds_total / number of samples.
        latent_share: seconds_latent / seconds_total.
        device: where it ran.
    """

    seconds_total: float
    seconds_latent: float
    seconds_discrete: float
    forward_passes_discrete: float
    forward_passes_latent: float
    tokens_per_forward: float
    seconds_per_sample: float
    latent_share: float
    device: str


@dataclass
class SampleResult:
    """Samples and their record.

    Attributes:
        texts: decoded texts, one per sample.
        tokens: ``(N, L)`` token ids.
        timing: the timing record.
        settings: the settings used.
        info: checkpoint path, model kind, sequence length, tokenizer.
    """

    texts: list[str]
    tokens: torch.Tensor
    timing: Timing
    settings: SampleSettings
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sources:
    """What ``reconstruct`` decodes from: free texts, or the first ``num_blocks`` blocks
    of a split of prepared data (default: the data the autoencoder was trained on)."""

    texts: tuple[str, ...] = ()
    num_blocks: int = 0
    data_dir: str | None = None
    split: str = "valid"
    truncate: bool = False  # cut texts too long for the encoder or a block (else refuse)


Model = Literal["mdlm", "ladiff", "diladiff", "reconstruct", "ar", "bound"]
LatentDraw = Callable[[int, int], "tuple[torch.Tensor | None, float, float]"]
"""``draw(batch, size) -> (z (size, N, D) or None, seconds, forward passes)``."""
Decode = Callable[[torch.Tensor | None, int, torch.Generator], SampleOutput]
"""``decode(z, size, generator) -> SampleOutput`` with ``tokens`` ``(size, L)``."""


@dataclass
class _Plan:
    """What one mode plugs into the batch loop."""

    description: str
    num: int  # samples to draw
    seq_len: int
    tokenizer: Any  # decodes the token ids
    decode: Decode
    draw: LatentDraw
    info: dict[str, Any]
    seconds_latent: float = 0.0  # latent time spent before the loop (reconstruct's encoder)
    latent_passes: float | None = None  # fixed latent passes per batch (reconstruct: 1)
    drawn: int | None = None  # tokens drawn per sample: seq_len, or fewer (ar: BOS is given)
    not_applicable: tuple[str, ...] = ()  # settings the mode ignores: recorded as None


@dataclass(frozen=True)
class SampleRequest:
    """What `sample` draws and where it writes it (see :func:`resolve_request`)."""

    model: Model
    checkpoint: str
    autoencoder: str | None
    ncont: int | None
    out: str


def resolve_request(
    cfg: SampleConfig,
    *,
    reconstruct: bool = False,
    ae_checkpoint: str | None = None,
    explicit: frozenset[str] = frozenset(),
    judge: str | None = None,
) -> SampleRequest:
    """Map the recipe's ``sample`` section to a model, its checkpoints and an output.

    * reconstruct: the autoencoder (``cfg.checkpoint`` when given, else
      ``ae_checkpoint``), written to ``reconstruct.jsonl`` beside ``cfg.out``;
    * ``ar``: the judge directory (``cfg.checkpoint`` when given, else ``judge``), to
      ``ar.jsonl`` beside ``cfg.out``;
    * ``bound``: the bound autoencoder (an explicit ``checkpoint``: the recipe names
      none), to ``bound.jsonl`` beside ``cfg.out``;
    * ``ladiff`` / ``diladiff``, or ``mdlm`` with an explicit autoencoder (its decoder
      with the null latent): ``<model>.jsonl`` beside ``cfg.out``;
    * ``mdlm``: ``cfg.checkpoint`` to ``cfg.out``.

    Args:
        cfg: the ``sample`` section, options already applied.
        reconstruct: decode from the latents of given texts or blocks.
        ae_checkpoint: the recipe's autoencoder (its ``encode`` section's checkpoint).
        explicit: which of ``checkpoint``, ``out``, ``ncont``, ``autoencoder`` the user
            gave: an explicit output is kept as it is; an explicit ``ncont`` is checked
            (0 is an error), while the recipe's 0 means the checkpoint's default.
        judge: the recipe's judge directory (its ``judge`` section's out).
    """
    out = Path(cfg.out)
    if reconstruct:
        checkpoint = cfg.checkpoint if "checkpoint" in explicit else ae_checkpoint
        if checkpoint is None:
            raise DiladiffError("reconstruction needs an autoencoder (--checkpoint)")
        name = out if "out" in explicit else out.with_name("reconstruct.jsonl")
        return SampleRequest("reconstruct", str(checkpoint), None, None, str(name))
    if cfg.model == "ar":
        checkpoint = cfg.checkpoint if "checkpoint" in explicit else judge
        if checkpoint is None:
            raise DiladiffError("--model ar needs the judge directory (--checkpoint)")
        name = out if "out" in explicit else out.with_name("ar.jsonl")
        return SampleRequest("ar", str(checkpoint), None, None, str(name))
    if cfg.model == "bound":
        if "checkpoint" not in explicit:
            raise DiladiffError(
                f"--model bound needs the bound autoencoder (--checkpoint; train-ae --set "
                f"ae.encoder.name={ORACLE_TOPIC})"
            )
        name = out if "out" in explicit else out.with_name("bound.jsonl")
        return SampleRequest("bound", cfg.checkpoint, None, None, str(name))
    if cfg.model == "mdlm" and "autoencoder" not in explicit:
        return SampleRequest("mdlm", cfg.checkpoint, None, None, cfg.out)
    name = out if "out" in explicit else out.with_name(f"{cfg.model}.jsonl")
    ncont = cfg.ncont if "ncont" in explicit else (cfg.ncont or None)
    if cfg.model == "mdlm":  # the autoencoder's decoder with the null latent
        return SampleRequest("mdlm", cfg.autoencoder, None, None, str(name))
    latent = cfg.prior if cfg.model == "ladiff" else cfg.student
    return SampleRequest(cfg.model, latent, cfg.autoencoder, ncont, str(name))


def sample_settings(cfg: SampleConfig) -> SampleSettings:
    """The sampler settings of the recipe's ``sample`` section."""
    return SampleSettings(
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        ndisc=cfg.ndisc,
        selection=cfg.selection,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
    )


def generate(
    *,
    model: Model,
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    autoencoder: str | Path | None = None,
    ncont: int | None = None,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
    latent_cache: str | Path | None = None,
    sources: Sources | None = None,
) -> SampleResult:
    """Draw samples from any of the six models and time them.

    Args:
        model: ``mdlm``, ``ladiff``, ``diladiff``, ``reconstruct``, ``ar`` or ``bound``.
        checkpoint: ``mdlm``: a ``train-mdlm`` checkpoint, or a ``train-ae`` one (its
            decoder with the null latent); ``ladiff`` / ``diladiff``: the prior / the
            distilled student; ``reconstruct``: the autoencoder; ``ar``: a
            ``train-judge`` directory; ``bound``: an autoencoder trained with
            ``encoder.name: oracle-topic``.
        settings: the discrete sampler's settings (``num_samples`` is ignored by
            ``reconstruct``: one sample per source; ``ar`` ignores ``ndisc`` and
            ``selection``, which every other model needs).
        runtime: device.
        autoencoder: ``ladiff`` / ``diladiff``: the autoencoder whose decoder turns z
            into tokens (the latent model must have been trained on its latents).
        ncont: continuous steps (default: the latent checkpoint's).
        precision: decoder autocast precision (the latent ODE always runs in float32).
        reporter: progress sink.
        latent_cache: ``ladiff`` / ``diladiff``: a directory where each batch of
            latents is kept, keyed by the latent checkpoint's sha256, the device, ncont,
            seed and size, with the seconds and forward passes measured when it was
            drawn. A sweep over discrete settings (Ndisc, selection, temperature) then
            draws each z once; the timing record still carries the latent stage's
            measured cost. None: no cache.
        sources: ``reconstruct``: what to encode.

    Raises:
        DiladiffError: a latent model of another kind or trained on another
            autoencoder's latents, ncont < 1, sources missing or too long, no ndisc or
            selection (all but ``ar``), an ``ar`` checkpoint that is no judge directory,
            a ``bound`` checkpoint that is not the bound.
    """
    if model == "ar":
        plan = _ar_plan(checkpoint, settings, runtime, precision)
    elif settings.ndisc is None or settings.selection is None:
        raise DiladiffError(f"--model {model} needs --ndisc and --selection")
    elif model == "reconstruct":
        plan = _reconstruct_plan(checkpoint, settings, runtime, precision, sources or Sources())
    elif model == "bound":
        plan = _bound_plan(checkpoint, settings, runtime, precision)
    elif model == "mdlm" and _stage(checkpoint) != "ae":
        plan = _mdlm_plan(checkpoint, settings, runtime, precision)
    elif model == "mdlm":
        plan = _latent_plan(checkpoint, None, None, settings, runtime, precision, None)
    else:
        if autoencoder is None:
            raise DiladiffError(f"--model {model} needs an autoencoder to decode its latents")
        plan = _latent_plan(
            autoencoder, checkpoint, ncont, settings, runtime, precision, latent_cache
        )
        if plan.info["model"] != model:
            raise DiladiffError(
                f"{checkpoint} is a {plan.info['model']} latent model, not a {model} one"
            )
    return _run(plan, settings, runtime.device, reporter)


def _run(
    plan: _Plan, settings: SampleSettings, device: torch.device, reporter: Reporter | None
) -> SampleResult:
    """The one batch loop: latents, then the masked sampler, timed per stage."""
    n_batches = -(-plan.num // settings.batch_size)
    tokens, passes, latent_passes = [], [], []
    seconds_latent, seconds_discrete = plan.seconds_latent, 0.0
    if reporter is not None:
        reporter.start(total=n_batches, done=0, description=plan.description)
    try:
        for b in range(n_batches):
            size = min(settings.batch_size, plan.num - b * settings.batch_size)
            z, seconds, latent_forwards = plan.draw(b, size)
            seconds_latent += seconds
            latent_passes.append(latent_forwards)
            gen = torch.Generator(device=device).manual_seed(batch_seed(settings.seed, b))
            synchronize(device)
            t0 = time.perf_counter()
            out = plan.decode(z, size, gen)
            synchronize(device)
            seconds_discrete += time.perf_counter() - t0
            tokens.append(out.tokens.cpu())
            passes.append(out.forward_passes)
            if reporter is not None:
                reporter.update(step=b + 1, metrics={"forward_passes": out.forward_passes})
    finally:
        if reporter is not None:
            reporter.stop()
    all_tokens = torch.cat(tokens)
    texts = plan.tokenizer.batch_decode(all_tokens.tolist(), skip_special_tokens=True)
    mean_passes = sum(passes) / len(passes)
    total = seconds_latent + seconds_discrete
    timing = Timing(
        seconds_total=total,
        seconds_latent=seconds_latent,
        seconds_discrete=seconds_discrete,
        forward_passes_discrete=mean_passes,
        forward_passes_latent=(
            plan.latent_passes
            if plan.latent_passes is not None
            else sum(latent_passes) / len(latent_passes)
        ),
        tokens_per_forward=(plan.drawn or plan.seq_len) / mean_passes,
        seconds_per_sample=total / plan.num,
        latent_share=seconds_latent / total if total > 0 else 0.0,
        device=device_name(device),
    )
    info = dict(plan.info)
    if "sources" in info:  # reconstruct: how close each decode came to its source
        accuracy = token_accuracy(all_tokens, info.pop("source_tokens"))
        info["token_accuracy"] = sum(accuracy) / plan.num
        info["per_sample_accuracy"] = accuracy
        info["sources"] = info.pop("sources")  # the record's key order: sources last
    used = dataclasses.replace(settings, num_samples=plan.num, **dict.fromkeys(plan.not_applicable))
    return SampleResult(texts=texts, tokens=all_tokens, timing=timing, settings=used, info=info)


def _stage(path: str | Path) -> str | None:
    """The stage that wrote a checkpoint, or None when it is not one of ours."""
    try:
        return read_meta(path).stage
    except CheckpointError:
        return None


def _no_latent(batch: int, size: int) -> tuple[None, float, float]:
    return None, 0.0, 0.0


def _mdlm_plan(
    checkpoint: str | Path, settings: SampleSettings, runtime: Runtime, precision: Precision
) -> _Plan:
    """A ``train-mdlm`` checkpoint with the masked diffusion sampler."""
    loaded = load_mdlm(checkpoint, device=runtime.device)
    data, net = loaded.data, loaded.model
    seq_len = data.seq_len
    time_cond = loaded.config.time_conditioning

    def model_fn(tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(runtime.device, precision):
            return net(tokens, sigma)

    @torch.no_grad()
    def decode(z: None, size: int, generator: torch.Generator) -> SampleOutput:
        return sample_masked(
            model_fn,
            batch_size=size,
            seq_len=seq_len,
            mask_id=data.mask_id,
            steps=settings.ndisc,
            schedule=loaded.schedule,
            selection=settings.selection,
            temperature=settings.temperature,
            top_p=settings.top_p,
            cache=not time_cond,
            generator=generator,
            device=runtime.device,
            time_conditioned=time_cond,
        )

    info = {
        "model": "mdlm",
        "ncont": 0,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": loaded.step,
        "seq_len": seq_len,
        "tokenizer": data.tokenizer,
        "vocab_size": data.vocab_size,
        "data_fingerprint": data.data_fingerprint,
        "precision": precision,
    }
    return _Plan(
        description="sample mdlm",
        num=settings.num_samples,
        seq_len=seq_len,
        tokenizer=load_tokenizer(data.tokenizer),
        decode=decode,
        draw=_no_latent,
        info=info,
    )


def _ae_decode(loaded: LoadedAutoencoder, settings: SampleSettings, precision: Precision) -> Decode:
    """The autoencoder's latent-conditioned decoder with these sampler settings."""

    def decode(z: torch.Tensor | None, size: int, generator: torch.Generator) -> SampleOutput:
        return decode_latents(
            loaded,
            z,
            num=size,
            ndisc=settings.ndisc,
            selection=settings.selection,
            generator=generator,
            temperature=settings.temperature,
            top_p=settings.top_p,
            precision=precision,
        )

    return decode


def _decoded_plan(
    loaded: LoadedAutoencoder,
    settings: SampleSettings,
    precision: Precision,
    *,
    name: str,
    draw: LatentDraw,
    info: dict[str, Any],
) -> _Plan:
    """A plan whose latents ``draw`` makes and whose tokens the autoencoder's decoder
    draws (mdlm on an autoencoder, ladiff, diladiff, bound)."""
    return _Plan(
        description=f"sample {name}",
        num=settings.num_samples,
        seq_len=loaded.seq_len,
        tokenizer=loaded.decoder_tokenizer,
        decode=_ae_decode(loaded, settings, precision),
        draw=draw,
        info=info,
    )


def _decoder_record(
    checkpoint: str | Path, loaded: LoadedAutoencoder, precision: Precision
) -> dict[str, Any]:
    """What the record says of the autoencoder whose decoder drew the tokens."""
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": loaded.step,
        "seq_len": loaded.seq_len,
        "tokenizer": loaded.data.tokenizer,
        "vocab_size": loaded.data.vocab_size,
        "data_fingerprint": loaded.data.data_fingerprint,
        "precision": precision,
    }


def _latent_plan(
    autoencoder: str | Path,
    latent_model: str | Path | None,
    ncont: int | None,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
    latent_cache: str | Path | None,
) -> _Plan:
    """Latent first (prior or student; none: the null latent), then the decoder."""
    device = runtime.device
    loaded = load_autoencoder(autoencoder, device=device)
    draw: LatentDraw = _no_latent
    name = "mdlm"
    if latent_model is not None:
        latent = load_latent_model(latent_model, device=device)
        check_autoencoder(latent, autoencoder)
        name = "ladiff" if latent.kind == "prior" else "diladiff"
        ncont = latent.ncont if ncont is None else ncont
        draw = _latent_draw(latent, latent_model, ncont, settings.seed, device, latent_cache)
    info = {
        "model": name,
        "ncont": ncont if latent_model is not None else 0,
        "autoencoder": str(Path(autoencoder).resolve()),
        "latent_model": str(Path(latent_model).resolve()) if latent_model is not None else None,
        **_decoder_record(autoencoder, loaded, precision),
    }
    return _decoded_plan(loaded, settings, precision, name=name, draw=draw, info=info)


def _latent_draw(
    latent: LatentModel,
    path: str | Path,
    ncont: int,
    seed: int,
    device: torch.device,
    latent_cache: str | Path | None,
) -> LatentDraw:
    """Batch b's latents from the prior or the student, through the cache when given."""
    sha = ""
    if latent_cache is not None:  # keyed by weights and device (the timing is the device's)
        device_key = hashlib.sha256(device_name(device).encode()).hexdigest()[:8]
        sha = f"{file_sha256(path)[:16]}-{device_key}"

    def draw(batch: int, size: int) -> tuple[torch.Tensor, float, float]:
        seed_b = batch_seed(seed, batch)
        cached = _cached_latents(latent_cache, sha, ncont, seed_b, size)
        if cached is None:
            drawn = sample_latents(
                latent, num_samples=size, ncont=ncont, batch_size=size, seed=seed_b, device=device
            )
            cached = (drawn.latents, drawn.seconds, drawn.forward_passes)
            _store_latents(latent_cache, sha, ncont, seed_b, *cached)
        return cached[0].to(device), cached[1], cached[2]

    return draw


def _reconstruct_plan(
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
    sources: Sources,
) -> _Plan:
    """Encode each source (frozen encoder + compressor), then decode from its latent."""
    texts, num_blocks = list(sources.texts), sources.num_blocks
    if bool(texts) == bool(num_blocks):
        raise DiladiffError("reconstruct needs either texts (--from-text) or --reconstruct N")
    loaded = load_autoencoder(checkpoint, device=runtime.device)
    t0 = time.perf_counter()
    if texts:
        latents = encode_texts(loaded, texts, truncate=sources.truncate).latents
        source_tokens = _text_sources(loaded, texts, sources.truncate)
        source_texts = texts
    else:
        data = loaded.blocks(sources.data_dir or loaded.data.data_dir, sources.split)
        if num_blocks > len(data):
            raise DiladiffError(
                f"--reconstruct {num_blocks}: the {sources.split} split has {len(data)} blocks"
            )
        idx = np.arange(num_blocks)
        latents = torch.cat(
            [
                loaded.encode_view(data.batch(idx[i : i + settings.batch_size])).cpu()
                for i in range(0, num_blocks, settings.batch_size)
            ]
        )
        source_tokens = list(data.blocks.tokens(idx))
        source_texts = data.texts(idx)
    synchronize(runtime.device)
    seconds_latent = time.perf_counter() - t0

    def draw(batch: int, size: int) -> tuple[torch.Tensor, float, float]:
        lo = batch * settings.batch_size
        return latents[lo : lo + size], 0.0, 1.0

    info = {
        "model": "ae-reconstruction",
        **_decoder_record(checkpoint, loaded, precision),
        "source": "texts" if texts else f"{sources.split} blocks 0..{num_blocks - 1}",
        "source_tokens": source_tokens,  # replaced by the accuracies after decoding
        "sources": source_texts,
    }
    return _Plan(
        description="reconstruct",
        num=len(source_tokens),
        seq_len=loaded.seq_len,
        tokenizer=loaded.decoder_tokenizer,
        decode=_ae_decode(loaded, settings, precision),
        draw=draw,
        info=info,
        seconds_latent=seconds_latent,
        latent_passes=1.0,  # one encoder + compressor pass per source
    )


def _bound_plan(
    checkpoint: str | Path, settings: SampleSettings, runtime: Runtime, precision: Precision
) -> _Plan:
    """The perfect-latent bound: batch b draws each sample's topic from the oracle's prior
    (a generator seeded :func:`batch_seed` ``(seed, b)``), runs the compressor on its
    one-hot (the latent stage: one compressor pass) and decodes as ``ladiff`` does."""
    if _stage(checkpoint) != "ae":
        raise DiladiffError(
            f"--model bound samples from a bound autoencoder: {checkpoint} is not one"
        )
    device = runtime.device
    loaded = load_autoencoder(checkpoint, device=device)
    bound = loaded.extra.get("bound")
    if not loaded.is_bound or bound is None:
        raise DiladiffError(
            f"--model bound samples from an autoencoder trained with encoder.name "
            f"{ORACLE_TOPIC}: {checkpoint} was trained on '{loaded.config.encoder.name}'"
        )
    prior = torch.tensor(bound["prior"], dtype=torch.float64)  # (K,)
    drawn: list[int] = []  # the record's topics, batch after batch

    def draw(batch: int, size: int) -> tuple[torch.Tensor, float, float]:
        gen = torch.Generator().manual_seed(batch_seed(settings.seed, batch))
        topics = torch.multinomial(prior, size, replacement=True, generator=gen)  # (size,)
        drawn.extend(topics.tolist())
        states, mask = topic_states(topics, num_topics=len(prior))  # (size, 1, K), (size, 1)
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            z = loaded.model.encode(states.to(device), mask.to(device)).float()  # (size, N, D)
        synchronize(device)
        return z, time.perf_counter() - t0, 1.0

    info = {
        "model": "bound",
        "ncont": 0,
        "conditioning": bound.get("conditioning", ORACLE_TOPIC),
        "oracle_fingerprint": bound.get("oracle_fingerprint"),
        **_decoder_record(checkpoint, loaded, precision),
        "topics": drawn,  # filled by draw() as the batch loop runs
    }
    return _decoded_plan(loaded, settings, precision, name="bound", draw=draw, info=info)


def _ar_plan(
    checkpoint: str | Path, settings: SampleSettings, runtime: Runtime, precision: Precision
) -> _Plan:
    """A ``train-judge`` directory as the autoregressive baseline: BOS, then
    ``seq_len - 1`` tokens drawn one per forward pass with the key-value cache.

    Nothing stops a sample at EOS and nothing forbids it: EOS is drawn like any token,
    as in the data's blocks (where it separates documents) and in the MDLM's samples,
    so every sample is a whole block and eval's EOS policy applies to it unchanged. The
    mask token is never drawn (as in the masked sampler).
    """
    record = read_judge_record(str(checkpoint))
    if record is None or "valid_tokens_per_block" not in record:
        raise DiladiffError(
            f"--model ar samples from a `train-judge` directory (a Hugging Face causal LM "
            f"with {JUDGE_RECORD}): {checkpoint} is not one"
        )
    from transformers import AutoModelForCausalLM, GenerationConfig

    device = runtime.device
    seq_len = int(record["valid_tokens_per_block"]) + 1  # the data's blocks, BOS included
    tokenizer = load_tokenizer(str(checkpoint))  # the data's, copied in by train-judge
    vocab_size, mask_id, bos_id, _ = special_ids(tokenizer)
    model = load_auto_model(str(checkpoint), AutoModelForCausalLM).to(device).eval()
    # Blocks are never padded, and GPT-2's pad is its BOS: it would warn on every prompt.
    model.config.pad_token_id = None
    config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=0,  # off: transformers' default would keep only the 50 likeliest tokens
        max_new_tokens=seq_len - 1,
        eos_token_id=None,  # no stop at EOS: every sample is seq_len tokens long
        suppress_tokens=[mask_id],
        use_cache=True,
    )
    model.generation_config = config  # none of the checkpoint's defaults (its EOS) merge in
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def decode(z: None, size: int, generator: torch.Generator) -> SampleOutput:
        prompt = torch.full((size, 1), bos_id, dtype=torch.long, device=device)  # (B, 1)
        before = calls[0]
        # generate has no generator argument: it draws from the device's global one, seeded
        # here with the batch's seed and restored after, so the caller's stream is untouched.
        rng = _global_generator(device)
        state = rng.get_state()
        try:
            rng.manual_seed(generator.initial_seed())
            with autocast(device, precision):
                tokens = model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), generation_config=config
                )  # (B, seq_len)
        finally:
            rng.set_state(state)
        return SampleOutput(tokens=tokens, forward_passes=calls[0] - before, steps=seq_len - 1)

    info = {
        "model": "ar",
        "ncont": 0,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": record.get("step"),
        "seq_len": seq_len,
        "tokenizer": str(Path(checkpoint).resolve()),
        "vocab_size": vocab_size,
        "data_fingerprint": record.get("data_fingerprint"),
        "precision": precision,
    }
    return _Plan(
        description="sample ar",
        num=settings.num_samples,
        seq_len=seq_len,
        tokenizer=tokenizer,
        decode=decode,
        draw=_no_latent,
        info=info,
        drawn=seq_len - 1,
        not_applicable=("ndisc", "selection"),
    )


def _global_generator(device: torch.device) -> torch.Generator:
    """The global generator that draws random numbers on ``device``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.random.default_generator


def _latent_cache_file(directory: str | Path, sha: str, ncont: int, seed: int, size: int) -> Path:
    """Where a batch of latents is kept: ``sha`` is the latent model's content (the
    sha256 of its weights file) and the device, so a retrained prior or student never
    reads the old one's latents."""
    return Path(directory) / f"{sha}-nc{ncont}-seed{seed}-n{size}.safetensors"


def _latents_sha256(z: torch.Tensor) -> str:
    """The sha256 of a latent tensor's bytes (its checksum in the cache file)."""
    return hashlib.sha256(z.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()


def _cached_latents(
    directory: str | Path | None, sha: str, ncont: int, seed: int, size: int
) -> tuple[torch.Tensor, float, int] | None:
    """A batch of latents kept by :func:`_store_latents`, or None: also when the file
    is damaged (unreadable, truncated, or its latents do not match their checksum),
    so that they are drawn again and the file rewritten."""
    if directory is None:
        return None
    path = _latent_cache_file(directory, sha, ncont, seed, size)
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            z = f.get_tensor("latents")
        seconds, passes = float(meta["seconds"]), int(meta["forward_passes"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    if z.shape[0] != size or meta.get("sha256") != _latents_sha256(z):
        return None
    return z, seconds, passes


def _store_latents(
    directory: str | Path | None,
    sha: str,
    ncont: int,
    seed: int,
    z: torch.Tensor,
    seconds: float,
    passes: int,
) -> None:
    if directory is None:
        return
    import safetensors.torch

    z = z.detach().cpu().contiguous()
    meta = {
        "seconds": repr(float(seconds)),
        "forward_passes": str(int(passes)),
        "sha256": _latents_sha256(z),
    }
    path = _latent_cache_file(directory, sha, ncont, seed, z.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save({"latents": z}, metadata=meta)
    atomic_write_bytes(path, data)


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
    bos, eos, seq_len = loaded.data.bos_id, loaded.data.eos_id, loaded.seq_len
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


def meta_path(out: str | Path) -> Path:
    """The record beside a sample file (``mdlm.jsonl`` -> ``mdlm.meta.json``)."""
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")


def write_samples(result: SampleResult, out: str | Path) -> Path:
    """Write the JSONL samples and their meta record atomically; return the meta path."""
    out = Path(out)
    lines = [
        json.dumps(
            {
                "index": i,
                "seed": result.settings.seed,
                "text": text,
                "tokens": result.tokens[i].tolist(),
            }
        )
        for i, text in enumerate(result.texts)
    ]
    record = {
        "samples": str(out),
        "num_samples": len(result.texts),
        "settings": asdict(result.settings),
        "timing": asdict(result.timing),
        **result.info,
    }
    meta = meta_path(out)
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    atomic_write_json(meta, record)
    return meta
