"""Strict YAML recipes -> frozen dataclasses.

A recipe is one YAML file; each top-level section configures one stage. The
loader is strict: an unknown key, a wrong type, a missing required field or a value
that cannot work (a NaN, zero heads, a probability above 1: each dataclass's
``__post_init__``) is a one-line :class:`RecipeError` naming the full dotted key, the
value and the file, before any stage starts. ``--set a.b=c`` overrides are
applied to the raw mapping before validation, so they obey the same rules.

A recipe may start from another one: a top-level ``extends: <path>`` (relative to
the recipe's directory, or absolute) loads that base recipe (itself possibly
extending another), then deep-merges this file over it: a mapping merges into a
mapping key by key, anything else (a list, a scalar, null) replaces the base's
value. Overrides come after the merge, validation last. A key renamed since recipes
used it (``pareto.seed`` -> ``pareto.seeds``) is still read under its old name.

Only this module (and the CLI) read YAML; the core library takes the dataclasses.

This package is the bottom of the house: it imports neither torch nor any stage, so a
recipe loads (and ``--dry-run`` prints) without them. Each component's config lives in
one submodule (``models``, ``data``, ``train``, ``diffusion``, ``stages``,
``evaluation``); the stage modules import theirs from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import yaml

from diladiff_cli.config.data import CorpusConfig, DataConfig, TokenizerConfig
from diladiff_cli.config.diffusion import (
    AdaptiveWeightConfig,
    FlowConfig,
    TimePairConfig,
    TimeSamplingConfig,
)
from diladiff_cli.config.evaluation import (
    BertScoreConfig,
    EvalConfig,
    GridConfig,
    MauveConfig,
    ParetoConfig,
    ScorerConfig,
)
from diladiff_cli.config.models import CompressorConfig, DiTConfig, LatentDiTConfig
from diladiff_cli.config.stages import (
    AEStageConfig,
    AugmentConfig,
    DecoderConfig,
    DistillStageConfig,
    EncodeConfig,
    EncoderConfig,
    JudgeModelConfig,
    JudgeStageConfig,
    MDLMStageConfig,
    PriorSamplerConfig,
    PriorStageConfig,
    SampleConfig,
)
from diladiff_cli.config.train import (
    LoggingConfig,
    TensorBoardConfig,
    TrainConfig,
    WandbConfig,
)
from diladiff_cli.errors import RecipeError
from diladiff_cli.files import read_utf8
from diladiff_cli.structs import FieldError, build_dataclass, to_dict

__all__ = [
    "AEStageConfig",
    "AdaptiveWeightConfig",
    "AugmentConfig",
    "BertScoreConfig",
    "CompressorConfig",
    "CorpusConfig",
    "DataConfig",
    "DecoderConfig",
    "DiTConfig",
    "DistillStageConfig",
    "EncodeConfig",
    "EncoderConfig",
    "EvalConfig",
    "FlowConfig",
    "GridConfig",
    "JudgeModelConfig",
    "JudgeStageConfig",
    "LatentDiTConfig",
    "LoggingConfig",
    "MDLMStageConfig",
    "MauveConfig",
    "ParetoConfig",
    "PriorSamplerConfig",
    "PriorStageConfig",
    "SampleConfig",
    "ScorerConfig",
    "TensorBoardConfig",
    "TimePairConfig",
    "TimeSamplingConfig",
    "TokenizerConfig",
    "TrainConfig",
    "WandbConfig",
    "Recipe",
    "default_recipe_path",
    "encode_section",
    "load_recipe",
    "require_section",
    "with_options",
    "to_dict",
]


@dataclass(frozen=True)
class Recipe:
    """A whole experiment: the data plus one section per stage."""

    name: str
    data: DataConfig
    mdlm: MDLMStageConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    description: str = ""
    ae: AEStageConfig | None = None  # `train-ae` (stage 1, the latent autoencoder)
    encode: EncodeConfig | None = None  # `encode`; absent: checkpoint = ae.out, out beside it
    judge: JudgeStageConfig = field(default_factory=JudgeStageConfig)  # `train-judge`
    eval: EvalConfig = field(default_factory=EvalConfig)  # `eval` and the sweep's scoring
    pareto: ParetoConfig = field(default_factory=ParetoConfig)  # `pareto`
    prior: PriorStageConfig | None = None  # `train-prior` (stage 2, LaDiff)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)  # `distill` (stage 3)

    def __post_init__(self) -> None:
        for stage in ("mdlm", "ae", "judge", "prior", "distill"):
            section = getattr(self, stage)
            if section is not None and section.train.steps < 1:
                raise FieldError(
                    f"{stage}.train.steps",
                    f"must be at least 1, got {section.train.steps} (the run would train nothing)",
                )


def default_recipe_path() -> Path:
    """The embedded default: ``recipes/oracle/default.yaml`` beside the package, the
    recipe ``make reproduce`` runs (the Shakespeare one is ``recipes/tiny/default.yaml``)."""
    return Path(__file__).resolve().parents[2] / "recipes" / "oracle" / "default.yaml"


# ----------------------------------------------------------------------------- loading

# Keys recipes may still use under an old name: old dotted key -> (new key in the same
# section, the old value as the new one). Each file is renamed before the `extends` merge,
# so an old key in a child still overrides its base's new one; `--set` takes either name.
_RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pareto.seed": ("pareto.seeds", lambda seed: [seed]),  # one sampling seed -> several
}


def _rename_old_keys(raw: dict, file: str) -> dict:
    """``raw`` with the keys of :data:`_RENAMED` under their new names (in place).

    Raises:
        RecipeError: a section sets a key both ways.
    """
    for old, (new, convert) in _RENAMED.items():
        *sections, old_leaf = old.split(".")
        node: Any = raw
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_leaf not in node:
            continue
        new_leaf = new.rsplit(".", 1)[-1]
        if new_leaf in node:
            raise RecipeError(
                f"{file}: {old} and {new} are both set: keep {new} ({old} is its old name)"
            )
        node[new_leaf] = convert(node.pop(old_leaf))
    return raw


def _apply_override(raw: dict, assignment: str) -> None:
    """``--set KEY=VALUE``: the value is read as YAML (``4`` an int, ``[1, 3]`` a list)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE (e.g. mdlm.model.depth=4)")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    key = key.strip()
    if key in _RENAMED:
        key, convert = _RENAMED[key]
        value = convert(value)
    _set_key(raw, key, value)


def _set_key(raw: dict, key: str, value: Any) -> None:
    """Put ``value`` at the dotted ``key``, creating missing sections."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _plain(value: Any) -> Any:
    """A typed command-line value as the recipe holds it (paths and choices as strings)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _read_mapping(path: Path, via: str) -> dict:
    """One recipe file as a raw mapping (``{}`` when empty)."""
    file = str(path)
    if path.is_dir():
        raise RecipeError(f"recipe {file} is a directory, not a YAML file{via}")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {file}{via}")
    text = read_utf8(path, what=via, error=RecipeError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise RecipeError(f"{file}: malformed YAML{where}: {problem}{via}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{file}: a recipe must be a mapping of sections, got {type(raw).__name__}{via}"
        )
    return _rename_old_keys(raw, file)


def _deep_merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: mappings merge recursively, anything else replaces."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_raw(path: Path, chain: tuple[Path, ...]) -> tuple[dict, list[Path]]:
    """The raw mapping of ``path`` with its ``extends`` chain merged in.

    Args:
        path: the recipe file.
        chain: the files that (transitively) extend this one, the outermost first.

    Returns:
        The merged mapping (without ``extends``) and the base files, nearest first.
    """
    via = f" (extended by {chain[-1]})" if chain else ""
    raw = _read_mapping(path, via)
    if "extends" not in raw:
        return raw, []
    base = raw.pop("extends")
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: extends: expected the path of a base recipe, got {base!r}")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    seen = [p.resolve() for p in (*chain, path)]
    if base_path.resolve() in seen:
        cycle = " -> ".join(str(p) for p in (*chain, path, base_path))
        raise RecipeError(f"{path}: extends cycle: {cycle}")
    if not base_path.is_file():
        raise RecipeError(f"{path}: extends: base recipe not found: {base_path}")
    base_raw, bases = _resolve_raw(base_path, (*chain, path))
    return _deep_merge(base_raw, raw), [base_path, *bases]


def load_recipe(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Recipe:
    """Read, resolve ``extends``, override and validate a recipe.

    Args:
        path: the YAML file; ``None`` means the embedded default.
        overrides: ``KEY=VALUE`` strings with dotted keys (``--set``), read as YAML,
            applied after the merge.
        options: typed values by dotted key (a command's own options), applied last and
            taken as they are, never parsed: a path stays the string it was. ``None``
            values (options not given) are skipped.

    Returns:
        The frozen :class:`Recipe`.

    Raises:
        RecipeError: on any malformed input, with the key and the file named (for a
            recipe that extends others, the error of a merged key names the whole chain).
    """
    path = Path(path) if path is not None else default_recipe_path()
    raw, bases = _resolve_raw(path, ())
    file = f"{path} (extends {' -> '.join(str(b) for b in bases)})" if bases else str(path)
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    for key, value in (options or {}).items():
        if value is not None:
            _set_key(raw, key, _plain(value))
    return build_dataclass(Recipe, raw, "", file)


def require_section(cfg: Recipe, name: str, stage: str) -> Any:
    """An optional section of the recipe, or a one-line error naming it."""
    section = getattr(cfg, name)
    if section is None:
        raise RecipeError(f"recipe {cfg.name} has no '{name}' section ({stage})")
    return section


def encode_section(cfg: Recipe) -> EncodeConfig:
    """The recipe's ``encode`` section; without one, the ``ae`` checkpoint and latents
    beside it (``<ae stem>-latents``)."""
    if cfg.encode is not None:
        return cfg.encode
    ae_out = Path(require_section(cfg, "ae", "stage 1").out)
    return EncodeConfig(checkpoint=str(ae_out), out=str(ae_out.with_name(ae_out.stem + "-latents")))


def with_options(section: Any, options: Mapping[str, Any], *, name: str) -> Any:
    """``section`` with the given options (dotted keys inside it; ``None``: not given)
    replaced, validated as strictly as the recipe (a wrong value names ``name.key``)."""
    raw = to_dict(section)
    for key, value in options.items():
        if value is not None:
            _set_key(raw, key, _plain(value))
    return build_dataclass(type(section), raw, name, "command-line options")
