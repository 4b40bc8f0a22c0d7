"""Benchmark every stage on whatever device it runs (``scripts/bench.py``).

What it measures, at a recipe's sizes:

* training, through the real training loop (:func:`diladiff_cli.train.train`: AdamW, fused
  on CUDA, clipping, EMA, autocast, ``torch.compile`` when asked): steps/s and tokens/s of
  the MDLM, the autoencoder (the frozen encoder run on every step, and the cached-states
  variant), the prior (LaDiff) and the distillation (MeanFlow and TVM, their JVP included),
  latents/s for the last two; on a GPU of known peak also model-FLOPs utilisation,
  6 x trained parameters x tokens / time / peak (token-embedding lookups not counted, nor
  the frozen encoder's, the teacher's or the JVP's passes);
* sampling, through the library's sampler (:func:`diladiff_cli.sample.generate`): MDLM,
  LaDiff and DiLaDiff at Ndisc in {L/16, L/4, L}: seconds per sample, tokens per second
  and the latent share, all read from the sampler's :class:`~diladiff_cli.sample.Timing`.

Weights (:mod:`diladiff_cli.analysis.bench_inputs`): the recipe's trained checkpoints when
all of them exist, else random initialisation at the recipe's sizes, written as
checkpoints to a temporary directory so that both cases run the same code. Timing: each training stage runs ``plan.warmup`` steps,
then ``plan.steps`` timed steps; the clock starts when the loop draws the first batch of
the first timed step and stops at the loop's last metrics read, with a device
synchronisation only at those two points.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diladiff_cli.ae import AutoencoderLoss, load_autoencoder, set_trainable
from diladiff_cli.analysis.bench_inputs import (
    RandomBlocks,
    RandomTwoView,
    Weights,
    prepared,
    resolve_weights,
)
from diladiff_cli.analysis.experiments import git_commit
from diladiff_cli.checkpoint import CheckpointMeta, read_meta
from diladiff_cli.config import LoggingConfig, Recipe, TrainConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.data import DataRecord
from diladiff_cli.diffusion.flow import LatentDiffusionLoss
from diladiff_cli.diffusion.masked import MaskedDiffusionLoss
from diladiff_cli.diffusion.meanflow import MeanFlowLoss, TVMLoss
from diladiff_cli.distributed import Runtime, device_name, synchronize
from diladiff_cli.encoder import CachedStates, TwoViewBlocks
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_json, atomic_write_text
from diladiff_cli.mdlm import TokenBlocks, load_mdlm
from diladiff_cli.models.dit import TokenEmbedding
from diladiff_cli.prior import (
    LatentSource,
    load_prior,
    load_student,
)
from diladiff_cli.sample import SampleResult, SampleSettings, generate
from diladiff_cli.train import train

STAGES = ("mdlm", "ae", "prior", "distill", "sample")

# Dense bf16 peak FLOP/s by device name (torch.cuda.get_device_name); an H100 SXM reports
# itself as "H100 80GB HBM3". Any other device (H100 PCIe / NVL included): no MFU.
PEAK_BF16 = (
    ("H100 80GB HBM3", 989e12),
    ("H100 SXM", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Plan:
    """How much to run.

    Attributes:
        warmup: untimed training steps per stage.
        steps: timed training steps per stage.
        max_batch: cap on a stage's batch size (0: the recipe's); a capped batch runs
            without accumulation.
        samples: samples per sampling call (one batch).
        ncont_ladiff: continuous steps of the prior's ODE.
        ncont_diladiff: steps of the student's few-step sampler.
        precision: autocast precision of training and of the decoder while sampling.
        compile: torch.compile the trained network; None: the recipe's choice on CUDA,
            off on CPU.
    """

    warmup: int
    steps: int
    max_batch: int
    samples: int
    ncont_ladiff: int
    ncont_diladiff: int
    precision: Precision
    compile: bool | None


@dataclass
class TrainFigure:
    """One training stage's throughput.

    Attributes:
        stage: ``mdlm``, ``ae``, ``ae-cached``, ``prior``, ``distill-meanflow``, ``distill-tvm``.
        model: a one-line description of the network.
        trained_params: parameters the optimizer updates.
        dense_params: those that do matmul work (token-embedding tables excluded): the MFU's N.
        batch: sequences (or latents) per optimizer step.
        micro_batch: per forward pass.
        tokens_per_step: batch x sequence length (decoder tokens; latent slots for the
            prior and the distillation).
        steps: timed steps.
        seconds: their wall time.
        steps_per_s: steps / seconds.
        tokens_per_s: tokens_per_step x steps_per_s.
        latents_per_s: batch x steps_per_s (prior and distillation only).
        mfu: model-FLOPs utilisation (CUDA devices of known peak only).
        compiled: torch.compile was on.
        loss: the loss at the last step (a sanity check: finite).
    """

    stage: str
    model: str
    trained_params: int
    dense_params: int
    batch: int
    micro_batch: int
    tokens_per_step: int
    steps: int
    seconds: float
    steps_per_s: float
    tokens_per_s: float
    latents_per_s: float | None
    mfu: float | None
    compiled: bool
    loss: float


@dataclass
class SampleFigure:
    """One sampling call, read from its Timing record.

    Attributes:
        model: ``mdlm``, ``ladiff`` or ``diladiff``.
        ncont: latent steps (0 for MDLM).
        ndisc: decoder steps.
        batch: samples in the call (one batch).
        seconds_per_sample: wall time / samples (loading excluded).
        tokens_per_s: sequence length / seconds_per_sample.
        forward_passes_discrete: decoder passes per batch.
        forward_passes_latent: latent-network passes per batch.
        latent_share: the latent sampler's share of the time.
        timing: the whole Timing record.
    """

    model: str
    ncont: int
    ndisc: int
    batch: int
    seconds_per_sample: float
    tokens_per_s: float
    forward_passes_discrete: float
    forward_passes_latent: float
    latent_share: float
    timing: dict[str, Any]


# ----------------------------------------------------------------------------- timing


class _StartClock:
    """Wraps the training split; starts the clock when the loop draws batch ``start``
    (the first micro-batch of the first timed step)."""

    def __init__(self, source: Any, *, start: int, device: torch.device) -> None:
        self.source, self.start, self.device = source, start, device
        self.calls = 0
        self.t0: float | None = None

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices: np.ndarray) -> Any:
        if self.calls == self.start:
            synchronize(self.device)
            self.t0 = time.perf_counter()
        self.calls += 1
        return self.source.batch(indices)


class _StopClock:
    """A training-loop reporter that stops the clock at the last step's metrics (the
    loop has just read them from the device, so the queue is drained)."""

    def __init__(self, *, total: int, device: torch.device) -> None:
        self.total, self.device = total, device
        self.t1: float | None = None
        self.metrics: dict[str, float] = {}
        self.messages: list[str] = []

    def start(self, *, total: int, done: int, description: str) -> None:
        pass

    def update(self, *, step: int, metrics: dict[str, float]) -> None:
        if step == self.total:
            synchronize(self.device)
            self.t1 = time.perf_counter()
            self.metrics = dict(metrics)

    def log(self, message: str) -> None:
        self.messages.append(message)
        print(f"  {message}", file=sys.stderr)

    def stop(self) -> None:
        pass


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known CUDA device, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def dense_params(model: nn.Module) -> int:
    """Trained parameters that do matmul work: token-embedding tables (lookups) excluded."""
    lookups = {
        id(p) for m in model.modules() if isinstance(m, TokenEmbedding) for p in m.parameters()
    }
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in lookups)


def time_training(
    *,
    stage: str,
    description: str,
    model: nn.Module,
    objective: Any,
    source: Any,
    train_cfg: TrainConfig,
    tokens_per_example: int,
    latents: bool,
    plan: Plan,
    runtime: Runtime,
) -> TrainFigure:
    """Warm-up then timed steps of the real training loop on ``source``.

    Args:
        stage: the figure's name.
        description: the network in one line.
        model: the network to train (built on CPU or already on the device).
        objective: the stage's loss.
        source: the training split (an ExampleSource).
        train_cfg: the stage's optimisation settings (batch, accumulation, EMA, clipping);
            the step counts, logging and checkpointing are the benchmark's.
        tokens_per_example: sequence length (latent slots N for latent stages).
        latents: report latents/s (prior and distillation).
        plan: how much to run.
        runtime: the device.
    """
    device = runtime.device
    batch, micro = train_cfg.batch_size, train_cfg.micro_batch_size
    if plan.max_batch and batch > plan.max_batch:
        batch, micro = plan.max_batch, 0
    total = plan.warmup + plan.steps
    compiled = (
        plan.compile if plan.compile is not None else (device.type == "cuda" and train_cfg.compile)
    )
    cfg = dataclasses.replace(
        train_cfg,
        steps=total,
        batch_size=batch,
        micro_batch_size=micro,
        log_every=total,  # one metrics read, at the end: no host sync inside the window
        eval_every=0,
        ckpt_every=total,
        compile=compiled,
        logging=LoggingConfig(),  # the JSONL log only: no TensorBoard or W&B run per timing
    )
    accum = batch // (micro or batch)
    start = _StartClock(source, start=plan.warmup * accum, device=device)
    stop = _StopClock(total=total, device=device)
    print(f"train {stage}: {plan.warmup} + {plan.steps} steps, batch {batch}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="diladiff-bench-") as tmp:
        # the loop writes its final checkpoint after the clock has stopped
        train(
            model=model,
            objective=objective,
            train_data=start,
            valid_data=None,
            cfg=cfg,
            out=Path(tmp) / f"{stage}.pt",
            meta=CheckpointMeta(stage=f"bench-{stage}", step=0, config={}),
            runtime=runtime,
            precision=plan.precision,
            resume=False,
            reporter=stop,
        )
    seconds = stop.t1 - start.t0
    steps_per_s = plan.steps / seconds
    tokens = batch * tokens_per_example
    n_dense = dense_params(model)
    peak = peak_flops(device)
    return TrainFigure(
        stage=stage,
        model=description,
        trained_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        dense_params=n_dense,
        batch=batch,
        micro_batch=micro or batch,
        tokens_per_step=tokens,
        steps=plan.steps,
        seconds=seconds,
        steps_per_s=steps_per_s,
        tokens_per_s=tokens * steps_per_s,
        latents_per_s=batch * steps_per_s if latents else None,
        mfu=6 * n_dense * tokens * steps_per_s / peak if peak else None,
        compiled=compiled,
        loss=float(stop.metrics.get("loss", float("nan"))),
    )


# ----------------------------------------------------------------------------- stages


def bench_mdlm(recipe: Recipe, weights: Weights, plan: Plan, runtime: Runtime) -> TrainFigure:
    loaded = load_mdlm(weights.mdlm, device=torch.device("cpu"))
    mask_id, seq_len = loaded.data.mask_id, loaded.data.seq_len
    c = loaded.config
    source = (
        TokenBlocks(recipe.data.out, "train")
        if prepared(recipe)
        else RandomBlocks(
            n=2 * recipe.mdlm.train.batch_size,
            seq_len=seq_len,
            vocab_size=c.vocab_size,
            mask_id=mask_id,
        )
    )
    return time_training(
        stage="mdlm",
        description=f"DiT {c.depth}x{c.hidden}, V={c.vocab_size}, L={seq_len}",
        model=loaded.model,
        objective=MaskedDiffusionLoss(schedule=loaded.schedule, mask_id=mask_id),
        source=source,
        train_cfg=recipe.mdlm.train,
        tokens_per_example=seq_len,
        latents=False,
        plan=plan,
        runtime=runtime,
    )


def bench_ae(
    recipe: Recipe, weights: Weights, plan: Plan, runtime: Runtime, *, cached: bool
) -> TrainFigure:
    """The autoencoder's step: the frozen encoder on every step, or (``cached``) its
    states kept in memory, as ``encoder.cache_blocks`` trains."""
    loaded = load_autoencoder(weights.ae, device=runtime.device)
    cfg, model = loaded.config, loaded.model
    set_trainable(model, cfg.decoder.trainable)
    model.train()
    batch = recipe.ae.train.batch_size
    if prepared(recipe):
        source = TwoViewBlocks(
            data_dir=recipe.data.out,
            split="train",
            decoder_tokenizer=loaded.decoder_tokenizer,
            encoder_tokenizer=loaded.encoder_tokenizer,
            max_len=cfg.encoder.max_len,
            limit=batch if cached else None,  # cached: every step draws the same blocks
        )
        if cached:
            source = CachedStates(source, encoder=loaded.encoder, device=runtime.device)
    else:
        dit = model.decoder.dit.config
        source = RandomTwoView(
            RandomBlocks(
                n=batch, seq_len=loaded.seq_len, vocab_size=dit.vocab_size, mask_id=loaded.mask_id
            ),
            enc_len=cfg.encoder.max_len,
            enc_vocab=len(loaded.encoder_tokenizer),
            states_dim=loaded.encoder.hidden_size if cached else None,
        )
    dit, comp = model.decoder.dit.config, cfg.compressor
    encoder_params = sum(p.numel() for p in loaded.encoder.parameters())
    description = (
        f"encoder {Path(cfg.encoder.name).name} ({encoder_params / 1e6:.1f} M, frozen"
        f"{', cached states' if cached else ''}) -> compressor {comp.depth}x{comp.width} -> "
        f"{comp.num_latents}x{comp.latent_dim} latents -> decoder DiT {dit.depth}x{dit.hidden} "
        f"+ {len(cfg.decoder.cross_attn_after)} cross-attn, L={loaded.seq_len}"
    )
    objective = AutoencoderLoss(
        encoder=loaded.encoder,
        schedule=loaded.schedule,
        mask_id=loaded.mask_id,
        augment=cfg.augment,
        max_len=cfg.encoder.max_len,
    )
    return time_training(
        stage="ae-cached" if cached else "ae",
        description=description,
        model=model,
        objective=objective,
        source=source,
        train_cfg=recipe.ae.train,
        tokens_per_example=loaded.seq_len,
        latents=False,
        plan=plan,
        runtime=runtime,
    )


def _latent_source(shape: tuple[int, int], batch: int) -> LatentSource:
    g = torch.Generator().manual_seed(2)
    return LatentSource(torch.randn(2 * batch, *shape, generator=g))


def _latent_description(kind: str, model: nn.Module) -> str:
    c = model.config
    return f"{kind} LatentDiT {c.depth}x{c.hidden}, {c.num_latents}x{c.latent_dim} latents"


def bench_prior(recipe: Recipe, weights: Weights, plan: Plan, runtime: Runtime) -> TrainFigure:
    prior = load_prior(weights.prior)
    return time_training(
        stage="prior",
        description=_latent_description("prior", prior.model),
        model=prior.model.train(),
        objective=LatentDiffusionLoss(flow=prior.flow, times=recipe.prior.time),
        source=_latent_source(prior.shape, recipe.prior.train.batch_size),
        train_cfg=recipe.prior.train,
        tokens_per_example=prior.shape[0],
        latents=True,
        plan=plan,
        runtime=runtime,
    )


def bench_distill(
    recipe: Recipe, weights: Weights, plan: Plan, runtime: Runtime, *, objective: str
) -> TrainFigure:
    teacher = load_prior(weights.prior, device=runtime.device)
    student = load_student(weights.student)
    loss_cls = MeanFlowLoss if objective == "meanflow" else TVMLoss
    cfg = recipe.distill
    return time_training(
        stage=f"distill-{objective}",
        description=_latent_description("student", student.model) + " (+ frozen teacher, JVP)",
        model=student.model.train(),
        objective=loss_cls(
            teacher=teacher.model, flow=teacher.flow, times=cfg.time, weighting=cfg.weighting
        ),
        source=_latent_source(student.shape, cfg.train.batch_size),
        train_cfg=cfg.train,
        tokens_per_example=student.shape[0],
        latents=True,
        plan=plan,
        runtime=runtime,
    )


def _figure(result: SampleResult, model: str, ncont: int) -> SampleFigure:
    t = result.timing
    return SampleFigure(
        model=model,
        ncont=ncont,
        ndisc=result.settings.ndisc,
        batch=result.settings.num_samples,
        seconds_per_sample=t.seconds_per_sample,
        tokens_per_s=int(result.info["seq_len"]) / t.seconds_per_sample,
        forward_passes_discrete=t.forward_passes_discrete,
        forward_passes_latent=t.forward_passes_latent,
        latent_share=t.latent_share,
        timing=dataclasses.asdict(t),
    )


def bench_sampling(weights: Weights, plan: Plan, runtime: Runtime) -> list[SampleFigure]:
    """MDLM, LaDiff and DiLaDiff at Ndisc in {L/16, L/4, L}, one warm-up call each."""
    meta = read_meta(weights.mdlm)
    seq_len = DataRecord.from_extra(meta.extra, source=f"{weights.mdlm} metadata").seq_len
    ndiscs = sorted({max(1, seq_len // 16), max(1, seq_len // 4), seq_len})
    precision = plan.precision

    def settings(ndisc: int) -> SampleSettings:
        return SampleSettings(num_samples=plan.samples, batch_size=plan.samples, ndisc=ndisc)

    def mdlm(ndisc: int) -> SampleResult:
        return generate(
            model="mdlm",
            checkpoint=weights.mdlm,
            settings=settings(ndisc),
            runtime=runtime,
            precision=precision,
        )

    def hybrid(model: Literal["ladiff", "diladiff"], latent_model: Path, ncont: int):
        def run(ndisc: int) -> SampleResult:
            return generate(
                model=model,
                checkpoint=latent_model,
                autoencoder=weights.ae,
                ncont=ncont,
                settings=settings(ndisc),
                runtime=runtime,
                precision=precision,
            )

        return run

    runs = [("mdlm", 0, mdlm)]
    if weights.prior is not None:
        runs.append(
            ("ladiff", plan.ncont_ladiff, hybrid("ladiff", weights.prior, plan.ncont_ladiff))
        )
    if weights.student is not None:
        runs.append(
            (
                "diladiff",
                plan.ncont_diladiff,
                hybrid("diladiff", weights.student, plan.ncont_diladiff),
            )
        )
    figures = []
    for name, ncont, run in runs:
        print(f"sample {name}: Ncont {ncont}, Ndisc {ndiscs}", file=sys.stderr)
        run(ndiscs[0])  # warm-up: allocator, kernels
        figures += [_progress(_figure(run(ndisc), name, ncont)) for ndisc in ndiscs]
    return figures


def _progress(figure: Any) -> Any:
    """Print a finished figure as one JSON line on stderr (a long run shows what it has)."""
    print(json.dumps(dataclasses.asdict(figure)), file=sys.stderr, flush=True)
    return figure


# ----------------------------------------------------------------------------- report


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "" if x is None else format(x, fmt)


def markdown(record: dict[str, Any]) -> str:
    """The section appended to the benchmarks file."""
    lines = [
        f"\n## `{record['recipe']}` on {record['device']} ({record['date']})\n",
        f"- device: {record['device']}, {record['threads']} CPU threads",
        f"- software: torch {record['torch']}, git {record['git']}",
        f"- weights: {record['weights']}",
        f"- data: {record['data']}",
        f"- protocol: {record['warmup']} warm-up + {record['steps']} timed steps of the "
        f"training loop per stage, precision {record['precision']}; sampling: "
        f"{record['samples']} samples in one batch, one warm-up call per model",
    ]
    lines += [f"- note: {note}" for note in record["notes"]]
    if record["train"]:
        lines += [
            "",
            "| stage | model | trained params | batch (micro) | steps/s | tokens/s "
            "| latents/s | MFU | compiled |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for f in record["train"]:
            lines.append(
                f"| {f['stage']} | {f['model']} | {f['trained_params'] / 1e6:.2f} M "
                f"| {f['batch']} ({f['micro_batch']}) | {f['steps_per_s']:.3g} "
                f"| {_num(f['tokens_per_s'])} | {_num(f['latents_per_s'])} "
                f"| {_num(f['mfu'], '.1%')} | {'yes' if f['compiled'] else 'no'} |"
            )
    if record["sample"]:
        lines += [
            "",
            "| sampler | Ncont | Ndisc | batch | s/sample | tokens/s | decoder passes "
            "| latent passes | latent share |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for f in record["sample"]:
            lines.append(
                f"| {f['model']} | {f['ncont']} | {f['ndisc']} | {f['batch']} "
                f"| {f['seconds_per_sample']:.4g} | {f['tokens_per_s']:,.1f} "
                f"| {f['forward_passes_discrete']:.1f} | {f['forward_passes_latent']:.0f} "
                f"| {f['latent_share']:.1%} |"
            )
    return "\n".join(lines) + "\n"


HEADER = "# Benchmarks\n\nAppended by `make bench` (scripts/bench.py); newest last.\n"


def append_results(record: dict[str, Any], md_path: Path, json_path: Path) -> None:
    """Append the section to ``md_path`` and the record to the JSON list at ``json_path``,
    each by an atomic rewrite of the whole file."""
    text = md_path.read_text() if md_path.is_file() else HEADER
    atomic_write_text(md_path, text.rstrip("\n") + "\n" + markdown(record))
    runs = json.loads(json_path.read_text()) if json_path.is_file() else []
    if not isinstance(runs, list):
        raise DiladiffError(f"{json_path} is not a JSON list of runs")
    atomic_write_json(json_path, [*runs, record], indent=2)


def run_benchmark(
    recipe: Recipe, choice: str | None, stages: list[str], plan: Plan, runtime: Runtime
) -> dict[str, Any]:
    """Every asked stage the recipe has; the JSON record of the run.

    Args:
        recipe: the sizes and the checkpoints to time.
        choice: ``checkpoints``, ``random`` or None (checkpoints when all exist).
        stages: a subset of :data:`STAGES`.
        plan: how much to run.
        runtime: the device (one process).
    """
    train_figures: list[TrainFigure] = []
    sample_figures: list[SampleFigure] = []

    def keep(figure: TrainFigure) -> None:
        train_figures.append(_progress(figure))

    with tempfile.TemporaryDirectory(prefix="diladiff-bench-weights-") as tmp:
        weights = resolve_weights(recipe, choice, Path(tmp))
        notes = list(weights.notes)
        if "mdlm" in stages:
            keep(bench_mdlm(recipe, weights, plan, runtime))
        if weights.ae is None:
            notes.append(
                "no `ae` section in the recipe: autoencoder, prior and distillation skipped"
            )
        elif "ae" in stages:
            for cached in (False, True):
                keep(bench_ae(recipe, weights, plan, runtime, cached=cached))
        if weights.ae is not None and weights.prior is None:
            notes.append("no `prior` section in the recipe: prior and distillation skipped")
        if weights.prior is not None and "prior" in stages:
            keep(bench_prior(recipe, weights, plan, runtime))
        if weights.student is not None and "distill" in stages:
            for objective in ("meanflow", "tvm"):
                keep(bench_distill(recipe, weights, plan, runtime, objective=objective))
        if "sample" in stages:
            sample_figures = bench_sampling(weights, plan, runtime)
        if runtime.device.type == "cuda" and peak_flops(runtime.device) is None:
            notes.append("MFU omitted: no peak figure for this GPU")
    data = (
        f"prepared blocks of {recipe.data.out}"
        if prepared(recipe)
        else "random tokens (no prepared data); encoder view padded to its max_len"
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "recipe": recipe.name,
        "device": device_name(runtime.device),
        "device_type": runtime.device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "git": git_commit(),
        "weights": weights.origin,
        "trained_checkpoints": weights.trained,
        "data": data,
        "precision": plan.precision,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "samples": plan.samples,
        "notes": notes,
        "train": [dataclasses.asdict(f) for f in train_figures],
        "sample": [dataclasses.asdict(f) for f in sample_figures],
    }
