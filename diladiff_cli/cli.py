"""The `diladiff` command line: one function per subcommand, nothing else.

Each command parses its options, loads the recipe (when none is given the embedded
default ``recipes/oracle/default.yaml``, what ``make reproduce`` runs) with its options
applied as typed values (:func:`_load`), calls one core function and prints. User
errors are one line on stderr and a non-zero exit, never a traceback; so are click's own
parse errors (exit code 2, pointing at ``--help``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

try:  # newer typers (0.29 here) vendor click as typer._click; older ones use click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from diladiff_cli.config import (
    Recipe,
    encode_section,
    load_recipe,
    require_section,
    with_options,
)
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import check_output
from diladiff_cli.locks import output_lock
from diladiff_cli.structs import to_dict

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _usage_error(err: click_errors.UsageError, *, path: str) -> NoReturn:
    """click's own parse errors (a bad value, an unknown option, a missing argument) as
    one line like every other error, instead of its usage box; ``--help`` shows that.
    ``path``: the command whose help to point at when click does not say which."""
    if isinstance(err, getattr(click_errors, "NoArgsIsHelpError", ())):
        raise err  # the help text, as asked for (no arguments at all)
    path = err.ctx.command_path if err.ctx is not None else path
    _fail(f"{err.format_message()} (see '{path} --help')", err.exit_code)


class _Group(TyperGroup):
    """The app's group: parse errors of the group and of every subcommand pass through
    its ``make_context`` (the group's options) or its ``invoke`` (a subcommand's)."""

    def make_context(self, info_name: str | None, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(info_name, *args, **kwargs)
        except click_errors.UsageError as err:
            _usage_error(err, path=info_name or "diladiff")

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except click_errors.UsageError as err:
            _usage_error(err, path=ctx.command_path)


app = typer.Typer(
    cls=_Group,
    name="diladiff",
    help="DiLaDiff: distilled latent-augmented diffusion for language modeling.\n\n"
    "Pipeline: prepare -> train-mdlm -> sample. Run any command without a recipe to "
    "use the embedded default (recipes/oracle/default.yaml, the oracle corpus, outputs under "
    "runs/oracle/; recipes/tiny/default.yaml is the Shakespeare one).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class PrecisionOpt(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ModelOpt(str, Enum):
    mdlm = "mdlm"
    ladiff = "ladiff"
    diladiff = "diladiff"
    ar = "ar"
    bound = "bound"


class SelectionOpt(str, Enum):
    random = "random"
    confidence = "confidence"


class PathOpt(str, Enum):
    slerp = "slerp"
    lerp = "lerp"


RecipeArg = Annotated[
    Path | None,
    typer.Argument(help="Recipe YAML; default: the embedded oracle recipe.", show_default=False),
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
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (default: the recipe's).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue an interrupted run.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
PrecisionArg = Annotated[PrecisionOpt, typer.Option(help="Autocast precision.")]


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
    """A rich progress bar on an interactive terminal (rank 0 only); plain log lines
    otherwise (``TTY_INTERACTIVE=0``: what ``scripts/reproduce.py`` sets for two stages
    that share a terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = enabled and self.console.is_interactive
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


def _load(recipe: Path | None, set_: list[str] | None, options: dict[str, Any]) -> Recipe:
    """The recipe with ``--set`` overrides, then the command's own options (dotted key ->
    typed value; ``None``: not given), which reach the config as they are."""
    return load_recipe(recipe, list(set_ or []), options)


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

    Example: diladiff prepare recipes/oracle/default.yaml
    """
    cfg = _load(recipe, set_, {"data.num_proc": num_proc or None})
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
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Warm start: a checkpoint, or an MDLM hub id / directory.")
    ] = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train or fine-tune the base masked diffusion LM (MDLM).

    Example: diladiff train-mdlm recipes/oracle/default.yaml --steps 200

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-mdlm
    recipes/paper/mdlm_owt.yaml
    """
    cfg = _load(
        recipe,
        set_,
        {
            "mdlm.train.steps": steps,
            "mdlm.out": out,
            "mdlm.init_from": init_from,
            "mdlm.train.seed": seed,
        },
    )
    if dry_run:
        return _dry_run({"data": cfg.data, "mdlm": cfg.mdlm})
    check_output(cfg.mdlm.out)  # before the data and the model load
    from diladiff_cli.mdlm import train_mdlm as run

    runtime = _runtime(device)
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
        reporter=RichReporter(enabled=runtime.is_main),
    )
    if runtime.is_main:
        _print_json({"checkpoint": cfg.mdlm.out, **to_dict(result)})


@app.command("train-ae")
@handles_errors
def train_ae(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base MDLM for the decoder: a train-mdlm checkpoint or an MDLM hub id."),
    ] = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the latent autoencoder (stage 1): frozen BERT -> compressor -> z -> MDLM decoder.

    Example: diladiff train-ae recipes/oracle/default.yaml

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-ae
    recipes/paper/ae_owt.yaml
    """
    cfg = _load(
        recipe,
        set_,
        {"ae.train.steps": steps, "ae.out": out, "ae.decoder.base": base, "ae.train.seed": seed},
    )
    ae = require_section(cfg, "ae", "stage 1")
    if dry_run:
        return _dry_run({"data": cfg.data, "ae": ae})
    check_output(ae.out)  # before the encoder and the base decoder load
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

    Example: diladiff encode recipes/oracle/default.yaml --split train

    Example: diladiff encode --text "To be, or not to be" --save z.safetensors

    More than one GPU: torchrun --nproc_per_node=8 -m diladiff_cli encode RECIPE
    (each process encodes its own range of shards).
    """
    cfg = _load(recipe, set_, {})
    options = {
        "checkpoint": checkpoint,
        "splits": split or None,
        "out": out,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "limit": limit,
    }
    enc = with_options(encode_section(cfg), options, name="encode")
    if dry_run:
        return _dry_run(enc)
    from diladiff_cli.encode import encode_given_texts, encode_splits, read_text_file

    runtime = _runtime(device)
    if text is not None or text_file is not None:
        texts = list(text or []) + (read_text_file(text_file) if text_file is not None else [])
        if runtime.is_main:
            _print_json(
                encode_given_texts(
                    checkpoint=enc.checkpoint,
                    texts=texts,
                    device=runtime.device,
                    truncate=truncate,
                    save=save,
                )
            )
        return
    results = encode_splits(
        enc,
        data_dir=cfg.data.out,
        runtime=runtime,
        precision=precision.value,
        reporter=RichReporter(enabled=runtime.is_main),
    )
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
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: the recipe's).")] = None,
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
            help="mdlm, ladiff (prior ODE, then tokens), diladiff (distilled student, then "
            "tokens), ar (the judge, one token per forward pass; --checkpoint default: the "
            "recipe's judge.out) or bound (oracle corpus: a prior-drawn topic, then the "
            "bound autoencoder's decoder; --checkpoint: train-ae with "
            "--set ae.encoder.name=oracle-topic). Default: the recipe's; diladiff when "
            "--ncont is given."
        ),
    ] = None,
    ncont: Annotated[
        int | None, typer.Option(help="Latent steps (LaDiff ~200, DiLaDiff ~5).")
    ] = None,
    autoencoder: Annotated[
        Path | None,
        typer.Option(help="Autoencoder whose decoder decodes z; with --model mdlm: null latent."),
    ] = None,
    to_text: Annotated[
        str | None,
        typer.Option(
            help="Interpolate: decode points on the latent path from the one --from-text to "
            "this text (autoencoder)."
        ),
    ] = None,
    points: Annotated[
        int | None,
        typer.Option(help="With --to-text: points on the path, both ends included (default 5)."),
    ] = None,
    path: Annotated[
        PathOpt | None,
        typer.Option(help="With --to-text: slerp (default) or lerp, in the normalised latents."),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="Every sample starts with this text (kept); the rest is drawn."),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            help="Draw the masked spans of this text, [MASK] one token, [MASK*3] three (the "
            "rest is kept); the block after it is drawn too."
        ),
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

    Autoregressive baseline: --model ar draws whole blocks from the GenPPL judge
    (train-judge), one token per forward pass with its key-value cache.

    Example: diladiff sample --model ar --temperature 0.9

    Perfect-latent bound (oracle corpus): --model bound draws a topic from the oracle's
    prior and decodes from its one-hot through the bound autoencoder (train-ae RECIPE
    --set ae.encoder.name=oracle-topic --out runs/oracle/bound.pt).

    Example: diladiff sample RECIPE --model bound --checkpoint runs/oracle/bound.pt

    Interpolation (autoencoder): --from-text A --to-text B decodes --points latents on
    the path from A's latent to B's (slerp or lerp in the normalised latent space), each
    with the same noise; the record states the path.

    Example: diladiff sample --from-text "the king rode" --to-text "the ships waited" --points 5

    Given tokens (mdlm, ladiff, diladiff, bound): --prefix keeps a start and draws the
    rest; --template keeps its text and draws its masked spans and the block after it.
    The sampler never changes a given token.

    Example: diladiff sample --ncont 5 --template "the [MASK] rode to the [MASK*2] ."
    """
    given = {
        "checkpoint": checkpoint,
        "ndisc": ndisc,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "selection": selection,
        "temperature": temperature,
        "top_p": top_p,
        "out": out,
        "seed": seed,
        "ncont": ncont,
        "autoencoder": autoencoder,
        "model": model or ("diladiff" if ncont is not None else None),
    }
    cfg = _load(recipe, set_, {f"sample.{k}": v for k, v in given.items()})
    if dry_run:
        return _dry_run(cfg.sample)
    from diladiff_cli.sample import (
        Interpolation,
        Prompt,
        Sources,
        generate,
        resolve_request,
        sample_settings,
        write_samples,
    )

    interpolation = None
    if to_text is None and (points is not None or path is not None):
        raise DiladiffError("--points and --path need --to-text (interpolation)")
    if to_text is not None:
        if not from_text:
            raise DiladiffError(
                "--to-text needs --from-text: the path runs from its latent to --to-text's"
            )
        if len(from_text) > 1 or reconstruct:
            raise DiladiffError("--to-text interpolates from exactly one --from-text")
        interpolation = Interpolation(
            source=from_text[0],
            target=to_text,
            points=5 if points is None else points,
            path=path.value if path is not None else "slerp",
            truncate=truncate,
        )
    prompt = Prompt.of(prefix=prefix, template=template)
    runtime = _runtime(device)
    if not runtime.is_main:
        return
    rebuild = bool(from_text or reconstruct)
    request = resolve_request(
        cfg.sample,
        reconstruct=rebuild,
        interpolate=interpolation is not None,
        ae_checkpoint=encode_section(cfg).checkpoint if rebuild and checkpoint is None else None,
        explicit=frozenset(k for k, v in given.items() if v is not None),
        judge=cfg.judge.out,
    )
    check_output(request.out)  # before the models load
    with output_lock(request.out):  # one writer per sample file, for the whole run
        result = generate(
            model=request.model,
            checkpoint=request.checkpoint,
            settings=sample_settings(cfg.sample),
            runtime=runtime,
            autoencoder=request.autoencoder,
            ncont=request.ncont,
            precision=precision.value,
            reporter=RichReporter(enabled=True),
            sources=Sources(
                texts=tuple(from_text or ()),
                num_blocks=reconstruct or 0,
                data_dir=cfg.data.out,
                truncate=truncate,
            ),
            interpolation=interpolation,
            prompt=prompt,
        )
        meta = write_samples(result, request.out)
    for text in result.texts[:show]:
        err_console.rule()
        err_console.print(text, markup=False, highlight=False)
    _print_json({"samples": request.out, "meta": str(meta), "timing": to_dict(result.timing)})


@app.command("train-judge")
@handles_errors
def train_judge(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Judge directory to write.")] = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the small GPT-2 of the CPU recipes on the training split (the GenPPL judge on
    Shakespeare, the autoregressive baseline on the oracle corpus), saved as a Hugging
    Face directory that `eval` loads like gpt2-large and `sample --model ar` samples.

    Example: diladiff train-judge recipes/oracle/default.yaml
    """
    cfg = _load(
        recipe, set_, {"judge.train.steps": steps, "judge.out": out, "judge.train.seed": seed}
    )
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
        Path | None, typer.Option(help="Recipe YAML; default: the embedded oracle recipe.")
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

    Example: diladiff eval runs/oracle/samples/mdlm.jsonl
    """
    options = {
        "scorer.name": scorer,
        "scorer.batch_size": batch_size,
        "scorer.precision": precision,
        "eos": eos,
        "num_references": num_references,
        "mauve.enabled": mauve,
    }
    cfg = _load(recipe, set_, {f"eval.{k}": v for k, v in options.items()})
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
    """Speed-quality sweep: sample + eval every cell of the recipe's grids once per
    sampling seed (pareto.seeds; finished ones are skipped), then write pareto.csv (mean
    and standard error over seeds), pareto_seeds.csv, pareto.md and the figures.

    Example: diladiff pareto recipes/oracle/default.yaml --set "pareto.seeds=[0, 1, 2]"
    """
    cfg = _load(recipe, set_, {"pareto.out": out, "pareto.num_samples": num_samples})
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
            "seeds_csv": str(result.seeds_csv),
            "table": str(result.table),
            "plots": {k: str(v) for k, v in result.plots.items()},
            "skipped_plots": result.skipped_plots,
            "cells_run": result.cells_run,
            "cells_cached": result.cells_cached,
            "floor": to_dict(result.floor),
            "headline": [to_dict(s) for s in result.speedups],
        }
    )


@app.command("train-prior")
@handles_errors
def train_prior(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint to write.")] = None,
    latents: Annotated[
        Path | None, typer.Option(help="`encode` output (train/ and valid/ inside).")
    ] = None,
    autoencoder: Annotated[
        Path | None, typer.Option(help="The autoencoder the latents must come from.")
    ] = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Train the latent prior (stage 2, LaDiff): a diffusion model over encoder latents.

    Example: diladiff train-prior recipes/oracle/default.yaml

    Without latents (--set prior.latents=null) the blocks are encoded on the fly.

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli train-prior RECIPE
    """
    cfg = _load(
        recipe,
        set_,
        {
            "prior.train.steps": steps,
            "prior.out": out,
            "prior.latents": latents,
            "prior.autoencoder": autoencoder,
            "prior.train.seed": seed,
        },
    )
    section = require_section(cfg, "prior", "stage 2")
    if dry_run:
        return _dry_run({"prior": section})
    check_output(section.out)
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
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Student checkpoint to write.")] = None,
    objective: Annotated[
        ObjectiveOpt | None,
        typer.Option(help="meanflow or tvm (Terminal Velocity Matching)."),
    ] = None,
    latents: Annotated[
        Path | None, typer.Option(help="`encode` output (default: the teacher's latents).")
    ] = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionArg = PrecisionOpt.fp32,
) -> None:
    """Self-distil the prior into a few-step student (stage 3, DiLaDiff: MeanFlow or TVM).

    Example: diladiff distill --teacher runs/oracle/ladiff.pt --steps 25000

    More than one GPU or node: torchrun --nproc_per_node=8 -m diladiff_cli distill RECIPE
    """
    cfg = _load(
        recipe,
        set_,
        {
            "distill.teacher": teacher,
            "distill.train.steps": steps,
            "distill.out": out,
            "distill.objective": objective,
            "distill.latents": latents,
            "distill.train.seed": seed,
        },
    )
    if dry_run:
        return _dry_run({"distill": cfg.distill})
    check_output(cfg.distill.out)  # before the teacher loads
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


@app.command()
@handles_errors
def export(
    source: Annotated[
        Path, typer.Argument(help="Run directory (runs/oracle) or recipe.", metavar="<source>")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Export directory to write.", metavar="<out>")],
    recipe: Annotated[
        Path | None,
        typer.Option(help="The run's recipe, written beside it (default: SOURCE if a recipe)."),
    ] = None,
    quality: Annotated[
        Path | None,
        typer.Option(help="A sweep's pareto.csv: its DiLaDiff cells go into the model card."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Write a trained pipeline as Hugging Face-style directories with a model card
    (config.json + model.safetensors per part, the tokenizer, the recipe); Pipeline.load
    and load_exported read it back, from the directory or a hub id after push.

    Example: diladiff export runs/oracle exports/oracle --recipe recipes/oracle/default.yaml
    """
    from diladiff_cli.export import PipelinePaths, export_pipeline, measured_from_sweep
    from diladiff_cli.pipeline import Pipeline

    recipe = recipe or (source if source.is_file() else None)
    cfg = _load(recipe, None, {}) if recipe is not None else None
    paths = PipelinePaths.from_parts(Pipeline.load(source, device="cpu").parts)
    if dry_run:
        return _print_json({"out": str(out_dir), "parts": paths.parts()})
    measured = measured_from_sweep(quality) if quality is not None else None
    written = export_pipeline(
        paths=paths,
        out_dir=out_dir,
        recipe_text=yaml.safe_dump(to_dict(cfg), sort_keys=False) if cfg else None,
        recipe_name=cfg.name if cfg else None,
        description=(cfg.description or "") if cfg else "",
        sample=cfg.sample if cfg else None,
        measured=measured,
        overwrite=overwrite,
    )
    _print_json({"export": str(written)})
