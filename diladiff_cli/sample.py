"""Generation with timing: draw samples, decode them, write JSONL plus a timing record.

Three models, compared on equal footing:

* ``mdlm``: the base MDLM checkpoint (``train-mdlm``), or with ``--autoencoder`` the
  autoencoder's decoder with the null latent (the same network LaDiff decodes with);
* ``ladiff``: z from the latent prior's probability-flow ODE (``--ncont``, ~200), then
  the latent-conditioned decoder;
* ``diladiff``: z from the distilled MeanFlow student (``--ncont``, ~5), then the decoder.

Output of one call, both written atomically:

* ``<out>`` (JSONL): one sample a line, ``{"index", "seed", "text", "tokens"}``;
  ``tokens`` are the raw ids of the whole block (BOS/EOS included), ``text`` is
  their decoding with special tokens removed.
* ``<out stem>.meta.json``: the settings, the checkpoint, the device and the timing
  record (seconds and forward passes per stage).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from diladiff_cli.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from diladiff_cli.config.stages import Selection
from diladiff_cli.config.train import Precision
from diladiff_cli.diffusion.masked import sample_masked
from diladiff_cli.distributed import Runtime, device_name, synchronize
from diladiff_cli.errors import DiladiffError
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.train import Reporter, autocast

SEED_STRIDE = 100003  # a prime: batch b of seed s draws from s * SEED_STRIDE + b


def batch_seed(seed: int, batch: int) -> int:
    """The generator seed of batch ``batch`` of a run seeded ``seed``: runs with other
    seeds never share a batch's noise."""
    return seed * SEED_STRIDE + batch


@dataclass(frozen=True)
class SampleSettings:
    """How to sample (recorded with the samples)."""

    num_samples: int
    batch_size: int
    ndisc: int
    selection: Selection = "random"
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise DiladiffError("--num-samples and --batch-size must be at least 1")
        if self.ndisc < 1:
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


def sample_mdlm(
    *,
    checkpoint: str | Path,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
) -> SampleResult:
    """Sample from a ``train-mdlm`` checkpoint with the masked diffusion sampler."""
    loaded = load_mdlm(checkpoint, device=runtime.device)
    extra = loaded.extra
    tokenizer = load_tokenizer(extra["tokenizer"])
    seq_len = int(extra["seq_len"])
    model = loaded.model

    def model_fn(tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(runtime.device, precision):
            return model(tokens, sigma)

    all_tokens, passes = [], []
    n_batches = -(-settings.num_samples // settings.batch_size)
    if reporter is not None:
        reporter.start(total=n_batches, done=0, description="sample mdlm")
    synchronize(runtime.device)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for b in range(n_batches):
                size = min(settings.batch_size, settings.num_samples - b * settings.batch_size)
                gen = torch.Generator(device=runtime.device).manual_seed(
                    batch_seed(settings.seed, b)
                )
                out = sample_masked(
                    model_fn,
                    batch_size=size,
                    seq_len=seq_len,
                    mask_id=int(extra["mask_id"]),
                    steps=settings.ndisc,
                    schedule=loaded.schedule,
                    selection=settings.selection,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    cache=not loaded.config.time_conditioning,
                    generator=gen,
                    device=runtime.device,
                    time_conditioned=loaded.config.time_conditioning,
                )
                all_tokens.append(out.tokens.cpu())
                passes.append(out.forward_passes)
                if reporter is not None:
                    reporter.update(step=b + 1, metrics={"forward_passes": out.forward_passes})
    finally:
        if reporter is not None:
            reporter.stop()
    synchronize(runtime.device)
    seconds = time.perf_counter() - t0
    tokens = torch.cat(all_tokens)
    texts = tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    mean_passes = sum(passes) / len(passes)
    timing = Timing(
        seconds_total=seconds,
        seconds_latent=0.0,
        seconds_discrete=seconds,
        forward_passes_discrete=mean_passes,
        forward_passes_latent=0.0,
        tokens_per_forward=seq_len / mean_passes,
        seconds_per_sample=seconds / settings.num_samples,
        latent_share=0.0,
        device=device_name(runtime.device),
    )
    info = {
        "model": "mdlm",
        "ncont": 0,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": loaded.step,
        "seq_len": seq_len,
        "tokenizer": extra["tokenizer"],
        "vocab_size": extra["vocab_size"],
        "precision": precision,
    }
    return SampleResult(texts=texts, tokens=tokens, timing=timing, settings=settings, info=info)


def _latent_cache_file(directory: str | Path, sha: str, ncont: int, seed: int, size: int) -> Path:
    return Path(directory) / f"{sha}-nc{ncont}-seed{seed}-n{size}.safetensors"


def _cached_latents(
    directory: str | Path | None, sha: str, ncont: int, seed: int, size: int
) -> tuple[torch.Tensor, float, int] | None:
    """A batch of latents kept by :func:`_store_latents`, or None."""
    if directory is None:
        return None
    path = _latent_cache_file(directory, sha, ncont, seed, size)
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        z = f.get_tensor("latents")
    return z, float(meta["seconds"]), int(meta["forward_passes"])


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

    meta = {"seconds": repr(float(seconds)), "forward_passes": str(int(passes))}
    path = _latent_cache_file(directory, sha, ncont, seed, z.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save({"latents": z.detach().cpu().contiguous()}, metadata=meta)
    atomic_write_bytes(path, data)


def sample_hybrid(
    *,
    autoencoder: str | Path,
    latent_model: str | Path | None,
    ncont: int | None,
    settings: SampleSettings,
    runtime: Runtime,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
    latent_cache: str | Path | None = None,
) -> SampleResult:
    """Latent first, then tokens: draw z (prior or student), decode it with the
    autoencoder's latent-conditioned MDLM over ``settings.ndisc`` steps.

    Args:
        autoencoder: the ``ae`` checkpoint whose decoder turns z into tokens.
        latent_model: a ``prior`` (LaDiff) or ``distill`` (DiLaDiff) checkpoint; ``None``
            decodes with the null latent (the MDLM baseline on the same decoder).
        ncont: continuous steps (default: the checkpoint's).
        settings: the discrete sampler's settings.
        runtime: device.
        precision: decoder autocast precision (the latent ODE always runs in float32).
        reporter: progress sink.
        latent_cache: a directory where each batch of latents is kept, keyed by the
            latent checkpoint's sha256, the device, ncont, seed and size, with the seconds and
            forward passes measured when it was drawn. A sweep over discrete settings
            (Ndisc, selection, temperature) then draws each z once; the timing record
            still carries the latent stage's measured cost. None: no cache.

    Raises:
        DiladiffError: a latent model trained on another autoencoder's latents, ncont < 1.
    """
    from diladiff_cli.ae import decode_latents, load_autoencoder
    from diladiff_cli.prior import check_autoencoder, load_latent_model, sample_latents

    device = runtime.device
    loaded = load_autoencoder(autoencoder, device=device)
    latent = None
    latent_sha = ""
    if latent_model is not None:
        latent = load_latent_model(latent_model, device=device)
        check_autoencoder(latent, autoencoder)
        if latent_cache is not None:  # keyed by weights and device (the timing is the device's)
            from diladiff_cli.latent_shards import file_sha256

            device_key = hashlib.sha256(device_name(device).encode()).hexdigest()[:8]
            latent_sha = f"{file_sha256(latent_model)[:16]}-{device_key}"
    n_batches = -(-settings.num_samples // settings.batch_size)
    tokens, passes, latent_passes = [], [], []
    seconds_latent = seconds_discrete = 0.0
    name = "mdlm" if latent is None else ("ladiff" if latent.kind == "prior" else "diladiff")
    if reporter is not None:
        reporter.start(total=n_batches, done=0, description=f"sample {name}")
    try:
        for b in range(n_batches):
            size = min(settings.batch_size, settings.num_samples - b * settings.batch_size)
            z = None
            if latent is not None:
                ncont = latent.ncont if ncont is None else ncont
                seed = batch_seed(settings.seed, b)
                cached = _cached_latents(latent_cache, latent_sha, ncont, seed, size)
                if cached is None:
                    drawn = sample_latents(
                        latent, num_samples=size, ncont=ncont, batch_size=size, seed=seed,
                        device=device,
                    )  # fmt: skip
                    cached = (drawn.latents, drawn.seconds, drawn.forward_passes)
                    _store_latents(latent_cache, latent_sha, ncont, seed, *cached)
                z = cached[0].to(device)
                seconds_latent += cached[1]
                latent_passes.append(cached[2])
            gen = torch.Generator(device=device).manual_seed(batch_seed(settings.seed, b))
            synchronize(device)
            t0 = time.perf_counter()
            out = decode_latents(
                loaded,
                z,
                num=size,
                ndisc=settings.ndisc,
                selection=settings.selection,
                generator=gen,
                temperature=settings.temperature,
                top_p=settings.top_p,
                precision=precision,
            )
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
    texts = loaded.decoder_tokenizer.batch_decode(all_tokens.tolist(), skip_special_tokens=True)
    mean_passes = sum(passes) / len(passes)
    total = seconds_latent + seconds_discrete
    timing = Timing(
        seconds_total=total,
        seconds_latent=seconds_latent,
        seconds_discrete=seconds_discrete,
        forward_passes_discrete=mean_passes,
        forward_passes_latent=sum(latent_passes) / len(latent_passes) if latent_passes else 0.0,
        tokens_per_forward=loaded.seq_len / mean_passes,
        seconds_per_sample=total / settings.num_samples,
        latent_share=seconds_latent / total if total > 0 else 0.0,
        device=device_name(device),
    )
    info = {
        "model": name,
        "ncont": ncont if latent is not None else 0,
        "autoencoder": str(Path(autoencoder).resolve()),
        "latent_model": str(Path(latent_model).resolve()) if latent_model is not None else None,
        "checkpoint": str(Path(autoencoder).resolve()),
        "checkpoint_step": loaded.step,
        "seq_len": loaded.seq_len,
        "tokenizer": loaded.extra["tokenizer"],
        "vocab_size": loaded.extra["vocab_size"],
        "precision": precision,
    }
    return SampleResult(texts=texts, tokens=all_tokens, timing=timing, settings=settings, info=info)


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
