"""Share a trained pipeline as Hugging Face-style directories, and read one back.

:func:`export_pipeline` (``diladiff export``) writes one directory per component, each
a ``config.json`` (the checkpoint's diladiff metadata: stage, step, config, extra,
versions) beside a ``model.safetensors`` (the same tensors), plus the tokenizer, the
recipe and a model card::

    OUT/
      README.md              model card: YAML front matter, steps, sampling protocol
      export.json            manifest: the components, each file's size and sha256
      recipe.yaml            the recipe (when one is given)
      tokenizer/             the data's tokenizer, as tokenizers / transformers saved it
      mdlm/                  config.json + model.safetensors (stage mdlm)
      autoencoder/           config.json + model.safetensors (stage ae; the frozen
                             encoder is named in config.json, not included)
      prior/                 config.json + model.safetensors (stage prior, LaDiff)
      student/               config.json + model.safetensors (stage distill, DiLaDiff)
      ar/                    the judge / AR baseline, already a Hugging Face directory

:func:`load_exported` takes such a directory or a hub id (``org/name``, through
``huggingface_hub.snapshot_download``) and rebuilds the diladiff checkpoints that the
existing loaders read, under a cache directory keyed by the manifest's hash (which
holds every file's sha256), laid out as a run directory (``mdlm.pt``, ``ae.pt``,
``ladiff.pt``, ``diladiff.pt``, ``judge/``, ``tokenizer/``). The whole entry is built in
a temporary directory and renamed into place, so a reader sees all of it or none.

The tensors, the stage, step, config and versions come back exactly: rebuilt from an
unchanged ``config.json`` a checkpoint is the original file byte for byte. Two kinds of
``extra`` entry name other files, and a checkpoint that leaves its machine must point
at the copies instead (:func:`relocate`):

* ``extra["tokenizer"]`` (mdlm, ae): the data's tokenizer directory -> the rebuilt
  ``tokenizer/``;
* every ``{"path", "sha256"}`` record (the prior's ``autoencoder``, the student's
  ``teacher`` and ``latent.autoencoder``) whose sha256 is an exported checkpoint's ->
  the rebuilt file's path and sha256, so that the sampler's check that a latent model
  was trained on this autoencoder's latents holds for the copies.

Everything else in ``extra`` (``data_dir``, ``base_mdlm``, ``latents``...) is provenance
and is kept as written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from diladiff_cli import __version__, hub
from diladiff_cli.ae import STAGE as AE_STAGE
from diladiff_cli.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    load_checkpoint,
    meta_document,
    parse_meta,
    save_weights,
)
from diladiff_cli.config.stages import SampleConfig
from diladiff_cli.data import load_data_info
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.files import replace_directory, write_synced, writing
from diladiff_cli.latent_shards import file_sha256
from diladiff_cli.mdlm import STAGE as MDLM_STAGE
from diladiff_cli.prior import DISTILL, PRIOR

FORMAT = "diladiff-export"
FORMAT_VERSION = 1
MANIFEST = "export.json"
CARD = "README.md"
RECIPE = "recipe.yaml"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
AR = "ar"
JUDGE = "judge"  # the judge's name in a run directory (and in a rebuilt entry)


@dataclass(frozen=True)
class _Component:
    """A checkpoint of the pipeline: its :class:`PipelinePaths` field, its folder in an
    export, its file in a run directory, its stage and what to call it."""

    field: str
    folder: str
    file: str
    stage: str
    label: str


COMPONENTS = (
    _Component("mdlm", "mdlm", "mdlm.pt", MDLM_STAGE, "base MDLM"),
    _Component("autoencoder", "autoencoder", "ae.pt", AE_STAGE, "autoencoder"),
    _Component("prior", "prior", "ladiff.pt", PRIOR, "latent prior (LaDiff)"),
    _Component("student", "student", "diladiff.pt", DISTILL, "distilled student (DiLaDiff)"),
)
"""The checkpoints, in the order they depend on one another."""


@dataclass(frozen=True, kw_only=True)
class PipelinePaths:
    """Where the parts of a trained pipeline are.

    Attributes:
        mdlm: the base MDLM checkpoint (``train-mdlm``).
        autoencoder: the autoencoder checkpoint (``train-ae``).
        prior: the latent prior checkpoint (``train-prior``, LaDiff).
        student: the distilled student checkpoint (``distill``, DiLaDiff).
        judge: the judge / AR baseline directory (``train-judge``); None: none.
        tokenizer: the data's tokenizer directory; None: the prepared data's, else the
            one the MDLM checkpoint names.
        data: the prepared data directory; None: none (an export carries none).
    """

    mdlm: Path
    autoencoder: Path
    prior: Path
    student: Path
    judge: Path | None = None
    tokenizer: Path | None = None
    data: Path | None = None

    @classmethod
    def from_parts(cls, parts: Mapping[str, str | Path | None]) -> PipelinePaths:
        """The paths of :attr:`Pipeline.parts <diladiff_cli.pipeline.Pipeline.parts>`
        (``mdlm``, ``autoencoder``, ``ladiff``, ``diladiff``, ``judge``, ``data``). The
        judge and the data are optional: left out when their path is not on disk.

        Raises:
            DiladiffError: one of the four checkpoints is not named.
        """
        names = {
            "mdlm": "mdlm",
            "autoencoder": "autoencoder",
            "prior": "ladiff",
            "student": "diladiff",
        }
        required = {}
        for field, part in names.items():
            if parts.get(part) is None:
                raise DiladiffError(f"the pipeline names no {part} checkpoint")
            required[field] = Path(parts[part])

        def optional(part: str) -> Path | None:
            path = parts.get(part)
            return Path(path) if path is not None and Path(path).exists() else None

        return cls(**required, judge=optional("judge"), data=optional("data"))

    def parts(self) -> dict[str, str | None]:
        """The paths by :class:`~diladiff_cli.pipeline.Pipeline`'s part names."""

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return {
            "mdlm": text(self.mdlm),
            "autoencoder": text(self.autoencoder),
            "ladiff": text(self.prior),
            "diladiff": text(self.student),
            "judge": text(self.judge),
            "data": text(self.data),
        }


# ----------------------------------------------------------------------------- export


def export_pipeline(
    *,
    paths: PipelinePaths,
    out_dir: str | Path,
    recipe_text: str | None = None,
    recipe_name: str | None = None,
    description: str = "",
    sample: SampleConfig | None = None,
    measured: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained pipeline as Hugging Face-style directories (see the module doc).

    Args:
        paths: the checkpoints, the judge (optional) and the tokenizer or data.
        out_dir: the export directory (created; written whole, then renamed in).
        recipe_text: the recipe, written as ``recipe.yaml``: best the resolved one
            (``yaml.safe_dump(to_dict(recipe), sort_keys=False)``, overrides applied and
            ``extends`` merged, so that it stands alone); None: no recipe.
        recipe_name: the recipe's ``name`` (the card's title); None: the out_dir's name.
        description: the recipe's ``description``, quoted in the card.
        sample: the recipe's ``sample`` section (the card's sampler defaults); None:
            :class:`SampleConfig`'s.
        measured: the measured quality to record in the card (e.g. a REPORT's
            headline or a pareto row): name -> value, nested mappings flattened.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        DiladiffError: ``out_dir`` exists and is not empty (without ``overwrite``), or
            is a file; a component is missing or of another stage; the prior or the
            student was trained on another autoencoder; the tokenizer cannot be found.
        CheckpointError: a checkpoint cannot be read.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DiladiffError(f"cannot export to {out}: it is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DiladiffError(
            f"{out} exists and is not empty: choose another directory, or overwrite it "
            "(--overwrite)"
        )
    checkpoints = {c.field: _load_component(c, getattr(paths, c.field)) for c in COMPONENTS}
    _check_autoencoder(checkpoints, paths)
    tokenizer = _tokenizer_source(paths, checkpoints["mdlm"].meta)
    if paths.judge is not None and not (paths.judge / "config.json").is_file():
        raise DiladiffError(f"the judge is missing: {paths.judge / 'config.json'} not found")

    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with writing(staging):
            staging.chmod(0o755)  # mkdtemp makes it private; an export is for sharing
            components: dict[str, Any] = {}
            for c in COMPONENTS:
                ckpt = checkpoints[c.field]
                folder = staging / c.folder
                folder.mkdir()
                doc = meta_document(ckpt.meta)
                write_synced(folder / CONFIG, (json.dumps(doc, indent=2) + "\n").encode())
                weights = safetensors.torch.save(ckpt.tensors, metadata={"format": "pt"})
                write_synced(folder / WEIGHTS, weights)
                components[c.folder] = {
                    "stage": c.stage,
                    "step": ckpt.meta.step,
                    "sha256": file_sha256(ckpt.path),  # the original file (relocate)
                    "files": _file_records(folder),
                }
            components[TOKENIZER] = {"files": _copy_files(tokenizer, staging / TOKENIZER)}
            if paths.judge is not None:
                components[AR] = {"files": _copy_files(paths.judge, staging / AR)}
            if recipe_text is not None:
                write_synced(staging / RECIPE, recipe_text.encode())
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "diladiff": __version__,
                "recipe": RECIPE if recipe_text is not None else None,
                "components": components,
            }
            write_synced(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
            card = model_card(
                checkpoints={c.field: checkpoints[c.field].meta for c in COMPONENTS},
                tensors={c.field: checkpoints[c.field].tensors for c in COMPONENTS},
                judge=_judge_record(paths.judge),
                recipe_name=recipe_name or out.name,
                description=description,
                has_recipe=recipe_text is not None,
                sample=sample or SampleConfig(),
                measured=measured,
            )
            write_synced(staging / CARD, card.encode())
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _load_component(component: _Component, path: Path) -> Checkpoint:
    """The checkpoint of ``component`` at ``path`` (one line when missing or foreign)."""
    path = Path(path)
    if not path.is_file():
        raise DiladiffError(f"the {component.label} is missing: {path} not found")
    try:
        return load_checkpoint(path, stage=component.stage)
    except CheckpointError as err:
        raise CheckpointError(f"the {component.label}: {err}") from None


def _check_autoencoder(checkpoints: dict[str, Checkpoint], paths: PipelinePaths) -> None:
    """Refuse a pipeline whose latent models were trained on another autoencoder's
    latents: it could not sample, here or anywhere."""
    sha = file_sha256(paths.autoencoder)
    records = {
        "prior": checkpoints["prior"].meta.extra.get("autoencoder"),
        "student": (checkpoints["student"].meta.extra.get("latent") or {}).get("autoencoder"),
    }
    for field, record in records.items():
        recorded = (record or {}).get("sha256")
        if recorded != sha:
            raise DiladiffError(
                f"{getattr(paths, field)} was trained on latents of another autoencoder "
                f"(sha256 {str(recorded)[:12]}), not {paths.autoencoder} (sha256 {sha[:12]})"
            )


def _tokenizer_source(paths: PipelinePaths, mdlm: CheckpointMeta) -> Path:
    """The tokenizer directory to export: the given one, the prepared data's (checked to
    be the data the MDLM was trained on), else the one the MDLM checkpoint names."""
    if paths.tokenizer is not None:
        if not paths.tokenizer.is_dir():
            raise DiladiffError(f"the tokenizer is missing: {paths.tokenizer} not found")
        return paths.tokenizer
    if paths.data is not None:
        info = load_data_info(paths.data)
        trained_on = mdlm.extra.get("data_fingerprint")
        if trained_on and trained_on != info.fingerprint:
            raise DiladiffError(
                f"the prepared data {paths.data} (fingerprint {info.fingerprint}) is not the "
                f"data {paths.mdlm} was trained on ({trained_on})"
            )
        return Path(info.tokenizer_dir)
    named = Path(str(mdlm.extra.get("tokenizer", "")))
    if not named.is_dir():
        raise DiladiffError(
            f"the tokenizer is missing: {named} (named by {paths.mdlm}) not found; "
            "give the prepared data directory"
        )
    return named


def _copy_files(source: Path, target: Path) -> dict[str, dict[str, Any]]:
    """Copy the files of directory ``source`` (not its subdirectories) into ``target``."""
    target.mkdir()
    files = sorted(p for p in source.iterdir() if p.is_file())
    if not files:
        raise DiladiffError(f"{source} holds no files")
    for path in files:
        shutil.copyfile(path, target / path.name)
    return _file_records(target)


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder``."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _judge_record(judge: Path | None) -> dict[str, Any] | None:
    if judge is None:
        return None
    try:
        return json.loads((judge / "judge.json").read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- model card


def _count(tensors: dict[str, torch.Tensor]) -> str:
    n = sum(t.numel() for t in tensors.values())
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _configured_steps(meta: CheckpointMeta) -> str:
    steps = (meta.config.get("train") or {}).get("steps")
    return f"{meta.step} of {steps}" if steps is not None else str(meta.step)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(
    *,
    checkpoints: Mapping[str, CheckpointMeta],
    tensors: Mapping[str, dict[str, torch.Tensor]],
    judge: dict[str, Any] | None,
    recipe_name: str,
    description: str,
    has_recipe: bool,
    sample: SampleConfig,
    measured: Mapping[str, Any] | None,
) -> str:
    """The export's ``README.md``: YAML front matter, then the recipe, the training steps
    of each stage, the sampling protocol and (when given) the measured quality.

    Args:
        checkpoints: the metadata by :class:`PipelinePaths` field (mdlm, autoencoder,
            prior, student).
        tensors: the weights by the same fields (their parameter counts).
        judge: the judge's ``judge.json`` (None: no judge exported).
        recipe_name: the title.
        description: the recipe's description.
        has_recipe: whether ``recipe.yaml`` is exported beside the card.
        sample: the sampler's default settings.
        measured: name -> value (nested mappings flattened), or None.
    """
    mdlm, ae = checkpoints["mdlm"], checkpoints["autoencoder"]
    prior, student = checkpoints["prior"], checkpoints["student"]
    compressor = ae.config.get("compressor", {})
    sampler = prior.config.get("sampler", {})
    prior_ncont = sample.ncont or sampler.get("ncont", "?")
    student_ncont = sample.ncont or student.config.get("ncont", "?")
    seq_len = mdlm.extra.get("seq_len", "?")
    encoder = str(ae.extra.get("encoder_name", "?"))
    where = "not included, loaded by name"
    if hub.looks_like_path(encoder):  # not a hub id nor an alias (minilm): this machine's
        where = "not included: a local directory, which the loading machine must have too"
    lines = [
        "---",
        "library_name: diladiff",
        "license: unknown",
        "tags:",
        *(
            f"- {tag}"
            for tag in ("diladiff", "diffusion", "masked-diffusion", "latent-diffusion", "text")
        ),
        "---",
        "",
        f"# {recipe_name}: a DiLaDiff pipeline",
        "",
    ]
    if description:
        lines += [description.strip(), ""]
    source = f"the recipe `{recipe_name}`" + (
        f" (`{RECIPE}` beside this card)" if has_recipe else ""
    )
    lines += [
        f"Trained with diladiff from {source}; exported by diladiff {__version__}. Load it "
        "with `diladiff_cli.export.load_exported(<this directory or hub id>)`, which rebuilds "
        "the diladiff checkpoints.",
        "",
        "## Components and training steps",
        "",
        "| component | directory | stage | training steps | parameters | notes |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| base MDLM (the `mdlm` baseline) | `mdlm/` | {mdlm.stage} | "
        f"{_configured_steps(mdlm)} | {_count(tensors['mdlm'])} | "
        f"vocabulary {mdlm.extra.get('vocab_size', '?')}, L = {seq_len} |",
        f"| autoencoder (Perceiver compressor + latent-conditioned decoder) | `autoencoder/` "
        f"| {ae.stage} | {_configured_steps(ae)} | {_count(tensors['autoencoder'])} | "
        f"latent {compressor.get('num_latents', '?')} x {compressor.get('latent_dim', '?')}; "
        f"frozen encoder `{encoder}` ({where}) |",
        f"| latent prior (LaDiff) | `prior/` | {prior.stage} | {_configured_steps(prior)} | "
        f"{_count(tensors['prior'])} | probability-flow ODE |",
        f"| distilled student (DiLaDiff) | `student/` | {student.stage} | "
        f"{_configured_steps(student)} | {_count(tensors['student'])} | "
        f"{student.extra.get('objective', '?')} distillation of the prior |",
    ]
    if judge is not None:
        ppl = judge.get("valid_ppl")
        ppl_text = f"validation perplexity {ppl:.4g}" if isinstance(ppl, float) else ""
        lines.append(
            f"| AR baseline / GenPPL judge (GPT-2) | `{AR}/` | judge | "
            f"{judge.get('step', '?')} | | {ppl_text} |"
        )
    lines += [
        f"| tokenizer | `{TOKENIZER}/` | | | | mask id {mdlm.extra.get('mask_id', '?')} |",
        "",
        "## Sampling protocol",
        "",
        f"- DiLaDiff (`--model diladiff`): the student ({student.extra.get('objective', '?')}"
        f"-distilled) draws a latent z in Ncont = {student_ncont} few-step steps; LaDiff (`--model ladiff`): the "
        f"prior draws it with the {sampler.get('method', '?')} probability-flow ODE in "
        f"Ncont = {prior_ncont} steps. The autoencoder's decoder then unmasks the "
        f"{seq_len}-token block conditioned on z; MDLM (`--model mdlm`) unmasks it alone.",
        f"- The masked diffusion sampler: Ndisc = {sample.ndisc} discrete steps on the grid "
        f"linspace(1, 1e-5, Ndisc + 1), selection = {sample.selection} "
        "(random: MDLM's ancestral unmasking; confidence: the most probable tokens first), "
        f"temperature = {sample.temperature}, top-p = {sample.top_p}.",
        "- Every categorical draw is made in float64 (inverse CDF, one uniform per row; "
        "the mask token is never drawn): float32 sampling over a large vocabulary lowers "
        "the effective temperature and flatters GenPPL.",
        f"- Seeds: batch b of a run seeded s decodes with seed s * 100003 + b (default "
        f"s = {sample.seed}, batch size {sample.batch_size}); the latent noise of a batch is "
        "drawn on the CPU in float32.",
        "",
    ]
    if measured:
        lines += ["## Measured quality", "", "| measure | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flatten(measured)]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- load


def default_cache_dir() -> Path:
    """Where :func:`load_exported` rebuilds checkpoints: ``$XDG_CACHE_HOME/diladiff/
    exports`` (``~/.cache/diladiff/exports``)."""
    root = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(root).expanduser() / "diladiff" / "exports"


def load_exported(source: str | Path, *, cache_dir: str | Path | None = None) -> PipelinePaths:
    """Rebuild an exported pipeline as diladiff checkpoints (see the module doc).

    Args:
        source: an export directory, or a hub id (``org/name``) fetched with
            ``huggingface_hub.snapshot_download`` (the Hugging Face cache only when
            offline).
        cache_dir: where to rebuild (one subdirectory per export content); None:
            :func:`default_cache_dir`.

    Returns:
        The rebuilt checkpoints, the judge (None when not exported) and the tokenizer;
        ``data`` is None (an export carries no prepared data).

    Raises:
        DiladiffError: a hub id that cannot be fetched, a directory that is no export,
            a part missing from it, a file that does not match the manifest, a
            ``config.json`` that is not valid JSON or not diladiff metadata.
    """
    root = _local_export(str(source))
    raw = _read_manifest(root)
    components = _check_export(root, json.loads(raw))
    key = hashlib.sha256(raw).hexdigest()[:16]
    # resolved: the rebuilt checkpoints name their tokenizer and autoencoder by it
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = cache.resolve() / key
    if not entry.is_dir():
        _rebuild(root, components, entry)
    return PipelinePaths(
        **{c.field: entry / c.file for c in COMPONENTS},
        judge=entry / JUDGE if AR in components else None,
        tokenizer=entry / TOKENIZER,
    )


def _check_export(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's components, once every file it lists is there with its size and
    every ``config.json`` reads as diladiff metadata (the sha256s are checked when the
    checkpoints are rebuilt)."""
    components = manifest.get("components")
    if not isinstance(components, dict):
        raise DiladiffError(f"{root / MANIFEST} lists no components")
    for name in (*(c.folder for c in COMPONENTS), TOKENIZER):
        if not isinstance(components.get(name), dict):
            raise DiladiffError(f"{root}: the export has no {name} (not in {MANIFEST})")
    known = {*(c.folder for c in COMPONENTS), TOKENIZER, AR}
    for name, record in components.items():
        files = record.get("files") if isinstance(record, dict) else None
        if name not in known or not isinstance(files, dict):
            raise DiladiffError(f"{root / MANIFEST}: unknown or malformed component {name!r}")
        for file in files:
            if Path(file).name != file or file in ("", ".", ".."):
                raise DiladiffError(f"{root / MANIFEST}: {name} names a bad file {file!r}")
            path = root / name / file
            if not path.is_file():
                raise DiladiffError(f"{root}: the {name} is incomplete: {path} not found")
    for c in COMPONENTS:  # cheap, and a broken config.json is worth its own message
        read_config(root / c.folder)
    for name, record in components.items():
        for file, info in record["files"].items():
            path, size = root / name / file, (info or {}).get("size")
            if path.stat().st_size != size:
                raise DiladiffError(
                    f"{path} is {path.stat().st_size} bytes, {size} in {MANIFEST}: the export "
                    "is damaged or was edited"
                )
    return components


def _local_export(source: str) -> Path:
    """The export directory of ``source``: itself, or the hub snapshot of its id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DiladiffError(f"{source} is a file, not an exported pipeline directory")
    if hub.looks_like_path(source):  # not a hub id: say so rather than blame the hub
        raise DiladiffError(f"no exported pipeline at {source}: no such directory")

    def download(repo_id: str, **kw: Any) -> str:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=repo_id, **kw)

    return Path(hub.from_pretrained(download, source, {}))


def _read_manifest(root: Path) -> bytes:
    path = root / MANIFEST
    if not path.is_file():
        raise DiladiffError(f"{root} is not an exported diladiff pipeline: no {MANIFEST}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError as err:
        raise DiladiffError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DiladiffError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DiladiffError(
            f"{path} is format version {manifest.get('version')}; this diladiff reads "
            f"version {FORMAT_VERSION}"
        )
    return raw


def read_config(folder: Path) -> CheckpointMeta:
    """The metadata in an exported component's ``config.json``.

    Raises:
        DiladiffError: it cannot be read, is not valid JSON or not diladiff metadata.
    """
    config = folder / CONFIG
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DiladiffError(f"{config} is not valid JSON ({first})") from None
    except OSError as err:
        raise DiladiffError(f"cannot read {config}: {err.strerror or err}") from None
    return parse_meta(doc, source=str(config))


def read_component(folder: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The tensors and metadata of an exported component folder (exactly the
    checkpoint's: :func:`~diladiff_cli.checkpoint.save_weights` of them writes the
    original file byte for byte).

    Raises:
        DiladiffError: ``config.json`` is not valid JSON or not diladiff metadata, or
            ``model.safetensors`` cannot be read.
    """
    meta = read_config(folder)
    try:
        tensors = safetensors.torch.load_file(str(folder / WEIGHTS), device="cpu")
    except Exception as err:  # safetensors' own error types (a truncated copy...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DiladiffError(f"{folder / WEIGHTS}: unreadable tensors ({reason})") from None
    return tensors, meta


def relocate(
    meta: CheckpointMeta, *, tokenizer: Path, moved: Mapping[str, tuple[str, str]]
) -> CheckpointMeta:
    """``meta`` pointing at the rebuilt files (the module doc says which entries).

    Args:
        meta: the exported metadata.
        tokenizer: the rebuilt tokenizer directory.
        moved: original sha256 -> (path, sha256) of the rebuilt checkpoint.
    """

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items()}
            if "path" in value and value.get("sha256") in moved:
                out["path"], out["sha256"] = moved[value["sha256"]]
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    extra = walk(meta.extra)
    if "tokenizer" in extra:
        extra["tokenizer"] = str(tokenizer)
    return CheckpointMeta(
        stage=meta.stage, step=meta.step, config=meta.config, extra=extra, versions=meta.versions
    )


def _verify(root: Path, name: str, record: Mapping[str, Any]) -> None:
    for file, info in (record.get("files") or {}).items():
        path = root / name / file
        if file_sha256(path) != (info or {}).get("sha256"):
            raise DiladiffError(
                f"{path} does not match the sha256 in {MANIFEST}: the export is damaged or "
                "was edited"
            )


def _rebuild(root: Path, components: Mapping[str, Any], entry: Path) -> None:
    """Rebuild the checkpoints of the export at ``root`` into ``entry`` (whole or not at
    all: a temporary directory renamed into place)."""
    with writing(entry):
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        with writing(staging):
            _verify(root, TOKENIZER, components[TOKENIZER])
            _copy_files(root / TOKENIZER, staging / TOKENIZER)
            moved: dict[str, tuple[str, str]] = {}
            for c in COMPONENTS:
                tensors, meta = read_component(root / c.folder)  # JSON errors first
                _verify(root, c.folder, components[c.folder])
                if meta.stage != c.stage:
                    raise DiladiffError(
                        f"{root / c.folder / CONFIG} is a '{meta.stage}' checkpoint, expected "
                        f"the {c.label} ('{c.stage}')"
                    )
                meta = relocate(meta, tokenizer=entry / TOKENIZER, moved=moved)
                save_weights(staging / c.file, tensors, meta)
                original = components[c.folder].get("sha256")
                if original:
                    moved[original] = (str(entry / c.file), file_sha256(staging / c.file))
            if AR in components:
                _verify(root, AR, components[AR])
                _copy_files(root / AR, staging / JUDGE)
            staging.chmod(0o755)
            try:
                staging.rename(entry)
            except OSError:  # rebuilt meanwhile by another process: the same content
                if not entry.is_dir():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def measured_from_sweep(pareto_csv: str | Path) -> dict[str, dict[str, Any]]:
    """The quality to record in the model card from a sweep's ``pareto.csv``: the
    default DiLaDiff student's cells (``diladiff``, no exp-6 variant) by Ncont and Ndisc,
    their exact oracle NLL, GenPPL, MAUVE and seconds per sample (means over seeds).

    Raises:
        DiladiffError: no such file, or no DiLaDiff cell in it.
    """
    path = Path(pareto_csv)
    if not path.is_file():
        raise DiladiffError(f"no sweep results at {pareto_csv}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    measured = {}
    for row in rows:
        if row.get("model") != "diladiff" or row.get("distill"):
            continue
        values = {m: float(row[m]) for m in _MEASURES if row.get(m)}
        measured[f"DiLaDiff, Ncont {row['ncont']}, Ndisc {row['ndisc']}"] = values
    if not measured:
        raise DiladiffError(f"{pareto_csv} has no DiLaDiff cell")
    return measured


_MEASURES = ("oracle_nll", "genppl", "mauve", "seconds_per_sample")
