"""Bad input on every subcommand is refused before any work starts: exit code 2, one
line on stderr naming the full dotted key and the value, no traceback (issue 14,
classes 6 and 7). The CLI runs in this process on dry runs, so nothing trains and
nothing is written; the config dataclasses are swept field by field besides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from diladiff_cli.cli import app
from diladiff_cli.config import (
    DiTConfig,
    EncoderConfig,
    LatentDiTConfig,
    MDLMStageConfig,
    PriorStageConfig,
    Recipe,
    TrainConfig,
    load_recipe,
)
from diladiff_cli.structs import FieldError

ROOT = Path(__file__).resolve().parents[1]
MICRO = str(Path(__file__).parent / "recipes" / "micro.yaml")


def sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def case(args: list[str], needle: str, name: str):
    return pytest.param(args, needle, id=name)


# (arguments, text the one error line must hold): the default recipe unless one is named.
CASES = [
    # prepare: data
    case(["prepare", *sets("data.seq_len=2")], "data.seq_len must be at least 3, got 2", "seq_len"),
    case(
        ["prepare", *sets("data.corpus.valid_fraction=1.5")],
        "data.corpus.valid_fraction must be in (0, 1), got 1.5",
        "valid_fraction",
    ),
    case(
        ["prepare", *sets("data.corpus.valid_fraction=.nan")],
        "data.corpus.valid_fraction: expected a finite number, got nan",
        "valid_fraction-nan",
    ),
    case(
        ["prepare", *sets("data.tokenizer.vocab_size=100")],
        "data.tokenizer.vocab_size must be at least 258, got 100",
        "bpe-vocab",
    ),
    case(
        ["prepare", *sets("data.corpus.oracle.emission_floor=0")],
        "data.corpus.oracle.emission_floor must be in (0, 1), got 0.0",
        "oracle-floor",
    ),
    case(["prepare", *sets("data.out=")], "data.out must not be empty, got ''", "data-out"),
    case(["prepare", "--num-proc", "-1"], "data.num_proc must be at least 1, got -1", "num_proc"),
    case(["prepare", *sets("data.corpus.sourze=x")], "unknown key 'data.corpus.sourze'", "sourze"),
    # train-mdlm: mdlm (required section)
    case(
        ["train-mdlm", *sets("mdlm.train.log_every=0")],
        "mdlm.train.log_every must be at least 1, got 0",
        "log_every",
    ),
    case(["train-mdlm", "--steps", "0"], "mdlm.train.steps must be at least 1, got 0", "steps0"),
    case(["train-mdlm", "--steps", "-2"], "mdlm.train.steps must be at least 0, got -2", "steps-"),
    case(["train-mdlm", "--seed", "-1"], "mdlm.train.seed must be at least 0, got -1", "seed"),
    case(
        ["train-mdlm", *sets("mdlm.train.batch_size=0")],
        "mdlm.train.batch_size must be at least 1, got 0",
        "batch_size",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.micro_batch_size=5")],
        "mdlm.train.micro_batch_size must divide batch_size=32, got 5",
        "micro_batch",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.lr=-1e-3")], "mdlm.train.lr must be > 0, got -0.001", "lr"
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.weight_decay=.inf")],
        "mdlm.train.weight_decay: expected a finite number, got inf",
        "weight_decay-inf",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.grad_clip=inf")],
        "mdlm.train.grad_clip: expected a finite number, got 'inf'",
        "grad_clip-inf",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.betas=[0.9, 1.5]")],
        "mdlm.train.betas[1] must be in [0, 1), got 1.5",
        "betas",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.min_lr_ratio=2")],
        "mdlm.train.min_lr_ratio must be in [0, 1], got 2.0",
        "min_lr_ratio",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.ema=1")],
        "mdlm.train.ema must be in [0, 1), got 1.0",
        "ema",
    ),
    case(
        ["train-mdlm", *sets("mdlm.noise_eps=1")],
        "mdlm.noise_eps must be in (0, 1), got 1.0",
        "noise_eps",
    ),
    case(
        ["train-mdlm", *sets("mdlm.model.depth=0")],
        "mdlm.model.depth must be at least 1, got 0",
        "depth",
    ),
    case(
        ["train-mdlm", *sets("mdlm.model.heads=5")],
        "mdlm.model.heads must split hidden=128 into heads of even width, got 5",
        "heads",
    ),
    case(
        ["train-mdlm", *sets("mdlm.model.dropout=1")],
        "mdlm.model.dropout must be in [0, 1), got 1.0",
        "dropout",
    ),
    case(
        ["train-mdlm", *sets("mdlm.train.steps=abc")],
        "mdlm.train.steps: expected int, got 'abc'",
        "steps-type",
    ),
    case(["train-mdlm", *sets("mdlm.model=3")], "mdlm.model: expected a mapping, got int", "model"),
    # train-judge: judge
    case(
        ["train-judge", *sets("judge.model.n_head=5")],
        "judge.model.n_head must divide n_embd=128, got 5",
        "n_head",
    ),
    case(
        ["train-judge", *sets("judge.model.n_positions=1")],
        "judge.model.n_positions must be at least 2, got 1",
        "n_positions",
    ),
    case(
        ["train-judge", *sets("judge.train.eval_batches=0")],
        "judge.train.eval_batches must be at least 1, got 0",
        "eval_batches",
    ),
    case(["train-judge", "--steps", "0"], "judge.train.steps must be at least 1, got 0", "j-steps"),
    # train-ae: ae (an optional section)
    case(["train-ae", *sets("ae.train.stepz=3")], "unknown key 'ae.train.stepz'", "stepz"),
    case(
        ["train-ae", *sets("ae.train.steps=x")],
        "ae.train.steps: expected int, got 'x'",
        "ae-steps-type",
    ),
    case(["train-ae", *sets("ae.train=5")], "ae.train: expected a mapping, got int", "ae-train"),
    case(["train-ae", *sets("ae=5")], "ae: expected a mapping, got int", "ae"),
    case(
        ["train-ae", *sets("ae.latent_norm=zscore")],
        "ae.latent_norm: expected 'none' | 'stats' | 'l2', got 'zscore'",
        "latent_norm",
    ),
    case(
        ["train-ae", *sets("ae.augment.latent_dropout=1.5")],
        "ae.augment.latent_dropout must be in [0, 1], got 1.5",
        "latent_dropout",
    ),
    case(
        ["train-ae", *sets("ae.augment.embed_noise=1")],
        "ae.augment.embed_noise must be in [0, 1), got 1.0",
        "embed_noise",
    ),
    case(
        ["train-ae", *sets("ae.compressor.heads=5")],
        "ae.compressor.heads must divide width=192, got 5",
        "compressor-heads",
    ),
    case(
        ["train-ae", *sets("ae.compressor.locality=-1")],
        "ae.compressor.locality must be >= 0, got -1.0",
        "locality",
    ),
    case(
        ["train-ae", *sets("ae.decoder.cross_attn_after=[1, 1]")],
        "ae.decoder.cross_attn_after must be distinct and not empty, got [1, 1]",
        "cross_attn_after",
    ),
    case(
        ["train-ae", *sets("ae.decoder.cross_attn_after=[-1]")],
        "ae.decoder.cross_attn_after[0] must be at least 0, got -1",
        "cross_attn_after-neg",
    ),
    case(
        ["train-ae", *sets("ae.decoder.trainable=[]")],
        "ae.decoder.trainable must name at least one parameter group",
        "trainable",
    ),
    case(
        ["train-ae", *sets("ae.encoder.max_len=2")],
        "ae.encoder.max_len must be at least 3, got 2",
        "encoder-max_len",
    ),
    case(
        ["train-ae", *sets("ae.encoder.name=")],
        "ae.encoder.name must not be empty, got ''",
        "encoder-name",
    ),
    case(
        ["train-ae", *sets("ae.latent_stats_batches=0")],
        "ae.latent_stats_batches must be at least 1, got 0",
        "latent_stats",
    ),
    case(["train-ae", MICRO], "recipe micro has no 'ae' section", "no-ae"),
    # encode: the encode section, and the command's options
    case(
        ["encode", "--batch-size", "0"],
        "encode.batch_size must be at least 1, got 0",
        "encode-batch",
    ),
    case(
        ["encode", "--split", "test"],
        "encode.splits[0]: expected 'train' | 'valid', got 'test'",
        "encode-split",
    ),
    case(["encode", "--limit", "-1"], "encode.limit must be at least 0, got -1", "encode-limit"),
    case(
        ["export", MICRO, "out", "--recipe", "missing.yaml"],
        "recipe file not found: missing.yaml",
        "export-recipe-missing",
    ),
    case(
        ["encode", *sets("encode.shard_size=0")],
        "encode.shard_size must be at least 1, got 0",
        "encode-shard",
    ),
    # train-prior: prior (an optional section)
    case(
        ["train-prior", *sets("prior.model.two_times=true")],
        "prior.model.two_times must be false",
        "two_times",
    ),
    case(
        ["train-prior", *sets("prior.flow.t_min=0.5")],
        "prior.flow.t_min must be in (0, 0.5), got 0.5",
        "t_min",
    ),
    case(["train-prior", *sets("prior.time.std=0")], "prior.time.std must be > 0, got 0.0", "std"),
    case(
        ["train-prior", *sets("prior.sampler.ncont=0")],
        "prior.sampler.ncont must be at least 1, got 0",
        "sampler-ncont",
    ),
    case(
        ["train-prior", *sets("prior.model.heads=5")],
        "prior.model.heads must split hidden=96 into heads of even width, got 5",
        "prior-heads",
    ),
    case(
        ["train-prior", *sets("prior.train.warmup_steps=-1")],
        "prior.train.warmup_steps must be at least 0, got -1",
        "warmup",
    ),
    case(
        ["train-prior", *sets("prior.latents=")],
        "prior.latents must not be empty, got ''",
        "prior-latents",
    ),
    case(
        ["train-prior", *sets("prior.model.hiden=4")],
        "unknown key 'prior.model.hiden'",
        "prior-hiden",
    ),
    case(
        ["train-prior", MICRO, *sets("prior.train.steps=3")],
        "missing required key 'prior.model'",
        "prior-model",
    ),
    # distill
    case(
        ["distill", *sets("distill.time.equal_share=1.5")],
        "distill.time.equal_share must be in [0, 1], got 1.5",
        "equal_share",
    ),
    case(
        ["distill", *sets("distill.time.std=.nan")],
        "distill.time.std: expected a finite number, got nan",
        "time-std-nan",
    ),
    case(
        ["distill", *sets("distill.weighting.c=0")],
        "distill.weighting.c must be > 0, got 0.0",
        "weighting-c",
    ),
    case(
        ["distill", *sets("distill.weighting.p=-1")],
        "distill.weighting.p must be >= 0, got -1.0",
        "weighting-p",
    ),
    case(["distill", *sets("distill.ncont=0")], "distill.ncont must be at least 1, got 0", "ncont"),
    case(
        ["distill", *sets("distill.objective=ddim")],
        "distill.objective: expected 'meanflow' | 'tvm', got 'ddim'",
        "objective",
    ),
    # sample
    case(
        ["sample", "--temperature", "nan"],
        "sample.temperature: expected a finite number, got nan",
        "temperature-nan",
    ),
    case(
        ["sample", "--temperature", "inf"],
        "sample.temperature: expected a finite number, got inf",
        "temperature-inf",
    ),
    case(
        ["sample", "--temperature", "0"],
        "sample.temperature must be > 0, got 0.0 (--temperature)",
        "temperature-0",
    ),
    case(
        ["sample", "--top-p", "1.5"],
        "sample.top_p must be in (0, 1], got 1.5 (--top-p)",
        "top_p",
    ),
    case(["sample", "--ndisc", "0"], "sample.ndisc must be at least 1, got 0 (--ndisc)", "ndisc"),
    case(
        ["sample", "--num-samples", "0"],
        "sample.num_samples must be at least 1, got 0 (--num-samples)",
        "num_samples",
    ),
    case(["sample", "--seed", "-1"], "sample.seed must be at least 0, got -1 (--seed)", "s-seed"),
    case(
        ["sample", *sets("sample.selection=best")],
        "sample.selection: expected 'random' | 'confidence', got 'best'",
        "selection",
    ),
    # eval
    case(
        ["eval", "x.jsonl", "--batch-size", "0"],
        "eval.scorer.batch_size must be at least 1, got 0",
        "scorer-batch",
    ),
    case(
        ["eval", "x.jsonl", "--num-references", "-1"],
        "eval.num_references must be at least 0, got -1",
        "num_references",
    ),
    case(
        ["eval", "x.jsonl", *sets("eval.mauve.num_clusters=1")],
        "eval.mauve.num_clusters must be 0 (auto) or at least 2, got 1",
        "num_clusters",
    ),
    case(
        ["eval", "x.jsonl", *sets("eval.mauve.explained_variance=0")],
        "eval.mauve.explained_variance must be in (0, 1], got 0.0",
        "explained_variance",
    ),
    case(
        ["eval", "x.jsonl", *sets("eval.mauve.scaling=nan")],
        "eval.mauve.scaling: expected a finite number, got 'nan'",
        "scaling-nan",
    ),
    case(
        ["eval", "x.jsonl", *sets("eval.scorer.context=1")],
        "eval.scorer.context must be 0 (the model's) or at least 2, got 1",
        "context",
    ),
    # pareto
    case(
        ["pareto", "--num-samples", "1"],
        "pareto.num_samples must be at least 2, got 1",
        "p-num_samples",
    ),
    case(
        ["pareto", *sets("pareto.grids=[{ndisc: [8, 0]}]")],
        "pareto.grids[0].ndisc[1] must be at least 1, got 0",
        "grid-ndisc",
    ),
    case(
        ["pareto", *sets("pareto.grids=[{temperature: [.nan]}]")],
        "pareto.grids[0].temperature[0]: expected a finite number, got nan",
        "grid-temperature",
    ),
    case(
        ["pareto", *sets("pareto.grids=[{ndisc: []}]")],
        "pareto.grids[0].ndisc must not be empty",
        "grid-empty",
    ),
    case(["pareto", *sets("pareto.grids=[]")], "pareto.grids must not be empty", "grids"),
    case(
        ["pareto", *sets("pareto.seeds=[1, 1]")],
        "pareto.seeds must be distinct and not empty, got [1, 1]",
        "seeds",
    ),
    case(
        ["pareto", *sets("pareto.seeds=[-1]")],
        "pareto.seeds[0] must be at least 0, got -1",
        "seed-",
    ),
    case(["pareto", *sets("pareto.top_p=0")], "pareto.top_p must be in (0, 1], got 0.0", "p-top_p"),
    case(
        ["pareto", *sets("pareto.frontier_temperature=0")],
        "pareto.frontier_temperature must be > 0, got 0.0",
        "frontier_temperature",
    ),
]


def one_error_line(args: list[str]) -> str:
    """Run a dry run that must fail; the one line it prints (checked: exit code 2, no
    traceback, nothing on stdout)."""
    result = CliRunner().invoke(app, args if "--dry-run" in args else [*args, "--dry-run"])
    # The command ended by its own exit, not by an exception that escaped it.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_every_subcommand_has_cases():
    assert {p.values[0][0] for p in CASES} == set(typer.main.get_command(app).commands)
    assert len(CASES) >= 40


@pytest.mark.parametrize(("args", "needle"), CASES)
def test_bad_input_is_one_line_naming_the_key(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(args)
    assert needle in line, line
    # Class 7: the key, never the whole section it sits in (was ~1,000 characters).
    assert len(line) < 400, line
    assert list(tmp_path.iterdir()) == []


# click's own parse errors, before any recipe is read: one line too, never its usage box.
PARSE_CASES = [
    # the reason's wording is typer's and differs between its versions
    case(["train-mdlm", MICRO, "--steps", "abc"], "Invalid value for '--steps'", "steps-abc"),
    case(["train-mdlm", "--bogus"], "No such option: --bogus", "unknown-option"),
    case(["eval"], "Missing argument 'samples'", "missing-argument"),
    case(["prepare", MICRO, "extra"], "unexpected extra argument", "extra-argument"),
    case(["sample", "--selection", "best"], "Invalid value for '--selection'", "bad-choice"),
    case(["sample", "--dry-run", "--ndisc"], "'--ndisc' requires an argument", "missing-value"),
    case(["frobnicate"], "No such command 'frobnicate'", "unknown-command"),
]


@pytest.mark.parametrize(("args", "needle"), PARSE_CASES)
def test_parse_error_is_one_line_naming_what_is_wrong(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(args)
    assert needle in line, line
    assert "--help" in line  # where the usage is
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--help"], ["train-mdlm", "--help"], []])
def test_help_still_prints_the_usage(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (2 if not args else 0)  # no arguments: help, as a usage error
    assert "Usage: diladiff" in result.output and "error:" not in result.output


def test_bad_key_in_an_optional_section_of_a_file(tmp_path):
    """The same error from a recipe file (extending the Shakespeare default, one base):
    the key and the file."""
    bad = tmp_path / "bad.yaml"
    base = ROOT / "recipes" / "tiny" / "default.yaml"
    bad.write_text(f"extends: {base}\nae:\n  train:\n    stepz: 3\n")
    line = one_error_line(["train-ae", str(bad)])
    assert "unknown key 'ae.train.stepz'" in line and str(bad) in line
    assert len(line) < 400, line


def test_edge_values_that_are_fine_still_load():
    """The checks do not refuse the bounds that mean something (no EMA, top-p off, r = t
    everywhere, no latent dropout, the auto cluster count, the latent checkpoint's ncont)."""
    r = load_recipe(
        None,
        [
            "mdlm.train.ema=0",
            "mdlm.train.micro_batch_size=8",
            "mdlm.train.grad_clip=0",
            "sample.top_p=1",
            "sample.ncont=0",
            "distill.time.equal_share=1",
            "ae.augment.latent_dropout=0",
            "ae.encoder.layer=-1",
            "eval.mauve.num_clusters=0",
            "eval.scorer.context=0",
            "pareto.grids=[{ncont: [0], temperature: [0.5]}]",
        ],
    )
    assert r.mdlm.train.micro_batch_size == 8 and r.distill.time.equal_share == 1.0


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "recipes").rglob("*.yaml")) + [Path(MICRO)],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_shipped_recipes_pass_the_checks(path):
    load_recipe(path)


# ----------------------------------------------------------------------------- every field

# The fields a config needs besides its defaults, to build one to vary.
REQUIRED: dict[type, dict] = {
    DiTConfig: {"vocab_size": 300},
    LatentDiTConfig: {"num_latents": 4, "latent_dim": 8},
    PriorStageConfig: {"model": LatentDiTConfig(num_latents=4, latent_dim=8)},
    MDLMStageConfig: {"model": DiTConfig(vocab_size=300), "train": TrainConfig()},
}
# An index counted from the end (-1: the last layer); checked against the encoder's depth
# once it is loaded.
ANY_INT = {(EncoderConfig, "layer")}


def _config_classes() -> list[type]:
    """Every dataclass a recipe holds, at any depth."""
    found: list[type] = []

    def walk(tp) -> None:
        for arg in typing.get_args(tp):
            walk(arg)
        if dataclasses.is_dataclass(tp) and tp not in found:
            found.append(tp)
            for hint in typing.get_type_hints(tp).values():
                walk(hint)

    walk(Recipe)
    return [cls for cls in found if cls is not Recipe]


def _fields_of(kind: type) -> list:
    """``(class, field)`` of every field typed ``kind`` (or ``kind | None``)."""
    out = []
    for cls in _config_classes():
        for name, hint in typing.get_type_hints(cls).items():
            optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
            options = set(typing.get_args(hint)) - {type(None)} if optional else {hint}
            if options == {kind}:
                out.append(pytest.param(cls, name, id=f"{cls.__name__}.{name}"))
    return out


FLOATS = _fields_of(float)
INTS = [p for p in _fields_of(int) if tuple(p.values) not in ANY_INT]


def test_the_sweeps_see_every_section():
    assert len(_config_classes()) >= 25
    assert len(FLOATS) >= 30 and len(INTS) >= 55


@pytest.mark.parametrize(("cls", "name"), FLOATS)
def test_every_float_field_refuses_nan_and_inf(cls, name):
    base = cls(**REQUIRED.get(cls, {}))
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(FieldError) as err:
            dataclasses.replace(base, **{name: value})
        assert err.value.key == name and "finite" in str(err.value)


@pytest.mark.parametrize(("cls", "name"), INTS)
def test_every_int_field_refuses_a_negative_count(cls, name):
    base = cls(**REQUIRED.get(cls, {}))
    with pytest.raises(FieldError) as err:
        dataclasses.replace(base, **{name: -1000})
    assert err.value.key == name and "-1000" in str(err.value)
