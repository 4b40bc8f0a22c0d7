"""The `diladiff` command line: one function per subcommand, nothing else.

Each command parses its options, loads the recipe (the embedded default
``recipes/tiny/default.yaml`` when none is given), calls one core function and
prints. User errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

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
) -> None:
    """Sample texts from the MDLM; writes JSONL plus a timing record (<out>.meta.json).

    Example: diladiff sample --ndisc 64 --selection confidence --num-samples 8
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


def main() -> None:
    """Console entry point (also ``python -m diladiff_cli``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="diladiff")
    sys.exit(0)
