"""Run the whole DiLaDiff pipeline, stage by stage, make-style, and time every stage.

The stages, in order: prepare, train-mdlm, train-judge, train-ae, train-bound (the
perfect-latent bound, oracle corpora only), encode, train-prior,
distill (the default MeanFlow student) and the other students of experiment 6 (three at paper
scale, four at tiny scale, whose default student is tuned apart from the paper's settings),
latent-analysis (``scripts/ae_report.py``), prior-quality (``scripts/prior_report.py``),
one ``pareto`` sweep per experiment 2..6, and report (``scripts/report.py``, which writes
``<results>/REPORT.md``). A stage whose recipe section is absent is left out (the paper
pipeline has no ``judge``: GenPPL is scored by gpt2-large).

Make-style: the CLI stages skip finished work themselves (a complete checkpoint, shards
on disk, cached sweep cells) and say so in their JSON result; the two script stages are
skipped here when their JSON record is newer than every checkpoint they read (``--force``
reruns them). Every stage's command, return code, wall time and whether it was skipped go
to ``<results>/timings.json``, rewritten atomically after each stage; a skipped stage keeps
the timing of the earlier run that did the work. A failing stage stops the run with its
exit code. After an interruption, run the same command again.

Two at a time (``--jobs 2``, CPU scales; the default is one at a time): each stage names
the stages whose outputs it reads (:attr:`Stage.after`), and once they are done it may
start beside another, on half the threads (``OMP_NUM_THREADS``, else the cores), its
output lines marked with its name: the judge and the bound beside the autoencoder, the
latent analysis beside the encoder and the prior, the students beside one another.
``prepare``, ``train-mdlm`` (the longest, which gains most from the second thread), the
sweeps (they time their samples) and ``report`` run alone, after every stage before them.
A stage's thread count follows from the plan, not from what happened to run beside it, so
such a run is repeatable; but its trainings differ from one at a time's as another
machine's would (one thread sums in another order, and training carries the difference
along), and on 2 cores it saved only 6 % of the oracle pipeline's wall time
(``results/oracle/jobs2_trial/``), so it is not the default.

Examples::

    python scripts/reproduce.py                      # the oracle corpus (CPU, offline)
    python scripts/reproduce.py --scale tiny         # the tiny recipe on Shakespeare
    python scripts/reproduce.py --dry-run            # print the commands, run nothing
    python scripts/reproduce.py --only pareto,report
    python scripts/reproduce.py --seed 1             # a second seed of the whole pipeline
    python scripts/reproduce.py --scale paper --nproc 8
    python scripts/reproduce.py --scale oracle-gpu   # the oracle corpus at L = 128 on one GPU

The stages are planned from the recipes through :func:`diladiff_cli.config.load_recipe` and
the experiment list of :mod:`diladiff_cli.analysis.experiments`, both torch-free: no torch
import, so ``--dry-run`` starts at once.

A stage that runs this interpreter (``python -m diladiff_cli ...``, ``python scripts/...``)
runs in a child forked from this process once it has imported torch, transformers and the
toolkit (:func:`preload`), so that those imports are paid once instead of once a stage
(a stage that does almost nothing: 5.9 s fresh, 1.3 s forked, on 2 cores); the child runs the command as a fresh interpreter would
(``runpy``, the same argv, environment and working directory) and its exit status is the
stage's. ``--no-fork`` starts a fresh interpreter for every stage, as torchrun stages and
any platform without ``fork`` always do.
"""

from __future__ import annotations

import argparse
import atexit
import codecs
import datetime
import json
import logging
import os
import platform
import runpy
import selectors
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.text import Text

from diladiff_cli.analysis.experiments import (
    CPU_SCALES,
    HEADLINE_SWEEP,
    SCALES,
    SWEEPS,
    base_recipe,
    experiment_recipe,
    git_commit,
)
from diladiff_cli.config import Recipe, load_recipe
from diladiff_cli.config.stages import ORACLE_TOPIC
from diladiff_cli.files import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
# The students of experiment 6 that the `distill` stage does not make: the arguments its
# recipe's header gives, after `distill <recipe>`. At paper scale the pipeline's student
# (MeanFlow, LogitNormal(-1, 2)) is meanflow-ln12; the tiny default's student is tuned for
# the tiny scale, so experiment 6 distils its own meanflow-ln12.
_PAPER_STUDENTS = (
    ("meanflow-ln11", ("--set", "distill.time.std=1.0"), "diladiff_meanflow_ln11.pt"),
    ("tvm-ln11", ("--objective", "tvm", "--set", "distill.time.std=1.0"), "diladiff_tvm_ln11.pt"),
    ("tvm-ln12", ("--objective", "tvm"), "diladiff_tvm_ln12.pt"),
)
_OWN_LN12 = (("meanflow-ln12", (), "diladiff_meanflow_ln12.pt"), *_PAPER_STUDENTS)
STUDENTS = {
    "oracle": _OWN_LN12,
    "tiny": _OWN_LN12,
    "oracle-gpu": _OWN_LN12,
    "paper": _PAPER_STUDENTS,
}
# Held-out blocks of experiment 1's latent analysis (the paper scale: the script's default).
# On the oracle corpus 12 blocks gave its topic shares a standard error of about 0.15 and its
# verdicts split the pipeline seeds; 64 cost about 20 s more there. The GPU scale decodes on
# the GPU: 256 blocks halve that standard error again.
ANALYSIS_BLOCKS = {"oracle": 64, "tiny": 12, "oracle-gpu": 256}
# prior_report.py measures its floor on training latents, but the paper pipeline encodes only
# the valid split (all of OWT would not fit in memory): encode one shard of the training split.
PAPER_TRAIN_LATENTS = 8192

Kind = Literal["cli", "script", "report"]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: what ``--only`` and ``timings.json`` call it.
        argv: the command, run from the repository root.
        kind: ``cli`` (skips finished work itself, says so in its JSON result),
            ``script`` (skipped here when ``output`` is newer than every one of ``inputs``)
            or ``report`` (always runs).
        output: script stages: the JSON record they write.
        inputs: script stages: the checkpoints (and latent directories) they read.
        after: the stages whose outputs it reads (None: every stage before it in the plan);
            with ``--jobs 2`` a stage starts once those it names are done.
        alone: it runs with nothing beside it, on every thread: it times what it does
            (the sweeps), or it is long and gains from the second thread (train-mdlm).
    """

    name: str
    argv: tuple[str, ...]
    kind: Kind = "cli"
    output: str | None = None
    inputs: tuple[str, ...] = ()
    after: tuple[str, ...] | None = None
    alone: bool = False


# ----------------------------------------------------------------------------- the plan


def missing_section(recipe: Recipe, needs: Sequence[str]) -> str | None:
    """Why a stage needing the sections ``needs`` cannot run from ``recipe``, or None.

    ``ae`` and ``prior`` are optional sections (None when absent); ``distill`` needs the
    prior it distils. Every other section has defaults, so ``judge`` is decided by what
    it is for: it is trained only when the recipe's GenPPL scorer is that judge or its
    sweeps sample it as the autoregressive baseline ``ar`` (the paper recipes score with
    gpt2-large).
    """
    for need in needs:
        if need in ("ae", "prior") and getattr(recipe, need) is None:
            return f"has no '{need}' section"
        if need == "oracle" and recipe.data.corpus.source != "oracle":
            return "is not an oracle corpus (no hidden topic to bound the latent with)"
        if need == "distill" and recipe.prior is None:
            return "has no 'prior' section to distil"
        used = (recipe.eval.scorer.name, recipe.pareto.checkpoints.get("ar"))
        if need == "judge" and recipe.judge.out not in used:
            return (
                f"scores GenPPL with {recipe.eval.scorer.name} and samples no `ar` "
                "baseline from the judge it trains"
            )
    return None


def _torchrun() -> str:
    """torchrun beside this interpreter (a virtual environment), else the one on PATH."""
    local = Path(sys.executable).with_name("torchrun")
    return str(local) if local.exists() else "torchrun"


def build_plan(
    *,
    scale: str,
    nproc: int = 1,
    results: str | None = None,
    python: str | None = None,
    seed: int = 0,
) -> tuple[list[Stage], list[str]]:
    """Every stage of a scale, in order.

    Args:
        scale: ``oracle`` (recipes/oracle, CPU), ``tiny`` (recipes/tiny, CPU), ``paper``
            (recipes/paper, CUDA, torchrun) or ``oracle-gpu`` (recipes/oracle-gpu, one GPU).
        nproc: processes per node for the paper scale's training stages.
        results: the results directory (default ``results/<scale>``).
        python: the interpreter (default: this one).
        seed: the pipeline seed: 0 runs the recipes as written; N > 0 sets every training
            stage's seed to N (``--seed N``), the latent analysis's too, and shifts the
            sweeps' sampling seeds by N times their count (``[0, 1, 2]`` -> ``[3N, ...]``).

    Returns:
        (the stages, notes on the stages left out because their recipe section is absent).
    """
    python = python or sys.executable
    results = results or f"results/{scale}"
    runs = f"runs/{scale}"
    base = base_recipe(scale)
    exp1, exp6 = experiment_recipe(scale, 1), experiment_recipe(scale, 6)
    paper = scale == "paper"
    gpu = scale not in CPU_SCALES
    # The paper and oracle-gpu recipes are CUDA recipes: bf16 autocast, as their headers say.
    # The one-GPU scale names its device, so that a machine without one stops at the first
    # training stage in one line instead of training its 8x512 DiT on the CPU (torchrun's
    # processes, at paper scale, take theirs from their local rank).
    compute = ("--precision", "bf16") if gpu else ()
    if gpu and not paper:
        compute = (*compute, "--device", "cuda")
    plain = (python, "-m", "diladiff_cli")
    launch = (_torchrun(), f"--nproc_per_node={nproc}", "-m", "diladiff_cli") if paper else plain
    seeded = ("--seed", str(seed)) if seed else ()  # every stage that trains or draws

    planned: list[tuple[Stage, str, tuple[str, ...]]] = []  # (stage, recipe, sections it needs)
    loaded: dict[str, Recipe] = {}

    def recipe_of(path: str) -> Recipe:
        """A recipe of the plan, loaded once."""
        if path not in loaded:
            loaded[path] = load_recipe(ROOT / path)
        return loaded[path]

    def cli(
        name: str,
        cmd: str,
        recipe: str,
        *args: str,
        needs: Sequence[str],
        after: Sequence[str] | None = None,
        alone: bool = False,
        dist: bool = True,
    ) -> None:
        argv = (*(launch if dist else plain), cmd, recipe, *args)
        deps = None if after is None else tuple(after)
        planned.append((Stage(name, argv, after=deps, alone=alone), recipe, tuple(needs)))

    # What each stage reads (``after``) lets `--jobs 2` run two at a time: the judge beside
    # the autoencoder, the bound beside the encoder, the students beside one another.
    cli("prepare", "prepare", base, needs=["data"], alone=True, dist=False)
    cli("train-mdlm", "train-mdlm", base, *compute, *seeded, needs=["mdlm"], after=["prepare"],
        alone=True)  # fmt: skip
    cli("train-judge", "train-judge", base, *compute, *seeded, needs=["judge"], after=["prepare"])
    cli("train-ae", "train-ae", base, *compute, *seeded, needs=["ae"], after=["train-mdlm"])
    # The perfect-latent bound (oracle corpora): the autoencoder's decoder and budget, its z
    # computed from the true hidden topic instead of BERT states.
    cli("train-bound", "train-ae", base, "--set", f"ae.encoder.name={ORACLE_TOPIC}",
        "--out", f"{runs}/bound.pt", *compute, *seeded, needs=["ae", "oracle"],
        after=["train-mdlm"])  # fmt: skip
    cli("encode", "encode", base, *compute, needs=["ae"], after=["train-ae"])
    latents = ["encode"]
    if paper:
        sample = ("--split", "train", "--limit", str(PAPER_TRAIN_LATENTS))
        cli("encode-train-sample", "encode", base, *sample, *compute, needs=["ae"],
            after=["train-ae"])  # fmt: skip
        latents.append("encode-train-sample")
    cli("train-prior", "train-prior", base, *compute, *seeded, needs=["prior"], after=latents)
    cli("distill", "distill", base, *compute, *seeded, needs=["distill"], after=["train-prior"])
    students = [f"{runs}/diladiff.pt"]
    distilled = ["distill"]
    for label, args, out in STUDENTS[scale]:
        students.append(f"{runs}/{out}")
        distilled.append(f"distill-{label}")
        cli(distilled[-1], "distill", exp6, *args, "--out", students[-1], *compute,
            *seeded, needs=["distill"], after=["train-prior"])  # fmt: skip

    analysis = f"{results}/exp1_latent_analysis/analysis"
    blocks = ("--analysis-blocks", str(ANALYSIS_BLOCKS[scale])) if scale in ANALYSIS_BLOCKS else ()
    if gpu:  # the decodes on the GPU (the script's step timing is a CPU one)
        light = (*blocks, "--bench-steps", "0", "--device", "cuda")
    else:  # the CPU budget (20 min on 2 cores): fewer held-out blocks than the defaults
        light = ("--blocks", "16", "--nelbo-batches", "4", *blocks, "--bench-steps", "0")
    argv = (python, "scripts/ae_report.py", "--recipe", exp1,
            "--out-md", f"{analysis}.md", "--out-json", f"{analysis}.json", *light, *seeded)  # fmt: skip
    inputs = (f"{runs}/ae.pt", f"{runs}/mdlm.pt")
    stage = Stage("latent-analysis", argv, "script", f"{analysis}.json", inputs,
                  after=("train-ae",))  # fmt: skip
    planned.append((stage, exp1, ("ae", "mdlm")))

    quality = f"{results}/prior_quality"
    argv = (python, "scripts/prior_report.py", "--prior", f"{runs}/ladiff.pt",
            *(a for s in students for a in ("--student", s)), "--latents", f"{runs}/latents",
            "--out", f"{quality}.md", "--json", f"{quality}.json",
            *(("--device", "cuda") if gpu else ("--num-samples", "96", "--seeds", "3", "--teacher-runs",
                                                 "euler:5,heun:5,heun:20,heun:200")))  # fmt: skip
    inputs = (f"{runs}/ladiff.pt", *students, f"{runs}/latents")
    stage = Stage("prior-quality", argv, "script", f"{quality}.json", inputs,
                  after=(*latents, *distilled))  # fmt: skip
    planned.append((stage, base, ("prior", "distill")))

    sweep = ("--device", "cuda", "--precision", "bf16") if gpu else ()
    for number, exp in sorted(enumerate(SWEEPS, 2), key=lambda e: e[0] != HEADLINE_SWEEP):
        out = f"{results}/{exp}"
        recipe = experiment_recipe(scale, number)
        shifted = ()
        if seed and (sweeps := recipe_of(recipe).pareto) is not None:
            n = len(sweeps.seeds)
            shifted = (
                "--set",
                f"pareto.seeds=[{', '.join(str(seed * n + s) for s in sweeps.seeds)}]",
            )
        # A sweep times its samples: it runs alone, after every stage before it.
        cli(f"pareto-{exp.split('_')[0]}", "pareto", recipe, "--out", out, *shifted, *sweep,
            needs=["pareto"], alone=True, dist=False)  # fmt: skip

    argv = (python, "scripts/report.py", "--scale", scale, "--results", results)
    planned.append((Stage("report", argv, "report", alone=True), base, ()))

    stages, notes = [], []
    for stage, recipe, needs in planned:
        why = missing_section(recipe_of(recipe), needs)
        if why:
            notes.append(f"{stage.name}: left out, {recipe} {why}")
        else:
            stages.append(stage)
    return stages, notes


def select(stages: list[Stage], only: str | None) -> list[Stage]:
    """The stages named in ``--only`` (comma-separated; ``pareto`` means every sweep)."""
    if not only:
        return stages
    names = {s.name for s in stages}
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    unknown = sorted(w for w in wanted if w not in names and w != "pareto")
    if unknown:
        raise ValueError(
            f"unknown stage '{unknown[0]}'; stages: {', '.join(s.name for s in stages)}"
        )
    return [
        s
        for s in stages
        if s.name in wanted or ("pareto" in wanted and s.name.startswith("pareto-"))
    ]


def display(argv: Sequence[str]) -> str:
    """The command as a shell line, paths under the repository relative to it."""

    def short(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT))
        return arg

    return shlex.join(short(a) for a in argv)


# ----------------------------------------------------------------------------- skip rules


def newest_mtime(path: Path) -> int | None:
    """A file's mtime (ns); for a directory, the newest of the files under it (None: absent)."""
    if path.is_file():
        return path.stat().st_mtime_ns
    if path.is_dir():
        times = [p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()]
        return max(times) if times else None
    return None


def is_up_to_date(output: str | Path, inputs: Iterable[str | Path]) -> bool:
    """Whether a script stage's ``output`` exists and is newer than every one of its
    ``inputs`` (a missing input: not up to date, so that the stage runs and says why)."""
    out = Path(output)
    if not out.is_file():
        return False
    stamps = [newest_mtime(Path(p)) for p in inputs]
    if any(s is None for s in stamps):
        return False
    return all(out.stat().st_mtime_ns > s for s in stamps)


def last_json(lines: Sequence[str]) -> dict[str, Any] | None:
    """The JSON object a CLI command prints last (``{`` alone on a line, to the end)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip() == "{":
            try:
                value = json.loads("".join(lines[i:]))
            except json.JSONDecodeError:
                continue
            return value if isinstance(value, dict) else None
    return None


def found_done(record: dict[str, Any] | None) -> bool:
    """Whether a CLI stage's JSON result says that its work was already done."""
    if not record:
        return False
    if record.get("skipped") is True:  # train-mdlm / -ae / -prior, distill: complete checkpoint
        return True
    if record.get("reused") is True:  # prepare: the blocks on disk are up to date
        return True
    if record.get("skipped_training") is True:  # train-judge
        return True
    if record.get("cells_run") == 0:  # pareto: every cell cached
        return True
    latents = record.get("latents")  # encode: every shard of every split already on disk
    return bool(latents) and all(isinstance(r, dict) and r.get("encoded") == 0 for r in latents)


def partly_cached(record: dict[str, Any] | None) -> str | None:
    """What a CLI stage that ran found already done ("3 of 12 cells cached"), when it
    redid only part of its work; None when it did all of it (or none: :func:`found_done`).
    Its wall time is then that of the redone part only."""
    if not record:
        return None
    run, cached = record.get("cells_run"), record.get("cells_cached")  # pareto
    if isinstance(run, int) and isinstance(cached, int) and run > 0 and cached > 0:
        return f"{cached} of {run + cached} cells cached"
    return None


# ----------------------------------------------------------------------------- timings


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_timings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"stages": {}}
    data.setdefault("stages", {})
    return data


def timing_entry(
    earlier: dict[str, Any] | None,
    *,
    command: str,
    returncode: int,
    seconds: float,
    skipped: bool,
    when: str,
    partial: str | None = None,
    started: float | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The ``timings.json`` entry of a stage that just ran (or was skipped).

    A skipped stage keeps the seconds and the date of the earlier run that did the work,
    with this run's check under ``checked``; without such a run, this run's own. A stage
    that redid only part of its work (``partial``, e.g. "3 of 12 cells cached") records
    this run's seconds, those of the redone part, and says so under ``partial``.
    ``started`` (seconds since the epoch) places the stage in time, so that the report
    counts two stages that ran side by side once (:func:`report.pipeline_wall`);
    ``threads``: the torch threads of a stage that shared the machine (``--jobs 2``).
    """
    entry: dict[str, Any] = {
        "command": command,
        "returncode": returncode,
        "seconds": round(seconds, 3),
        "when": when,
        "skipped": skipped,
    }
    if not skipped:
        if started is not None:
            entry["started"] = round(started, 3)
        if threads is not None:
            entry["threads"] = threads
        return entry if partial is None else {**entry, "partial": partial}
    check = {"when": when, "seconds": round(seconds, 3)}
    if earlier and earlier.get("returncode") == 0 and "seconds" in earlier:
        kept = {k: earlier[k] for k in ("started", "threads") if k in earlier}
        return {
            **entry,
            "seconds": earlier["seconds"],
            "when": earlier.get("when"),
            **kept,
            "checked": check,
        }
    return {**entry, "checked": check, "note": "done before any timed run"}


def cpu_model() -> str | None:
    """The CPU's model name and whether it has AVX-512 (/proc/cpuinfo; None without it):
    machines of one kind differ by up to 1.8x in these stages' times."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), platform.processor() or "unknown")  # fmt: skip
    return f"{name} ({'AVX-512' if 'avx512f' in info else 'no AVX-512'})"


def conditions(*, scale: str, nproc: int) -> dict[str, Any]:
    return {
        "started": now(),
        "scale": scale,
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git_commit(ROOT),
    }


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    returncode: int
    seconds: float
    skipped: bool
    partial: str | None = None


# What the stages of this interpreter import first: imported once by preload() and
# inherited by the forked stages. torch._inductor.config is what
# torch.use_deterministic_algorithms imports (about 1.5 s); datasets is left out, its
# pyarrow starts a thread of its own.
PRELOAD = (
    "torch",
    "torch._inductor.config",
    "transformers",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.bert.modeling_bert",
    "safetensors.torch",
    "diladiff_cli.cli",
    "diladiff_cli.pipeline",
)


def preload() -> bool:
    """Import :data:`PRELOAD` here, so that forked stages start with it; whether stages
    may be forked: this platform has ``fork``, and this process runs no Python thread
    but its main one (a forked child would inherit the locks such a thread holds). The
    native threads the imports start, the thread servers of numpy's and scipy's OpenBLAS,
    shut themselves down at a fork and restart in the child (``pthread_atfork``), which
    is what lets torch's DataLoader fork its workers after the same imports."""
    if not hasattr(os, "fork"):
        return False
    for name in PRELOAD:
        __import__(name)
    return threading.active_count() == 1


def _forkable(argv: Sequence[str]) -> bool:
    """Whether a command is this interpreter running a module (``-m``) or a script."""
    return (
        len(argv) >= 2
        and argv[0] == sys.executable
        and (argv[1] == "-m" and len(argv) >= 3 or argv[1].endswith(".py"))
    )


def _exec_in_child(
    argv: Sequence[str], *, env: dict[str, str], out_fd: int, threads: int | None = None
) -> None:
    """In a forked child: run ``argv`` (this interpreter's ``-m module ...`` or
    ``script.py ...``) as a fresh interpreter would, its stdout on ``out_fd``, then exit
    with its status; never returns. ``threads``: torch's thread count in the child (torch
    read ``OMP_NUM_THREADS`` when the parent imported it)."""
    code: int = 1
    try:
        os.dup2(out_fd, 1)
        os.close(out_fd)
        os.chdir(ROOT)
        os.environ.clear()
        os.environ.update(env)
        if threads is not None and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
        if argv[1] == "-m":
            sys.argv = [str(argv[2]), *argv[3:]]
            sys.path[0] = str(ROOT)  # -m puts the working directory first
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            script = ROOT / argv[1]
            sys.argv = [str(argv[1]), *argv[2:]]
            sys.path[0] = str(script.parent)  # a script's directory comes first
            runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:  # what the interpreter does on exit
            atexit._run_exitfuncs()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class _Forked:
    """A stage running in a forked child: its stdout as a pipe, and its exit status."""

    def __init__(
        self, argv: Sequence[str], *, env: dict[str, str], threads: int | None = None
    ) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_fd)
            _exec_in_child(argv, env=env, out_fd=write_fd, threads=threads)
        os.close(write_fd)
        self.pid = pid
        self.fd = read_fd

    def wait(self) -> int:
        status = os.waitpid(self.pid, 0)[1]
        return os.waitstatus_to_exitcode(status)


@dataclass
class _Running:
    """A stage that has started: its process, its stdout's pipe and what it printed."""

    stage: Stage
    proc: subprocess.Popen[bytes] | _Forked
    fd: int
    t0: float
    started: float
    threads: int | None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    line: str = ""

    def echo(self, chunk: bytes, *, prefix: str) -> None:
        """Echo what the stage printed (``b""``: the end), line by line, and keep it."""
        text = self.line + self.decoder.decode(chunk, final=not chunk)
        lines = text.splitlines(keepends=True)
        self.line = lines.pop() if lines and chunk and not lines[-1].endswith("\n") else ""
        for line in lines:
            sys.stdout.write(prefix + line)
            self.tail.append(line)
        sys.stdout.flush()

    def wait(self) -> int:
        if isinstance(self.proc, _Forked):
            os.close(self.fd)
        else:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        returncode = self.proc.wait()
        return 128 - returncode if returncode < 0 else returncode  # < 0: killed by a signal

    def outcome(self, returncode: int) -> Outcome:
        seconds = time.perf_counter() - self.t0
        ok = self.stage.kind == "cli" and returncode == 0
        record = last_json(list(self.tail)) if ok else None
        return Outcome(returncode, seconds, found_done(record), partly_cached(record))


def start_stage(
    stage: Stage, *, env: dict[str, str], fork: bool = False, threads: int | None = None
) -> _Running:
    """Start one stage from the repository root (``fork``: in a forked child when the stage
    runs this interpreter, see the module docstring); ``threads``: its torch threads.

    Raises:
        OSError: the command cannot be started.
    """
    t0, started = time.perf_counter(), time.time()
    if threads is not None:  # beside another stage: plain progress lines, not a live bar
        env = {**env, "OMP_NUM_THREADS": str(threads), "TTY_INTERACTIVE": "0"}
    if fork and _forkable(stage.argv):
        forked = _Forked(stage.argv, env=env, threads=threads)
        return _Running(stage, forked, forked.fd, t0, started, threads)
    proc = subprocess.Popen(stage.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return _Running(stage, proc, proc.stdout.fileno(), t0, started, threads)


def dependencies(stages: Sequence[Stage]) -> dict[str, set[str]]:
    """What each stage waits for: the stages it names in ``after`` that are in this run
    (``--only``), or, without ``after``, every stage before it."""
    names = [s.name for s in stages]
    return {
        s.name: set(names[:i]) if s.after is None else set(s.after) & set(names)
        for i, s in enumerate(stages)
    }


def next_ready(
    pending: Sequence[Stage], *, done: set[str], running: Sequence[Stage], deps: dict[str, set[str]]
) -> Stage | None:
    """The first stage of ``pending`` (in plan order) that may start now: what it waits for
    is done, and it shares the machine with no stage that must run alone. A stage that must
    run alone waits for the running ones to end, and the stages after it wait with it."""
    if any(s.alone for s in running):
        return None
    for stage in pending:
        if deps[stage.name] <= done:
            return stage if not (stage.alone and running) else None
    return None


def failure(returncode: int) -> str:
    """How a stage that exited with ``returncode`` (not 0) ended, in words."""
    return "interrupted" if returncode == 130 else f"failed (exit {returncode})"


def run_plan(
    stages: list[Stage],
    *,
    timings_path: Path,
    run_conditions: dict[str, Any],
    force: bool = False,
    console: Console | None = None,
    env: dict[str, str] | None = None,
    fork: bool = False,
    jobs: int = 1,
    threads: int | None = None,
) -> int:
    """Run the stages (``fork``: see :func:`start_stage`); stop at the first failure.

    ``jobs`` = 1: one after another, in plan order. ``jobs`` = 2: two at a time where the
    plan allows (:func:`next_ready`), each with ``threads`` torch threads, unless it runs
    alone; the output lines of a stage beside another carry its name. After a failure the
    stages already running finish, and nothing else starts.

    Returns:
        0, or the exit code of the stage that failed (the first, when two did).
    """
    console = console or Console(highlight=False)
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    timings = read_timings(timings_path)
    timings["conditions"] = run_conditions
    atomic_write_json(timings_path, timings)
    order = [s.name for s in stages]  # timings.json lists them in plan order, then any others
    deps = dependencies(stages)
    pending, running = list(stages), {}  # running: pipe -> _Running
    done: set[str] = set()
    failed: tuple[Stage, int] | None = None
    total = 0.0
    selector = selectors.DefaultSelector()

    def finish(stage: Stage, outcome: Outcome, *, started: float | None, share: int | None):
        nonlocal total, failed
        total += outcome.seconds
        command = display(stage.argv)
        timings["stages"][stage.name] = timing_entry(
            timings["stages"].get(stage.name),
            command=command,
            returncode=outcome.returncode,
            seconds=outcome.seconds,
            skipped=outcome.skipped,
            when=now(),
            partial=outcome.partial,
            started=started,
            threads=share,
        )
        names = order + [n for n in timings["stages"] if n not in order]
        timings["stages"] = {n: timings["stages"][n] for n in names if n in timings["stages"]}
        atomic_write_json(timings_path, timings)
        if outcome.returncode != 0:
            what = failure(outcome.returncode)
            console.print(Text(f"✗ {stage.name:<24} {outcome.seconds:8.1f} s  {what}", "red"))
            failed = failed or (stage, outcome.returncode)
            return
        done.add(stage.name)
        status = "skipped (up to date)" if outcome.skipped else "done"
        if outcome.partial:
            status += f" ({outcome.partial})"
        console.print(Text(f"✓ {stage.name:<24} {outcome.seconds:8.1f} s  {status}", "green"))

    try:
        while True:
            while failed is None and len(running) < jobs:
                stage = next_ready(
                    pending, done=done, running=[r.stage for r in running.values()], deps=deps
                )
                if stage is None:
                    break
                pending.remove(stage)
                share = None if jobs == 1 or stage.alone else threads
                beside = (
                    f" (beside others, {share} torch thread{'s' * (share != 1)})" if share else ""
                )
                console.print(
                    Text.assemble(
                        (f"[{order.index(stage.name) + 1}/{len(stages)}] {stage.name}", "bold"),
                        f": {display(stage.argv)}{beside}",
                    )
                )
                if stage.kind == "script" and not force:
                    if is_up_to_date(ROOT / stage.output, [ROOT / p for p in stage.inputs]):
                        finish(stage, Outcome(0, 0.0, True), started=None, share=None)
                        continue
                try:
                    new = start_stage(stage, env=env, fork=fork, threads=share)
                except OSError as err:
                    print(
                        f"error: {stage.name}: cannot start {stage.argv[0]}: {err.strerror}",
                        file=sys.stderr,
                    )
                    finish(stage, Outcome(127, 0.0, False), started=None, share=None)
                    continue
                running[new.fd] = new
                selector.register(new.fd, selectors.EVENT_READ, new)
            if not running:
                break
            for key, _ in selector.select():
                current: _Running = key.data
                prefix = f"{current.stage.name} | " if current.threads is not None else ""
                chunk = os.read(current.fd, 1 << 16)
                current.echo(chunk, prefix=prefix)
                if chunk:
                    continue
                selector.unregister(current.fd)
                del running[current.fd]
                outcome = current.outcome(current.wait())
                finish(current.stage, outcome, started=current.started, share=current.threads)
    except KeyboardInterrupt:
        if not running:  # between two stages: main() says so
            raise
        for current in running.values():  # each child got the same Ctrl-C and saves what it can
            current.wait()
            finish(
                current.stage, current.outcome(130), started=current.started, share=current.threads
            )
    finally:
        selector.close()
    if failed is not None:
        stage, returncode = failed
        print(
            f"error: stage '{stage.name}' {failure(returncode)}; run the same command again "
            f"to continue from it: {display(stage.argv)}",
            file=sys.stderr,
        )
        return returncode
    plural = "s" if len(stages) != 1 else ""
    console.print(f"{len(stages)} stage{plural} in {total:.1f} s; timings in {timings_path}")
    return 0


def thread_budget() -> int:
    """The torch threads a stage running alone gets: ``OMP_NUM_THREADS`` when it is set,
    else the cores this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )


def claim_seed(runs: Path, seed: int) -> str | None:
    """Record the pipeline seed in ``runs/pipeline_seed.json``; the reason to refuse when
    the directory already holds another seed's run (its outputs would be taken as done)."""
    marker = runs / "pipeline_seed.json"
    try:
        held = json.loads(marker.read_text())["seed"]
    except FileNotFoundError:
        held = 0 if (runs / "mdlm.pt").exists() else None  # a run from before the marker
    except (OSError, ValueError, KeyError, TypeError):
        return f"{marker} is damaged: move {runs} away, or remove the file if it holds seed 0"
    if held is not None and held != seed:
        return (
            f"{runs} holds the pipeline of seed {held}: move it away (or use a fresh clone) "
            f"to run seed {seed}"
        )
    if held is None:
        atomic_write_json(marker, {"seed": seed})
    return None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Stages: "
        + ", ".join(s.name for s in build_plan(scale="oracle")[0])
        + " (paper: no train-judge, plus encode-train-sample).",
    )
    p.add_argument("--scale", choices=SCALES, default="oracle")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="paper scale: processes per node for torchrun (the training stages)",
    )
    p.add_argument(
        "--only", default=None, help="comma-separated stages to run (pareto: every sweep)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="stages at a time (CPU scales): 2 runs independent stages side by side, each on "
        "half the threads (train-mdlm and the sweeps still run alone); its trainings differ "
        "from one at a time's, see the module docstring (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="pipeline seed: N > 0 trains every stage with seed N and samples the sweeps with "
        "other seeds; results in results/<scale>/pipeline_seed<N> (runs/<scale> must hold "
        "no other seed's run: use a fresh clone)",
    )
    p.add_argument(
        "--results",
        default=None,
        help="results directory (default results/<scale>, or results/<scale>/pipeline_seed<N>)",
    )
    p.add_argument(
        "--no-fork",
        dest="fork",
        action="store_false",
        help="start every stage in a fresh interpreter instead of forking it from this one "
        "once it has imported torch and transformers",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun the script stages (latent-analysis, prior-quality) even when "
        "their records are up to date",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.nproc < 1 or (args.scale != "paper" and args.nproc != 1):
        print(
            f"error: --nproc must be 1 at the {args.scale} scale (one process) and >= 1 at the "
            "paper scale",
            file=sys.stderr,
        )
        return 2
    if args.seed < 0:
        print(f"error: --seed must be 0 or more, got {args.seed}", file=sys.stderr)
        return 2
    budget = thread_budget()
    jobs = args.jobs
    if jobs not in (1, 2) or (jobs == 2 and args.scale not in CPU_SCALES):
        print(
            f"error: --jobs must be 1 or 2 (2 at the CPU scales only), got {args.jobs}",
            file=sys.stderr,
        )
        return 2
    default = f"results/{args.scale}" + (f"/pipeline_seed{args.seed}" if args.seed else "")
    results = args.results or default
    stages, notes = build_plan(scale=args.scale, nproc=args.nproc, results=results, seed=args.seed)
    try:
        stages = select(stages, args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# scale {args.scale}, results {results}, from {ROOT}")
        for note in notes:
            print(f"# {note}")
        for stage in stages:
            print(f"{stage.name:<24} {display(stage.argv)}")
        return 0
    clash = claim_seed(ROOT / f"runs/{args.scale}", args.seed)
    if clash:
        print(f"error: {clash}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.scale != "paper":  # only the paper scale reads models and data from the hub
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    results_dir = Path(results) if Path(results).is_absolute() else ROOT / results
    run_conditions = conditions(scale=args.scale, nproc=args.nproc)
    shared = max(1, budget // jobs)
    run_conditions["jobs"] = jobs
    if jobs > 1:
        run_conditions["threads_beside_another"] = shared
    try:
        fork = False
        if args.fork and any(_forkable(stage.argv) for stage in stages):
            os.environ.update(env)  # what the imports read (the hub's offline switch)
            t0 = time.perf_counter()
            fork = preload()
            run_conditions["preload_seconds"] = round(time.perf_counter() - t0, 3)
        run_conditions["forked_stages"] = fork
        return run_plan(
            stages,
            timings_path=results_dir / "timings.json",
            run_conditions=run_conditions,
            force=args.force,
            env=env,
            fork=fork,
            jobs=jobs,
            threads=shared,
        )
    except KeyboardInterrupt:  # between two stages
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
