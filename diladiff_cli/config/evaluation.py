"""Scoring (GenPPL, MAUVE, BERTScore) and the speed-quality sweeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diladiff_cli.config._checks import (
    all_at_least,
    at_least,
    distinct,
    fields_in,
    not_empty,
    number,
)
from diladiff_cli.config.stages import MINILM, Model, Selection
from diladiff_cli.structs import FieldError

ORACLE_SCORER = "oracle"  # eval.scorer.name of the exact scorer (oracle corpora only)
EosPolicy = Literal["strip", "truncate"]
Featurizer = Literal["mauve", "mean", "last"]


def _default_checkpoints() -> dict[str, str]:
    return {"mdlm": "runs/tiny/mdlm.pt"}


@dataclass(frozen=True)
class ScorerConfig:
    """The GenPPL scorer: any Hugging Face causal LM (a hub id or a local directory), or
    ``oracle`` on an oracle corpus: GenPPL is then the process's exact perplexity and no
    language model is loaded."""

    name: str = "runs/tiny/judge"  # "gpt2-large" in the paper recipes; "oracle"
    batch_size: int = 16  # windows per forward pass
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    context: int = 0  # window length in scorer tokens; 0 = the model's maximum (gpt2: 1024)

    def __post_init__(self) -> None:
        not_empty(self, "name")
        at_least(self, 1, "batch_size")
        if self.context != 0 and self.context < 2:
            raise FieldError(
                "context", f"must be 0 (the model's) or at least 2, got {self.context}"
            )


@dataclass(frozen=True)
class MauveConfig:
    """MAUVE settings (mauve-text defaults: PCA to 90 % variance, k-means with about
    n/10 clusters, scaling factor 5)."""

    enabled: bool = True
    features: str = MINILM  # featuriser model: hub id or directory; "minilm" = the shipped MiniLM
    featurizer: Featurizer = "mean"  # "mauve": the package's own (last token); mean / last pooling
    max_length: int = 512  # featuriser tokens per text (truncation)
    batch_size: int = 32
    num_clusters: int = 0  # 0 = mauve's "auto": max(2, round(n / 10))
    seed: int = 25  # k-means seed (mauve's default)
    scaling: float = 5.0
    explained_variance: float = 0.9
    kmeans_redo: int = 5
    kmeans_max_iter: int = 500

    def __post_init__(self) -> None:
        not_empty(self, "features")
        at_least(self, 1, "max_length", "batch_size", "kmeans_redo", "kmeans_max_iter")
        at_least(self, 0, "seed")
        if self.num_clusters == 1 or self.num_clusters < 0:  # one cluster: MAUVE is always 1
            raise FieldError(
                "num_clusters", f"must be 0 (auto) or at least 2, got {self.num_clusters}"
            )
        fields_in(self, "scaling", gt=0.0)
        fields_in(self, "explained_variance", gt=0.0, le=1.0)


@dataclass(frozen=True)
class BertScoreConfig:
    """BERTScore (used by the latent analysis). A local directory needs ``num_layers``."""

    model: str = MINILM
    num_layers: int = 6
    batch_size: int = 64

    def __post_init__(self) -> None:
        not_empty(self, "model")
        at_least(self, 1, "num_layers", "batch_size")


@dataclass(frozen=True)
class EvalConfig:
    """The `eval` section of a recipe."""

    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    mauve: MauveConfig = field(default_factory=MauveConfig)
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    eos: EosPolicy = "strip"
    reference_split: Literal["valid", "train"] = "valid"
    reference_seed: int = 0  # which blocks of the split are the references
    num_references: int = 0  # 0 = as many as there are samples

    def __post_init__(self) -> None:
        at_least(self, 0, "reference_seed", "num_references")


@dataclass(frozen=True)
class GridConfig:
    """One grid: the cartesian product of its lists."""

    name: str = "frontier"
    models: tuple[Model, ...] = ("mdlm",)
    ndisc: tuple[int, ...] = (8, 16, 32, 64, 128)
    ncont: tuple[int, ...] = (0,)  # latent steps (ignored by mdlm)
    selection: tuple[Selection, ...] = ("random", "confidence")
    temperature: tuple[float, ...] = (1.0,)
    distill: tuple[str, ...] = ("",)  # distillation objective/schedule labels (diladiff only)

    def __post_init__(self) -> None:
        not_empty(self, "name")
        for name in ("models", "ndisc", "ncont", "selection", "temperature", "distill"):
            if not getattr(self, name):
                raise FieldError(name, "must not be empty")
        all_at_least("ndisc", self.ndisc, 1)
        all_at_least("ncont", self.ncont, 0)
        for i, temperature in enumerate(self.temperature):
            number(f"temperature[{i}]", temperature, gt=0.0)


@dataclass(frozen=True)
class ParetoConfig:
    """The `pareto` section of a recipe."""

    out: str = "results/tiny"  # CSV, table, figures, per-cell results (commit these)
    work_dir: str = "runs/tiny/pareto"  # the samples of every cell
    checkpoints: dict[str, str] = field(default_factory=_default_checkpoints)
    """model (or ``model/distill`` for a distilled variant) -> checkpoint."""
    grids: tuple[GridConfig, ...] = (GridConfig(),)
    num_samples: int = 128
    batch_size: int = 64
    # Every cell is sampled and scored once per seed; pareto.csv holds the mean over seeds
    # and its standard error (recipes written before this key set `seed: N`: read as [N]).
    seeds: tuple[int, ...] = (0,)
    top_p: float = 1.0
    frontier_temperature: float = 1.0  # the temperature of the speed-quality frontiers
    baseline: str = "mdlm"  # the headline compares every other model with this one

    def __post_init__(self) -> None:
        not_empty(self, "out", "work_dir", "baseline")
        for model, path in self.checkpoints.items():
            if not path.strip():
                raise FieldError(f"checkpoints.{model}", f"must not be empty, got {path!r}")
        if not self.grids:
            raise FieldError("grids", "must not be empty")
        at_least(self, 2, "num_samples")
        at_least(self, 1, "batch_size")
        distinct("seeds", self.seeds)
        all_at_least("seeds", self.seeds, 0)
        fields_in(self, "top_p", gt=0.0, le=1.0)
        fields_in(self, "frontier_temperature", gt=0.0)
