"""The Python API: :class:`Pipeline`, one object over a trained pipeline.

It is the Python counterpart of :mod:`diladiff_cli.cli`, at the same layer: it reads a
recipe (or finds the parts of a run directory), then calls the core functions the
commands call, so the same seed gives the same samples as the command line:
:func:`~diladiff_cli.sample.generate` for :meth:`Pipeline.generate`,
:meth:`Pipeline.interpolate` and :meth:`Pipeline.decode` (``diladiff sample``),
:func:`~diladiff_cli.encode.encode_texts` for :meth:`Pipeline.encode` (``diladiff encode
--text``) and the :class:`~diladiff_cli.evaluate.Evaluator` for :meth:`Pipeline.score`
(``diladiff eval``). Each call loads the checkpoints it needs, as a command does.

Example::

    from diladiff_cli import Pipeline

    pipe = Pipeline.load("runs/oracle")  # or a recipe: "recipes/oracle/default.yaml"
    out = pipe.generate(8, model="diladiff", ndisc=64, seed=0)
    print(out.texts[0], out.timing.seconds_per_sample)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diladiff_cli.ae import load_autoencoder
from diladiff_cli.config import encode_section, load_recipe
from diladiff_cli.config.evaluation import ORACLE_SCORER, EvalConfig, ScorerConfig
from diladiff_cli.config.stages import Model, SampleConfig, Selection
from diladiff_cli.config.train import Precision
from diladiff_cli.distributed import Runtime, init_runtime
from diladiff_cli.encode import encode_texts
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import Evaluator, TextScores
from diladiff_cli.export import MANIFEST, RECIPE, load_exported
from diladiff_cli.hub import looks_like_path
from diladiff_cli.oracle import ORACLE_FILE
from diladiff_cli.sample import (
    Interpolation,
    PathKind,
    Prompt,
    SampleResult,
    SampleSettings,
    generate,
    sample_settings,
)

Generation = SampleResult
"""What :meth:`Pipeline.generate` returns: the texts, the tokens ``(N, L)``, the timing
record, the settings and the rest of ``diladiff sample``'s record."""


@dataclass(frozen=True)
class Part:
    """One part of a trained pipeline.

    Attributes:
        label: what it is, for messages.
        file: its name in a run directory.
        command: the command that writes it.
    """

    label: str
    file: str
    command: str


PARTS: dict[str, Part] = {
    "mdlm": Part("base MDLM", "mdlm.pt", "diladiff train-mdlm"),
    "autoencoder": Part("autoencoder", "ae.pt", "diladiff train-ae"),
    "ladiff": Part("latent prior (LaDiff)", "ladiff.pt", "diladiff train-prior"),
    "diladiff": Part("distilled student (DiLaDiff)", "diladiff.pt", "diladiff distill"),
    "judge": Part("judge (the ar baseline)", "judge", "diladiff train-judge"),
    "bound": Part(
        "perfect-latent bound",
        "bound.pt",
        "diladiff train-ae --set ae.encoder.name=oracle-topic --out bound.pt",
    ),
    "data": Part("prepared data", "data", "diladiff prepare"),
}
"""The parts, by name, with their standard names in a run directory (``runs/oracle``)."""

# What each model samples from, and whether the autoencoder decodes its latents.
_SAMPLED: dict[str, tuple[str, bool]] = {
    "mdlm": ("mdlm", False),
    "ladiff": ("ladiff", True),
    "diladiff": ("diladiff", True),
    "ar": ("judge", False),
    "bound": ("bound", False),
}


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A trained pipeline: where its parts are, the sampler's defaults and the scorer.

    Build one with :meth:`load`. A part may be missing on disk until a method needs it;
    then the method raises a one-line :class:`DiladiffError` naming the part and the
    file it looked for.

    Attributes:
        source: the recipe or run directory it was loaded from (named in messages).
        parts: part name (:data:`PARTS`) -> path; None where the recipe names none.
        defaults: the sampler's settings where a method is given none (the recipe's
            ``sample`` section).
        evaluation: the scorer and the EOS policy of :meth:`score` (the recipe's
            ``eval`` section).
        runtime: the device.
        precision: the decoder's autocast precision.
    """

    source: str
    parts: Mapping[str, str | None]
    defaults: SampleSettings
    evaluation: EvalConfig
    runtime: Runtime
    precision: Precision = "fp32"

    @classmethod
    def load(
        cls, source: str | Path, *, device: str = "auto", precision: Precision = "fp32"
    ) -> Pipeline:
        """A pipeline from a recipe, a run directory or an export.

        * A recipe (YAML): its stages' outputs (``mdlm.out``, the autoencoder
          ``encode.checkpoint`` else ``ae.out``, ``prior.out``, ``distill.out``,
          ``judge.out``, ``pareto.checkpoints.bound``, ``data.out``), its ``sample``
          section's settings and its ``eval`` section.
        * A run directory (``runs/oracle``): the parts under their standard names
          (:data:`PARTS`: ``mdlm.pt``, ``ae.pt``, ``ladiff.pt``, ``diladiff.pt``,
          ``judge/``, ``bound.pt``, ``data/``); the checkpoints carry their tokenizer
          and data, so no recipe is needed. Sampler settings: :class:`SampleConfig`'s
          defaults; scorer: the exact ``oracle`` on an oracle corpus, else the run's
          judge.
        * An export (``diladiff export``; a directory with ``export.json``, or a hub id
          ``org/name`` fetched through ``huggingface_hub``): rebuilt as checkpoints
          (:func:`~diladiff_cli.export.load_exported`); sampler settings from its
          ``recipe.yaml`` when it has one; scorer: its AR baseline. It carries no prepared
          data, so :meth:`score` needs a pipeline with one.

        Args:
            source: the recipe file, the run directory, the export or its hub id.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            precision: the decoder's autocast precision.

        Raises:
            DiladiffError: no such file or directory, a malformed recipe, or a
                directory that holds none of the parts.
        """
        path = Path(source)
        hub_id = not path.exists() and path.suffix not in (".yaml", ".yml")
        if (path / MANIFEST).is_file() or (hub_id and not looks_like_path(str(source))):
            # an export (`diladiff export`), here or on the hub: rebuilt as checkpoints
            parts = {**load_exported(source).parts(), "bound": None}
            recipe = path / RECIPE
            sample = load_recipe(recipe).sample if recipe.is_file() else SampleConfig()
            evaluation = EvalConfig(scorer=ScorerConfig(name=parts["judge"] or ORACLE_SCORER))
        elif path.is_dir():
            if not any((path / part.file).exists() for part in PARTS.values()):
                names = ", ".join(p.file for p in PARTS.values())
                raise DiladiffError(f"{source} is not a run directory: none of {names} in it")
            parts: dict[str, str | None] = {
                name: str(path / part.file) for name, part in PARTS.items()
            }
            oracle = (path / PARTS["data"].file / ORACLE_FILE).is_file()
            scorer = ORACLE_SCORER if oracle else str(path / PARTS["judge"].file)
            sample, evaluation = SampleConfig(), EvalConfig(scorer=ScorerConfig(name=scorer))
        elif path.is_file():
            cfg = load_recipe(path)
            has_ae = cfg.encode is not None or cfg.ae is not None
            parts = {
                "mdlm": cfg.mdlm.out,
                "autoencoder": encode_section(cfg).checkpoint if has_ae else None,
                "ladiff": cfg.prior.out if cfg.prior is not None else None,
                "diladiff": cfg.distill.out,
                "judge": cfg.judge.out,
                "bound": cfg.pareto.checkpoints.get("bound"),
                "data": cfg.data.out,
            }
            sample, evaluation = cfg.sample, cfg.eval
        else:
            raise DiladiffError(f"{source}: no such recipe or run directory")
        return cls(
            source=str(source),
            parts=parts,
            defaults=sample_settings(sample),
            evaluation=evaluation,
            runtime=init_runtime(device),
            precision=precision,
        )

    def part(self, name: str) -> str:
        """The path of a part that exists on disk.

        Raises:
            DiladiffError: the part is not named, or not on disk.
        """
        part, path = PARTS[name], self.parts.get(name)
        if path is None:
            raise DiladiffError(f"{self.source} names no {part.label} (`{part.command}`)")
        if not Path(path).exists():
            raise DiladiffError(
                f"{self.source}: the {part.label} is missing: {path} not found "
                f"(`{part.command}` writes it)"
            )
        return path

    def generate(
        self,
        n: int,
        *,
        model: Model = "diladiff",
        ncont: int | None = None,
        ndisc: int | None = None,
        selection: Selection | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        prefix: str | None = None,
        template: str | None = None,
    ) -> Generation:
        """Draw ``n`` samples, as ``diladiff sample --model MODEL`` does.

        Args:
            n: how many samples.
            model: ``mdlm``, ``ladiff``, ``diladiff``, ``ar`` or ``bound``.
            ncont: latent steps (ladiff / diladiff); None: the checkpoint's default.
            ndisc: discrete steps; None (here and below): the default settings'.
            selection: ``random`` or ``confidence``.
            temperature: decoder temperature.
            top_p: nucleus mass.
            seed: sampling seed.
            batch_size: samples per batch (the rows of a batch share its generator, so
                the samples depend on it).
            prefix: every sample starts with this text (kept, never changed).
            template: keep this text and draw its masked spans (``[MASK]``,
                ``[MASK*N]``) and the block after it.

        Returns:
            The texts, tokens, timing record, settings and record.

        Raises:
            DiladiffError: an unknown model, a missing part, bad settings or prompt.
        """
        if model not in _SAMPLED:
            raise DiladiffError(f"model must be one of {', '.join(_SAMPLED)}, got {model!r}")
        part, decoded = _SAMPLED[model]
        checkpoint = self.part(part)
        return generate(
            model=model,
            checkpoint=checkpoint,
            settings=self._settings(
                num_samples=n,
                ndisc=ndisc,
                selection=selection,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                batch_size=batch_size,
            ),
            runtime=self.runtime,
            autoencoder=self.part("autoencoder") if decoded else None,
            ncont=ncont,
            precision=self.precision,
            prompt=Prompt.of(prefix=prefix, template=template),
        )

    def encode(self, texts: str | Sequence[str], *, truncate: bool = False) -> torch.Tensor:
        """The autoencoder's normalised latents of ``texts``, ``(B, N, D)`` on the CPU, as
        ``diladiff encode --text`` computes them.

        Args:
            texts: one text or several.
            truncate: cut texts longer than the encoder's max length (else refuse).
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        loaded = load_autoencoder(self.part("autoencoder"), device=self.runtime.device)
        return encode_texts(loaded, batch, truncate=truncate).latents

    def decode(
        self,
        z: torch.Tensor,
        *,
        ndisc: int | None = None,
        selection: Selection | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        """Decode normalised latents ``(B, N, D)`` (from :meth:`encode`, a prior, or a
        path) with the autoencoder's decoder: one text per latent.

        Args:
            z: ``(B, N, D)`` normalised latents.
            ndisc: discrete steps; None (here and below): the default settings'.
            selection: ``random`` or ``confidence``.
            temperature: decoder temperature.
            top_p: nucleus mass.
            seed: sampling seed.
            batch_size: latents per batch.
        """
        result = generate(
            model="decode",
            checkpoint=self.part("autoencoder"),
            settings=self._settings(
                ndisc=ndisc,
                selection=selection,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                batch_size=batch_size,
            ),
            runtime=self.runtime,
            precision=self.precision,
            latents=z,
        )
        return result.texts

    def interpolate(
        self,
        text_a: str,
        text_b: str,
        *,
        points: int = 5,
        path: PathKind = "slerp",
        ndisc: int | None = None,
        selection: Selection | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        truncate: bool = False,
    ) -> list[str]:
        """Decode ``points`` latents on the path from ``text_a``'s latent to
        ``text_b``'s, as ``diladiff sample --from-text A --to-text B`` does: each point
        alone and with the same noise, so the ends decode exactly as :meth:`decode` of
        :meth:`encode` of their text with the same seed.

        Args:
            text_a: the text at t = 0.
            text_b: the text at t = 1.
            points: points on the path, both ends included (at least 2).
            path: ``slerp`` or ``lerp`` in the normalised latent space
                (:func:`~diladiff_cli.sample.latent_path`).
            ndisc: discrete steps; None (here and below): the default settings'.
            selection: ``random`` or ``confidence``.
            temperature: decoder temperature.
            top_p: nucleus mass.
            seed: sampling seed.
            truncate: cut texts longer than the encoder's max length (else refuse).
        """
        interpolation = Interpolation(
            source=text_a, target=text_b, points=points, path=path, truncate=truncate
        )
        result = generate(
            model="interpolate",
            checkpoint=self.part("autoencoder"),
            settings=self._settings(
                ndisc=ndisc, selection=selection, temperature=temperature, top_p=top_p, seed=seed
            ),
            runtime=self.runtime,
            precision=self.precision,
            interpolation=interpolation,
        )
        return result.texts

    def score(self, texts: str | Sequence[str]) -> TextScores:
        """Score texts with the pipeline's scorer, as ``diladiff eval`` scores samples:
        GenPPL (on an oracle corpus scored by ``oracle``: the exact perplexity), the
        oracle's measures (NLL per token, broken rules, topic) and the entropy.

        Args:
            texts: one text or several.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        evaluator = Evaluator(
            cfg=self.evaluation, data_dir=self.part("data"), device=self.runtime.device
        )
        return evaluator.score_texts(batch)

    def _settings(self, **given: Any) -> SampleSettings:
        """The default settings with the given ones (None: not given) put in; the public
        methods name and type each setting they take."""
        return dataclasses.replace(
            self.defaults, **{k: v for k, v in given.items() if v is not None}
        )
