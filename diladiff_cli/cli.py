"""The `diladiff` command line: one function per subcommand, nothing else.

Each command parses its options, loads the recipe (the embedded default
``recipes/tiny/default.yaml`` when none is given), calls one core function and
prints. User errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diladiff_cli.config import Recipe, load_recipe
from diladiff_cli.errors import DiladiffError
from diladiff_cli.structs import to_dict

TORCHRUN_HELP = (
    "More than one GPU or node: launch with torchrun, e.g. "
    "`torchrun --nproc_per_node=8 -m diladiff_cli train-mdlm recipes/paper/mdlm_owt.yaml`."
)

app = typer.Typer(
    name="diladiff",
    help="DiLaDiff: distilled latent-augmented diffusion for language modeling.\n\n"
    "Pipeline: prepare -> train-mdlm -> sample. Run any command without a recipe to "
    "use the embedded default (recipes/tiny/default.yaml, outputs under runs/tiny/).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class PrecisionOpt(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ModelOpt(str, Enum):
    mdlm = "mdlm"
    ladiff = "ladiff"
    diladiff = "diladiff"


class SelectionOpt(str, Enum):
    random = "random"
    confidence = "confidence"


RecipeArg = Annotated[
    Path | None,
    typer.Argument(help="Recipe YAML; default: the embedded tiny recipe.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a recipe key, e.g. --set mdlm.model.depth=4 (repeatable)."
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved config; run nothing.")
]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed (default: the recipe's).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
PrecisionArg = Annotated[PrecisionOpt, typer.Option(help="Autocast precision.")]


def _fail(message: str, code: int) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Turn user errors into one line and an exit code; Ctrl-C into a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiladiffError as err:
            _fail(str(err).splitlines()[0] if str(err) else type(err).__name__, err.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume", 130)
        finally:
            from diladiff_cli.distributed import shutdown

            shutdown()

    return wrapper  # type: ignore[return-value]


class RichReporter:
    """A rich progress bar on a TTY (rank 0 only); plain log lines otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, *, total: int, done: int, description: str) -> None:
        if not self.bar:
            if self.enabled and done:
                self.console.print(f"{description}: resuming at {done}/{total}", markup=False)
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=done, metrics="")

    def update(self, *, step: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "lr")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, metrics=text)
        elif self.enabled:
            self.console.print(f"step {step} {text}", markup=False, highlight=False)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _recipe(path: Path | None, overrides: list[str] | None, seed: int | None) -> Recipe:
    extra = list(overrides or [])
    if seed is not None:
        extra += [f"mdlm.train.seed={seed}"]
    return load_recipe(path, extra)


def _dry_run(section: Any) -> None:
    typer.echo(yaml.safe_dump(to_dict(section), sort_keys=False).rstrip())


def _runtime(device: str):
    from diladiff_cli.distributed import init_runtime

    return init_runtime(device)


def _print_json(record: dict[str, Any]) -> None:
    typer.echo(json.dumps(record, indent=2))


@app.command()
@handles_errors
def prepare(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    num_proc: Annotated[int | None, typer.Option(help="Tokenisation processes.")] = None,
) -> None:
    """Corpus -> tokenizer -> packed token blocks on disk (skipped when up to date).

    Example: diladiff prepare recipes/tiny/default.yaml
    """
    overrides = list(set_ or []) + ([f"data.num_proc={num_proc}"] if num_proc else [])
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run(cfg.data)
    from diladiff_cli.data import prepare as run_prepare

    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()
    reporter = RichReporter(enabled=True)
    info = run_prepare(cfg.data, progress=reporter.log)
    _print_json(to_dict(info))


@app.command("train-mdlm")
@handles_errors
def train_mdlm(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the recipe's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Warm start: a checkpoint, or an MDLM hub id / directory.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train or fine-tune the base masked diffusion LM (MDLM).

    Example: diladiff train-mdlm recipes/tiny/default.yaml --steps 200

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-mdlm
    recipes/paper/mdlm_owt.yaml
    """
    overrides = list(set_ or [])
    overrides += [f"mdlm.train.steps={steps}"] if steps is not None else []
    overrides += [f"mdlm.out={out}"] if out is not None else []
    overrides += [f"mdlm.init_from={init_from}"] if init_from is not None else []
    cfg = _recipe(recipe, overrides, seed)
    if dry_run:
        return _dry_run({"data": cfg.data, "mdlm": cfg.mdlm})
    from diladiff_cli.mdlm import train_mdlm as run

    runtime = _runtime(device)
    reporter = RichReporter(enabled=runtime.is_main)
    result = run(
        model_cfg=cfg.mdlm.model,
        train_cfg=cfg.mdlm.train,
        data=cfg.data,
        out=cfg.mdlm.out,
        init_from=cfg.mdlm.init_from,
        noise_eps=cfg.mdlm.noise_eps,
        stage_config=to_dict(cfg.mdlm),
        runtime=runtime,
        precision=precision.value,
        resume=resume,
        reporter=reporter,
    )
    if runtime.is_main:
        _print_json({"checkpoint": cfg.mdlm.out, **to_dict(result)})


def _ae_section(cfg: Recipe, recipe: Path | None):
    if cfg.ae is None:
        raise DiladiffError(f"recipe {recipe or 'default'} has no 'ae' section (stage 1)")
    return cfg.ae


def _encode_section(cfg: Recipe, recipe: Path | None):
    """The recipe's `encode` section; without one, the `ae` checkpoint and latents beside it."""
    from diladiff_cli.config.stages import EncodeConfig

    if cfg.encode is not None:
        return cfg.encode
    ae_out = Path(_ae_section(cfg, recipe).out)
    return EncodeConfig(checkpoint=str(ae_out), out=str(ae_out.with_name(ae_out.stem + "-latents")))


@app.command("train-ae")
@handles_errors
def train_ae(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the recipe's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base MDLM for the decoder: a train-mdlm checkpoint or an MDLM hub id."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the latent autoencoder (stage 1): frozen BERT -> compressor -> z -> MDLM decoder.

    Example: diladiff train-ae recipes/tiny/default.yaml

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-ae
    recipes/paper/ae_owt.yaml
    """
    overrides = list(set_ or [])
    overrides += [f"ae.train.steps={steps}"] if steps is not None else []
    overrides += [f"ae.out={out}"] if out is not None else []
    overrides += [f"ae.decoder.base={base}"] if base is not None else []
    overrides += [f"ae.train.seed={seed}"] if seed is not None else []
    cfg = _recipe(recipe, overrides, None)
    ae = _ae_section(cfg, recipe)
    if dry_run:
        return _dry_run({"data": cfg.data, "ae": ae})
    from diladiff_cli.ae import train_ae as run

    runtime = _runtime(device)
    result = run(
        cfg=ae,
        data=cfg.data,
        stage_config=to_dict(ae),
        runtime=runtime,
        precision=precision.value,
        resume=resume,
        reporter=RichReporter(enabled=runtime.is_main),
    )
    if runtime.is_main:
        _print_json({"checkpoint": ae.out, **to_dict(result)})


@app.command()
@handles_errors
def encode(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Autoencoder checkpoint.")] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="Split to encode: train or valid (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Latent directory (one sub-directory per split).")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(help="Latents per shard.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Blocks per forward.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Encode only the first N blocks (default: the recipe's).")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="Encode this text instead (repeatable).")
    ] = None,
    text_file: Annotated[
        Path | None, typer.Option(help="Encode the texts of this file, one per non-empty line.")
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="Cut texts longer than the encoder's max length (else refuse).")
    ] = False,
    save: Annotated[
        Path | None, typer.Option(help="With --text: write the latents to this safetensors file.")
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Encode splits into sharded safetensors latents (resumable), or encode given texts.

    Example: diladiff encode recipes/tiny/default.yaml --split train

    Example: diladiff encode --text "To be, or not to be" --save z.safetensors

    More than one GPU: torchrun --nproc_per_node=8 -m diladiff_cli encode RECIPE
    (each process encodes its own range of shards).
    """
    from diladiff_cli.ae import encode_split, encode_texts, load_autoencoder, save_text_latents

    cfg = _recipe(recipe, list(set_ or []), None)
    enc = _encode_section(cfg, recipe)
    changes = {
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "splits": tuple(split) if split else None,
        "out": str(out) if out is not None else None,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "limit": limit,
    }
    try:
        enc = dataclasses.replace(enc, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as err:
        raise DiladiffError(str(err)) from None
    if any(s not in ("train", "valid") for s in enc.splits):
        raise DiladiffError(f"--split must be train or valid, got {', '.join(enc.splits)}")
    if dry_run:
        return _dry_run(enc)
    runtime = _runtime(device)
    texts = list(text or [])
    if text_file is not None:
        if not text_file.is_file():
            raise DiladiffError(f"text file not found: {text_file}")
        texts += [line for line in text_file.read_text().splitlines() if line.strip()]
    if text is not None or text_file is not None:
        if not runtime.is_main:
            return
        loaded = load_autoencoder(enc.checkpoint, device=runtime.device)
        encoded = encode_texts(loaded, texts, truncate=truncate)
        if save is not None:
            save_text_latents(save, encoded, loaded)
        _print_json(
            {
                "checkpoint": enc.checkpoint,
                "shape": list(encoded.latents.shape),
                "normalization": loaded.model.latent_norm,
                "encoder_tokens": encoded.lengths,
                "truncated": encoded.truncated,
                "saved": str(save) if save is not None else None,
                "latents": [
                    [[round(v, 4) for v in row] for row in z] for z in encoded.latents.tolist()
                ],
            }
        )
        return
    reporter = RichReporter(enabled=runtime.is_main)
    results = [
        encode_split(
            checkpoint=enc.checkpoint,
            data_dir=cfg.data.out,
            split=name,
            out=Path(enc.out) / name,
            shard_size=enc.shard_size,
            batch_size=enc.batch_size,
            runtime=runtime,
            precision=precision.value,
            limit=enc.limit or None,
            reporter=reporter,
        )
        for name in enc.splits
    ]
    if runtime.is_main:
        _print_json({"latents": [to_dict(r) for r in results]})


@app.command()
@handles_errors
def sample(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Decoder checkpoint.")] = None,
    ndisc: Annotated[int | None, typer.Option(help="Discrete (masked diffusion) steps.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="How many samples.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch.")] = None,
    selection: Annotated[
        SelectionOpt | None, typer.Option(help="Token selection: random (MDLM) or confidence.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Decoder temperature.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass (1 = off).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSONL file to write.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
    show: Annotated[int, typer.Option(help="Print this many samples.")] = 2,
    from_text: Annotated[
        list[str] | None,
        typer.Option(help="Decode from the latent of this text (autoencoder; repeatable)."),
    ] = None,
    reconstruct: Annotated[
        int | None,
        typer.Option(help="Decode from the latents of the first N held-out blocks (autoencoder)."),
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="With --from-text: cut texts too long for the encoder or a block.")
    ] = False,
    model: Annotated[
        ModelOpt | None,
        typer.Option(
            help="mdlm, ladiff (prior ODE, then tokens) or diladiff (distilled student, then "
            "tokens). Default: the recipe's; diladiff when --ncont is given."
        ),
    ] = None,
    ncont: Annotated[
        int | None, typer.Option(help="Latent steps (LaDiff ~200, DiLaDiff ~5).")
    ] = None,
    autoencoder: Annotated[
        Path | None,
        typer.Option(help="Autoencoder whose decoder decodes z; with --model mdlm: null latent."),
    ] = None,
) -> None:
    """Sample texts from the MDLM; writes JSONL plus a timing record (<out>.meta.json).

    Example: diladiff sample --ndisc 64 --selection confidence --num-samples 8

    Reconstruction (stage 1): --from-text "..." or --reconstruct N decode from the
    autoencoder latent of those texts (--checkpoint: the autoencoder, default the
    recipe's ae.out); the record holds the token accuracy against the sources.

    Example: diladiff sample --reconstruct 16 --ndisc 8 --selection confidence

    Latent first, then tokens (stages 2-3): --model ladiff draws z with the prior's ODE,
    --model diladiff with the distilled student; the record splits the time between the
    latent and the discrete stage.

    Example: diladiff sample --ncont 5 --ndisc 64
    """
    overrides = list(set_ or [])
    for key, value in (
        ("checkpoint", checkpoint),
        ("ndisc", ndisc),
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("selection", selection.value if selection else None),
        ("temperature", temperature),
        ("top_p", top_p),
        ("out", out),
        ("ncont", ncont),
        ("autoencoder", autoencoder),
        ("model", model.value if model else ("diladiff" if ncont is not None else None)),
    ):
        if value is not None:
            overrides.append(f"sample.{key}={value}")
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run(cfg.sample)
    from diladiff_cli.sample import SampleSettings, sample_mdlm, write_samples

    s = cfg.sample
    settings = SampleSettings(
        num_samples=s.num_samples,
        batch_size=s.batch_size,
        ndisc=s.ndisc,
        selection=s.selection,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=seed,
    )
    runtime = _runtime(device)
    if not runtime.is_main:
        return
    if from_text or reconstruct:
        from diladiff_cli.ae import reconstruct as run_reconstruct

        s = dataclasses.replace(
            s,
            checkpoint=str(checkpoint or _encode_section(cfg, recipe).checkpoint),
            out=str(out or Path(s.out).with_name("reconstruct.jsonl")),
        )
        result = run_reconstruct(
            checkpoint=s.checkpoint,
            settings=settings,
            runtime=runtime,
            precision=precision.value,
            texts=from_text,
            num_blocks=reconstruct or 0,
            data_dir=cfg.data.out,
            truncate=truncate,
            reporter=RichReporter(enabled=True),
        )
    elif s.model != "mdlm" or autoencoder is not None:
        from diladiff_cli.sample import sample_hybrid

        if out is None:
            s = dataclasses.replace(s, out=str(Path(s.out).with_name(f"{s.model}.jsonl")))
        latent = {"mdlm": None, "ladiff": s.prior, "diladiff": s.student}[s.model]
        result = sample_hybrid(
            autoencoder=s.autoencoder,
            latent_model=latent,
            ncont=ncont if ncont is not None else (s.ncont or None),  # --ncont 0: an error
            settings=settings,
            runtime=runtime,
            precision=precision.value,
            reporter=RichReporter(enabled=True),
        )
    else:
        result = sample_mdlm(
            checkpoint=s.checkpoint,
            settings=settings,
            runtime=runtime,
            precision=precision.value,
            reporter=RichReporter(enabled=True),
        )
    meta = write_samples(result, s.out)
    for text in result.texts[:show]:
        err_console.rule()
        err_console.print(text, markup=False, highlight=False)
    _print_json({"samples": s.out, "meta": str(meta), "timing": to_dict(result.timing)})


@app.command("train-judge")
@handles_errors
def train_judge(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the recipe's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Judge directory to write.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the GenPPL judge of the embedded default: a small GPT-2 on the training split,
    saved as a Hugging Face directory that `eval` loads like gpt2-large.

    Example: diladiff train-judge recipes/tiny/default.yaml
    """
    overrides = list(set_ or [])
    overrides += [f"judge.train.steps={steps}"] if steps is not None else []
    overrides += [f"judge.out={out}"] if out is not None else []
    overrides += [f"judge.train.seed={seed}"] if seed is not None else []
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run({"data": cfg.data, "judge": cfg.judge})
    from diladiff_cli.judge import train_judge as run

    runtime = _runtime(device)
    result = run(
        cfg=cfg.judge,
        data=cfg.data,
        stage_config=to_dict(cfg.judge),
        runtime=runtime,
        precision=precision.value,
        resume=resume,
        reporter=RichReporter(enabled=runtime.is_main),
    )
    if runtime.is_main:
        _print_json(to_dict(result))


class EosOpt(str, Enum):
    strip = "strip"
    truncate = "truncate"


@app.command("eval")
@handles_errors
def eval_(
    samples: Annotated[
        list[Path], typer.Argument(help="Sample files (JSONL from `diladiff sample`).")
    ],
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe YAML; default: the embedded tiny recipe.")
    ] = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    scorer: Annotated[
        str | None, typer.Option(help="GenPPL scorer: HF causal LM id or directory.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Scorer windows per batch.")] = None,
    precision: Annotated[
        PrecisionOpt | None, typer.Option(help="Scorer autocast precision.")
    ] = None,
    eos: Annotated[
        EosOpt | None,
        typer.Option(
            help="strip: drop BOS/EOS, keep text after EOS; truncate: cut at the first EOS."
        ),
    ] = None,
    num_references: Annotated[
        int | None, typer.Option(help="Reference texts (0 = as many as samples).")
    ] = None,
    mauve: Annotated[bool | None, typer.Option(help="Compute MAUVE.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Record to write (one sample file only).")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Score sample files: GenPPL, MAUVE, entropy, speed; writes <stem>.eval.json beside each.

    Example: diladiff eval runs/tiny/samples/mdlm.jsonl
    """
    overrides = list(set_ or [])
    for key, value in (
        ("scorer.name", scorer),
        ("scorer.batch_size", batch_size),
        ("scorer.precision", precision.value if precision else None),
        ("eos", eos.value if eos else None),
        ("num_references", num_references),
        ("mauve.enabled", mauve),
    ):
        if value is not None:
            overrides.append(f"eval.{key}={value}")
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run(cfg.eval)
    if out is not None and len(samples) != 1:
        raise DiladiffError("--out needs exactly one sample file")
    from diladiff_cli.evaluate import Evaluator, record_path, write_record

    runtime = _runtime(device)
    evaluator = Evaluator(
        cfg=cfg.eval, data_dir=cfg.data.out, device=runtime.device,
        reporter=RichReporter(enabled=True),
    )  # fmt: skip
    records = [evaluator.evaluate(path) for path in samples]  # all or nothing is written
    written = [
        write_record(r, out or record_path(p)) for r, p in zip(records, samples, strict=True)
    ]
    _print_json({str(w): to_dict(r) for w, r in zip(written, records, strict=True)})


@app.command()
@handles_errors
def pareto(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    out: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="Samples per cell.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Speed-quality sweep: sample + eval every cell of the recipe's grids (finished cells
    are skipped), then write pareto.csv, pareto.md and the figures.

    Example: diladiff pareto recipes/tiny/default.yaml
    """
    overrides = list(set_ or [])
    overrides += [f"pareto.out={out}"] if out is not None else []
    overrides += [f"pareto.num_samples={num_samples}"] if num_samples is not None else []
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run({"pareto": cfg.pareto, "eval": cfg.eval})
    from diladiff_cli.pareto import run_sweep

    runtime = _runtime(device)
    result = run_sweep(
        cfg=cfg.pareto,
        eval_cfg=cfg.eval,
        data_dir=cfg.data.out,
        runtime=runtime,
        precision=precision.value,
        reporter=RichReporter(enabled=True),
    )
    _print_json(
        {
            "csv": str(result.csv),
            "table": str(result.table),
            "plots": {k: str(v) for k, v in result.plots.items()},
            "skipped_plots": result.skipped_plots,
            "cells_run": result.cells_run,
            "cells_cached": result.cells_cached,
            "floor": to_dict(result.floor),
            "headline": [to_dict(s) for s in result.speedups],
        }
    )


def _prior_section(cfg: Recipe, recipe: Path | None):
    if cfg.prior is None:
        raise DiladiffError(f"recipe {recipe or 'default'} has no 'prior' section (stage 2)")
    return cfg.prior


@app.command("train-prior")
@handles_errors
def train_prior(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the recipe's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    latents: Annotated[
        Path | None, typer.Option(help="`encode` output (train/ and valid/ inside).")
    ] = None,
    autoencoder: Annotated[
        Path | None, typer.Option(help="The autoencoder the latents must come from.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the latent prior (stage 2, LaDiff): a diffusion model over encoder latents.

    Example: diladiff train-prior recipes/tiny/default.yaml

    Without latents (--set prior.latents=null) the blocks are encoded on the fly.

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-prior RECIPE
    """
    overrides = list(set_ or [])
    overrides += [f"prior.train.steps={steps}"] if steps is not None else []
    overrides += [f"prior.out={out}"] if out is not None else []
    overrides += [f"prior.latents={latents}"] if latents is not None else []
    overrides += [f"prior.autoencoder={autoencoder}"] if autoencoder is not None else []
    overrides += [f"prior.train.seed={seed}"] if seed is not None else []
    cfg = _recipe(recipe, overrides, None)
    section = _prior_section(cfg, recipe)
    if dry_run:
        return _dry_run({"prior": section})
    from diladiff_cli.prior import train_prior as run

    runtime = _runtime(device)
    result = run(
        cfg=section,
        data_dir=cfg.data.out,
        runtime=runtime,
        precision=precision.value,
        resume=resume,
        reporter=RichReporter(enabled=runtime.is_main),
    )
    if runtime.is_main:
        _print_json({"checkpoint": section.out, **to_dict(result)})


class ObjectiveOpt(str, Enum):
    meanflow = "meanflow"
    tvm = "tvm"


@app.command()
@handles_errors
def distill(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    teacher: Annotated[
        Path | None, typer.Option(help="The prior to distil (a train-prior checkpoint).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: the recipe's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Student checkpoint to write.")] = None,
    objective: Annotated[
        ObjectiveOpt | None,
        typer.Option(help="meanflow or tvm (Terminal Velocity Matching)."),
    ] = None,
    latents: Annotated[
        Path | None, typer.Option(help="`encode` output (default: the teacher's latents).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Self-distil the prior into a few-step student (stage 3, DiLaDiff: MeanFlow or TVM).

    Example: diladiff distill --teacher runs/tiny/ladiff.pt --steps 25000

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli distill RECIPE
    """
    overrides = list(set_ or [])
    overrides += [f"distill.teacher={teacher}"] if teacher is not None else []
    overrides += [f"distill.train.steps={steps}"] if steps is not None else []
    overrides += [f"distill.out={out}"] if out is not None else []
    overrides += [f"distill.objective={objective.value}"] if objective is not None else []
    overrides += [f"distill.latents={latents}"] if latents is not None else []
    overrides += [f"distill.train.seed={seed}"] if seed is not None else []
    cfg = _recipe(recipe, overrides, None)
    if dry_run:
        return _dry_run({"distill": cfg.distill})
    from diladiff_cli.prior import distill as run

    runtime = _runtime(device)
    result = run(
        cfg=cfg.distill,
        data_dir=cfg.data.out,
        runtime=runtime,
        precision=precision.value,
        resume=resume,
        reporter=RichReporter(enabled=runtime.is_main),
    )
    if runtime.is_main:
        _print_json({"checkpoint": cfg.distill.out, **to_dict(result)})


def main() -> None:
    """Console entry point (also ``python -m diladiff_cli``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="diladiff")
    sys.exit(0)
