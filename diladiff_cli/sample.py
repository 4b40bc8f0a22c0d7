"""Generation with timing: one entry, :func:`generate`, for every model.

Eight modes, compared on equal footing (one batch loop, one timing record):

* ``mdlm``: the base MDLM checkpoint (``train-mdlm``), or an autoencoder checkpoint,
  whose decoder then runs with the null latent (the same network LaDiff decodes with);
* ``ladiff``: z from the latent prior's probability-flow ODE (``ncont``, ~200), then
  the autoencoder's latent-conditioned decoder;
* ``diladiff``: z from the distilled MeanFlow student (``ncont``, ~5), then the decoder;
* ``reconstruct``: z from the autoencoder's encoder on given texts or held-out blocks,
  then the decoder (stage 1's reconstruction; the record holds the token accuracy);
* ``interpolate``: the latents of two texts, points on a path between them in the
  normalised latent space (:func:`latent_path`), each decoded alone with the same noise,
  so that the points differ only by their latent (the record states the path);
* ``decode``: given normalised latents (the Python API's ``Pipeline.decode``), then the
  decoder;
* ``ar``: the autoregressive baseline, the GenPPL judge (``train-judge``) as a generator:
  BOS, then one token per forward pass with its key-value cache (Hugging Face
  ``generate``), a whole block like the MDLM's. Ndisc and selection do not apply: its
  record holds null for them;
* ``bound``: the perfect-latent bound on an oracle corpus, an autoencoder trained with
  ``encoder.name: oracle-topic``: a topic drawn from the oracle's prior, its one-hot
  through the compressor, then the decoder (the record lists the topics drawn).

Every batch ``b`` decodes with a generator seeded :func:`batch_seed` ``(seed, b)`` (``ar``:
the device's global generator, seeded so for the batch and restored afterwards;
``interpolate``: every point is a batch of one, seeded as batch 0).

A :class:`Prompt` (``mdlm``, ``ladiff``, ``diladiff``, ``bound``) places given tokens in
every block, which the masked sampler keeps and never changes: a prefix to continue, or
a template whose masked spans it fills (:func:`fixed_tokens`).

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
import re
import statistics
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
from diladiff_cli.data import DataRecord, special_ids
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
from diladiff_cli.prior import (
    LatentModel,
    LatentSamples,
    check_autoencoder,
    load_latent_model,
    sample_latents,
)
from diladiff_cli.train import Reporter, autocast

SEED_STRIDE = 100003  # a prime: batch b of seed s draws from s * SEED_STRIDE + b
# A batch of latents that takes under LATENT_REPEAT_BELOW seconds to draw (a student's few
# steps: a tenth of a second on 2 cores) is drawn LATENT_TIMING_REPEATS times, the same
# seeded draw each time, and costed at the median: one stall of the machine in a single
# draw of that size doubled a sweep cell's latent share. Longer draws (the prior's ODE)
# average over such stalls and are timed once.
LATENT_TIMING_REPEATS = 3
LATENT_REPEAT_BELOW = 0.5


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


PathKind = Literal["slerp", "lerp"]


@dataclass(frozen=True)
class Interpolation:
    """What ``interpolate`` decodes: points on a path between the latents of two texts.

    Attributes:
        source: the text at t = 0.
        target: the text at t = 1.
        points: points on the path, both ends included (at least 2), at evenly spaced t.
        path: ``slerp`` or ``lerp`` (:func:`latent_path`).
        truncate: cut texts longer than the encoder's max length (else refuse).
    """

    source: str
    target: str
    points: int = 5
    path: PathKind = "slerp"
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.points < 2:
            raise DiladiffError(f"--points must be at least 2 (the two ends), got {self.points}")
        if self.path not in ("slerp", "lerp"):
            raise DiladiffError(f"--path must be slerp or lerp, got {self.path!r}")


MASK_SPAN = re.compile(r"\[MASK(?:\*(\d+))?\]")
"""A masked span of a template: ``[MASK]`` (one token) or ``[MASK*N]`` (N tokens)."""


@dataclass(frozen=True)
class Prompt:
    """Tokens the masked sampler keeps: exactly one of a prefix or a template.

    Attributes:
        prefix: text every sample starts with (after BOS); the rest is drawn.
        template: text whose masked spans (:data:`MASK_SPAN`) are drawn, placed after
            BOS; the block after it is drawn too.
    """

    prefix: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if (self.prefix is None) == (self.template is None):
            raise DiladiffError("give one of --prefix and --template")

    @classmethod
    def of(cls, *, prefix: str | None, template: str | None) -> Prompt | None:
        """The prompt of ``--prefix`` / ``--template``; None when neither is given."""
        if prefix is None and template is None:
            return None
        return cls(prefix=prefix, template=template)

    def record(self) -> dict[str, str]:
        """What the samples' record says of the prompt."""
        if self.prefix is not None:
            return {"prefix": self.prefix}
        return {"template": str(self.template)}


def fixed_tokens(prompt: Prompt, *, tokenizer: Any, data: DataRecord) -> torch.Tensor:
    """The block the masked sampler starts from: ``(L,)`` long, BOS first and EOS last
    (as in every prepared block), the prompt's tokens from position 1, ``mask_id``
    wherever the sampler draws.

    Raises:
        DiladiffError: an empty prefix, a template with no masked span, or a prompt
            longer than the L - 2 tokens between BOS and EOS.
    """
    if prompt.prefix is not None:
        option, ids = "--prefix", _text_ids(tokenizer, prompt.prefix)
        if not ids:
            raise DiladiffError("--prefix is empty: give the text every sample starts with")
    else:
        option, ids = "--template", _template_ids(tokenizer, str(prompt.template), data.mask_id)
    room = data.seq_len - 2
    if len(ids) > room:
        raise DiladiffError(
            f"{option} is {len(ids)} tokens, longer than the {room} a block holds between its "
            "BOS and EOS: shorten it"
        )
    fixed = torch.full((data.seq_len,), data.mask_id, dtype=torch.long)
    fixed[0], fixed[-1] = data.bos_id, data.eos_id
    fixed[1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
    return fixed


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    """Decoder token ids of a text, no special token added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _template_ids(tokenizer: Any, template: str, mask_id: int) -> list[int]:
    """A template's token ids, ``mask_id`` for each token of its masked spans.

    The text before a span loses its trailing spaces: with a byte-level BPE the drawn
    token carries its own leading space (" king"), as in running text.
    """
    spans = list(MASK_SPAN.finditer(template))
    if not spans:
        raise DiladiffError(
            "--template has no masked span: mark the tokens to draw with [MASK] (one token) "
            "or [MASK*N] (N tokens)"
        )
    ids: list[int] = []
    start = 0
    for span in spans:
        count = int(span.group(1) or 1)
        if count < 1:
            raise DiladiffError(f"--template: {span.group(0)} masks no token (N must be >= 1)")
        ids += _text_ids(tokenizer, template[start : span.start()].rstrip())
        ids += [mask_id] * count
        start = span.end()
    return ids + _text_ids(tokenizer, template[start:])


def latent_path(
    start: torch.Tensor, end: torch.Tensor, *, points: int, path: PathKind
) -> torch.Tensor:
    """``points`` latents at evenly spaced t from ``start`` (t = 0) to ``end`` (t = 1).

    Both ends are ``(N, D)`` normalised latents (what the prior models and the decoder
    takes: per-entry unit scale for ``latent_norm: stats``, norm sqrt(D) per latent
    vector for ``l2``). ``lerp``: (1 - t) a + t b. ``slerp`` (Shoemake 1985; White 2016
    for generative models' Gaussian latents), per latent vector of D entries:
    sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b, theta the angle
    between a and b: it keeps a vector near the norm of its ends where lerp's midpoint
    shrinks it (exactly on the sphere for ``l2``); (anti)parallel vectors, where theta
    is 0 or pi, take lerp's weights. The weights at t = 0 and t = 1 are exactly 1 and 0,
    so the ends are exactly ``start`` and ``end``.

    Args:
        start: ``(N, D)``.
        end: ``(N, D)``.
        points: at least 2.
        path: ``slerp`` or ``lerp``.

    Returns:
        ``(points, N, D)`` in ``start``'s dtype.
    """
    t = torch.arange(points, dtype=torch.float64) / (points - 1)  # (P,): exactly 0 ... 1
    a, b = start.double(), end.double()  # (N, D)
    w_a = (1 - t)[:, None].expand(points, a.shape[0])  # (P, N)
    w_b = t[:, None].expand(points, a.shape[0])
    if path == "slerp":
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)  # (N,)
        theta = cos.clamp(-1.0, 1.0).arccos()
        sin = theta.sin()
        curved = sin > 1e-6
        safe = torch.where(curved, sin, torch.ones_like(sin))
        w_a = torch.where(curved, ((1 - t)[:, None] * theta).sin() / safe, w_a)
        w_b = torch.where(curved, (t[:, None] * theta).sin() / safe, w_b)
    return (w_a[..., None] * a + w_b[..., None] * b).to(start.dtype)  # (P, N, D)


Model = Literal["mdlm", "ladiff", "diladiff", "reconstruct", "interpolate", "decode", "ar", "bound"]
PROMPTED: tuple[Model, ...] = ("mdlm", "ladiff", "diladiff", "bound")
"""The modes that draw whole blocks with the masked sampler, so take a :class:`Prompt`."""
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
    shared_noise: bool = False  # every batch draws with batch 0's seed (interpolate)


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
    interpolate: bool = False,
    ae_checkpoint: str | None = None,
    explicit: frozenset[str] = frozenset(),
    judge: str | None = None,
) -> SampleRequest:
    """Map the recipe's ``sample`` section to a model, its checkpoints and an output.

    * reconstruct (interpolate): the autoencoder (``cfg.checkpoint`` when given, else
      ``ae_checkpoint``), written to ``reconstruct.jsonl`` (``interpolate.jsonl``)
      beside ``cfg.out``;
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
        interpolate: decode points on the latent path between two texts.
        ae_checkpoint: the recipe's autoencoder (its ``encode`` section's checkpoint).
        explicit: which of ``checkpoint``, ``out``, ``ncont``, ``autoencoder`` the user
            gave: an explicit output is kept as it is; an explicit ``ncont`` is checked
            (0 is an error), while the recipe's 0 means the checkpoint's default.
        judge: the recipe's judge directory (its ``judge`` section's out).
    """
    out = Path(cfg.out)
    if reconstruct or interpolate:
        mode = "interpolate" if interpolate else "reconstruct"
        checkpoint = cfg.checkpoint if "checkpoint" in explicit else ae_checkpoint
        if checkpoint is None:
            what = "interpolation" if interpolate else "reconstruction"
            raise DiladiffError(f"{what} needs an autoencoder (--checkpoint)")
        name = out if "out" in explicit else out.with_name(f"{mode}.jsonl")
        return SampleRequest(mode, str(checkpoint), None, None, str(name))
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
    interpolation: Interpolation | None = None,
    latents: torch.Tensor | None = None,
    prompt: Prompt | None = None,
) -> SampleResult:
    """Draw samples in any of the eight modes and time them.

    Args:
        model: ``mdlm``, ``ladiff``, ``diladiff``, ``reconstruct``, ``interpolate``,
            ``decode``, ``ar`` or ``bound``.
        checkpoint: ``mdlm``: a ``train-mdlm`` checkpoint, or a ``train-ae`` one (its
            decoder with the null latent); ``ladiff`` / ``diladiff``: the prior / the
            distilled student; ``reconstruct``, ``interpolate``, ``decode``: the
            autoencoder; ``ar``: a ``train-judge`` directory; ``bound``: an autoencoder
            trained with ``encoder.name: oracle-topic``.
        settings: the discrete sampler's settings (``num_samples`` is ignored by
            ``reconstruct``, ``interpolate`` and ``decode``: one sample per source, point
            or latent; ``interpolate`` decodes in batches of one; ``ar`` ignores
            ``ndisc`` and ``selection``, which every other model needs).
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
        interpolation: ``interpolate``: the two texts and the path.
        latents: ``decode``: ``(B, N, D)`` normalised latents.
        prompt: ``mdlm``, ``ladiff``, ``diladiff``, ``bound``: given tokens every block
            keeps (:func:`fixed_tokens`); None: every position is drawn.

    Raises:
        DiladiffError: a latent model of another kind or trained on another
            autoencoder's latents, ncont < 1, sources missing or too long, no ndisc or
            selection (all but ``ar``), an ``ar`` checkpoint that is no judge directory,
            a ``bound`` checkpoint that is not the bound, no interpolation or latents
            for their mode, latents of another shape, a prompt for another mode, too
            long, or a template with no masked span.
    """
    if prompt is not None and model not in PROMPTED:
        raise DiladiffError(
            f"--prefix and --template apply to {', '.join(PROMPTED)}, not to {model}"
        )
    if model == "ar":
        plan = _ar_plan(checkpoint, settings, runtime, precision)
    elif settings.ndisc is None or settings.selection is None:
        raise DiladiffError(f"--model {model} needs --ndisc and --selection")
    elif model == "reconstruct":
        plan = _reconstruct_plan(checkpoint, settings, runtime, precision, sources or Sources())
    elif model == "interpolate":
        if interpolation is None:
            raise DiladiffError("interpolate needs two texts (--from-text and --to-text)")
        settings = dataclasses.replace(settings, batch_size=1)  # each point alone
        plan = _interpolation_plan(checkpoint, interpolation, settings, runtime, precision)
    elif model == "decode":
        if latents is None:
            raise DiladiffError("decode needs the latents to decode")
        plan = _decode_plan(checkpoint, latents, settings, runtime, precision)
    elif model == "bound":
        plan = _bound_plan(checkpoint, settings, runtime, precision, prompt)
    elif model == "mdlm" and _stage(checkpoint) != "ae":
        plan = _mdlm_plan(checkpoint, settings, runtime, precision, prompt)
    elif model == "mdlm":
        plan = _latent_plan(checkpoint, None, None, settings, runtime, precision, None, prompt)
    else:
        if autoencoder is None:
            raise DiladiffError(f"--model {model} needs an autoencoder to decode its latents")
        plan = _latent_plan(
            autoencoder, checkpoint, ncont, settings, runtime, precision, latent_cache, prompt
        )
        if plan.info["model"] != model:
            raise DiladiffError(
                f"{checkpoint} is a {plan.info['model']} latent model, not a {model} one"
            )
    if prompt is not None:
        plan.info["prompt"] = prompt.record()
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
            seed = batch_seed(settings.seed, 0 if plan.shared_noise else b)
            gen = torch.Generator(device=device).manual_seed(seed)
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
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
    prompt: Prompt | None,
) -> _Plan:
    """A ``train-mdlm`` checkpoint with the masked diffusion sampler."""
    loaded = load_mdlm(checkpoint, device=runtime.device)
    data, net = loaded.data, loaded.model
    seq_len = data.seq_len
    time_cond = loaded.config.time_conditioning
    tokenizer = load_tokenizer(data.tokenizer)
    fixed = None if prompt is None else fixed_tokens(prompt, tokenizer=tokenizer, data=data)

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
            fixed=fixed,
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
        tokenizer=tokenizer,
        decode=decode,
        draw=_no_latent,
        info=info,
    )


def _ae_decode(
    loaded: LoadedAutoencoder,
    settings: SampleSettings,
    precision: Precision,
    fixed: torch.Tensor | None = None,
) -> Decode:
    """The autoencoder's latent-conditioned decoder with these sampler settings, keeping
    the ``fixed`` tokens when given."""

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
            fixed=fixed,
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
    prompt: Prompt | None,
) -> _Plan:
    """A plan whose latents ``draw`` makes and whose tokens the autoencoder's decoder
    draws (mdlm on an autoencoder, ladiff, diladiff, bound), keeping ``prompt``'s tokens."""
    tokenizer = loaded.decoder_tokenizer
    fixed = None if prompt is None else fixed_tokens(prompt, tokenizer=tokenizer, data=loaded.data)
    return _Plan(
        description=f"sample {name}",
        num=settings.num_samples,
        seq_len=loaded.seq_len,
        tokenizer=tokenizer,
        decode=_ae_decode(loaded, settings, precision, fixed),
        draw=draw,
        info=info,
    )


def _given_latents_plan(
    loaded: LoadedAutoencoder,
    latents: torch.Tensor,
    settings: SampleSettings,
    precision: Precision,
    *,
    description: str,
    info: dict[str, Any],
    seconds_latent: float,
    latent_passes: float,
    shared_noise: bool = False,
) -> _Plan:
    """A plan that decodes given latents ``(num, N, D)`` in order, batch after batch
    (reconstruct, interpolate, decode)."""

    def draw(batch: int, size: int) -> tuple[torch.Tensor, float, float]:
        lo = batch * settings.batch_size
        return latents[lo : lo + size], 0.0, latent_passes

    return _Plan(
        description=description,
        num=len(latents),
        seq_len=loaded.seq_len,
        tokenizer=loaded.decoder_tokenizer,
        decode=_ae_decode(loaded, settings, precision),
        draw=draw,
        info=info,
        seconds_latent=seconds_latent,
        latent_passes=latent_passes,
        shared_noise=shared_noise,
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
    prompt: Prompt | None,
) -> _Plan:
    """Latent first (prior or student; none: the null latent), then the decoder."""
    device = runtime.device
    loaded = load_autoencoder(autoencoder, device=device, with_encoder=False)
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
    return _decoded_plan(
        loaded, settings, precision, name=name, draw=draw, info=info, prompt=prompt
    )


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
    # Keyed by the weights, the device (the timing is the device's) and the timing rule.
    if latent_cache is not None:
        device_key = hashlib.sha256(device_name(device).encode()).hexdigest()[:8]
        sha = f"{file_sha256(path)[:16]}-{device_key}-t{LATENT_TIMING_REPEATS}"

    def draw(batch: int, size: int) -> tuple[torch.Tensor, float, float]:
        seed_b = batch_seed(seed, batch)

        def once() -> LatentSamples:
            return sample_latents(
                latent, num_samples=size, ncont=ncont, batch_size=size, seed=seed_b, device=device
            )

        cached = _cached_latents(latent_cache, sha, ncont, seed_b, size)
        if cached is None:
            drawn = once()
            seconds = _latent_seconds(drawn.seconds, lambda: once().seconds)
            cached = (drawn.latents, seconds, drawn.forward_passes)
            _store_latents(latent_cache, sha, ncont, seed_b, *cached)
        return cached[0].to(device), cached[1], cached[2]

    return draw


def _latent_seconds(first: float, redraw: Callable[[], float]) -> float:
    """The cost of a latent draw that took ``first`` seconds: the median of
    :data:`LATENT_TIMING_REPEATS` timings (``redraw`` times the same draw again) when it
    is shorter than :data:`LATENT_REPEAT_BELOW`, else ``first``."""
    if first >= LATENT_REPEAT_BELOW:
        return first
    return statistics.median([first, *(redraw() for _ in range(LATENT_TIMING_REPEATS - 1))])


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
    info = {
        "model": "ae-reconstruction",
        **_decoder_record(checkpoint, loaded, precision),
        "source": "texts" if texts else f"{sources.split} blocks 0..{num_blocks - 1}",
        "source_tokens": source_tokens,  # replaced by the accuracies after decoding
        "sources": source_texts,
    }
    return _given_latents_plan(
        loaded,
        latents,
        settings,
        precision,
        description="reconstruct",
        info=info,
        seconds_latent=seconds_latent,
        latent_passes=1.0,  # one encoder + compressor pass per source
    )


def _interpolation_plan(
    checkpoint: str | Path,
    interpolation: Interpolation,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
) -> _Plan:
    """Encode the two texts, each alone (so that each end of the path is exactly the
    latent of its text), then decode the points of the path, each with the same noise."""
    loaded = load_autoencoder(checkpoint, device=runtime.device)
    t0 = time.perf_counter()
    start, end = (
        encode_texts(loaded, [text], truncate=interpolation.truncate).latents[0]
        for text in (interpolation.source, interpolation.target)
    )  # (N, D) each
    path = latent_path(start, end, points=interpolation.points, path=interpolation.path)
    synchronize(runtime.device)
    seconds_latent = time.perf_counter() - t0
    info = {
        "model": "ae-interpolation",
        **_decoder_record(checkpoint, loaded, precision),
        "interpolation": {
            "from": interpolation.source,
            "to": interpolation.target,
            "path": interpolation.path,
            "points": interpolation.points,
            "t": [i / (interpolation.points - 1) for i in range(interpolation.points)],
            "space": f"normalised latents (latent_norm {loaded.model.latent_norm})",
            "noise": "every point decoded alone with the seed of batch 0",
        },
    }
    return _given_latents_plan(
        loaded,
        path,
        settings,
        precision,
        description="interpolate",
        info=info,
        seconds_latent=seconds_latent,
        latent_passes=2 / interpolation.points,  # two encoder passes for the whole path
        shared_noise=True,
    )


def _decode_plan(
    checkpoint: str | Path,
    latents: torch.Tensor,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
) -> _Plan:
    """Decode given normalised latents ``(B, N, D)``: no latent stage."""
    loaded = load_autoencoder(checkpoint, device=runtime.device, with_encoder=False)
    shape = loaded.model.latent_shape
    if latents.ndim != 3 or tuple(latents.shape[1:]) != shape or len(latents) == 0:
        raise DiladiffError(
            f"latents of shape {tuple(latents.shape)}: {checkpoint} decodes (B, {shape[0]}, "
            f"{shape[1]}) with B >= 1"
        )
    info = {
        "model": "ae-decode",
        **_decoder_record(checkpoint, loaded, precision),
        "latents": list(latents.shape),
    }
    return _given_latents_plan(
        loaded,
        latents.detach().float().cpu(),
        settings,
        precision,
        description="decode",
        info=info,
        seconds_latent=0.0,
        latent_passes=0.0,
    )


def _bound_plan(
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision,
    prompt: Prompt | None,
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
    return _decoded_plan(
        loaded, settings, precision, name="bound", draw=draw, info=info, prompt=prompt
    )


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
        ids = _text_ids(loaded.decoder_tokenizer, text)
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
