"""Checkpoints are data, never pickled code.

* Weights: one safetensors file at the user's path (``--out ladiff.pt`` is fine:
  the suffix does not decide the format). Its metadata holds a JSON document with
  the stage, step, the stage's config and the library versions.
* Resume state: a directory beside it (``<path>.state/``) with the raw weights,
  EMA, optimizer tensors and RNG states in ``state.safetensors`` and the
  scalars in ``state.json``.

Every write is atomic: a temporary file (or directory) is renamed into place, so an
interrupted write never leaves a half-written checkpoint behind; the temporaries a
killed writer leaves are removed by the next run (:func:`remove_orphans`). A write
the environment refuses raises :class:`~diladiff_cli.files.OutputError` (one line);
a file that cannot be read as a checkpoint raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from diladiff_cli import __version__
from diladiff_cli.errors import CheckpointError
from diladiff_cli.files import atomic_write_bytes, remove_temporaries, write_synced, writing

META_KEY = "diladiff"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a weights file says about itself.

    Attributes:
        stage: which stage wrote it (``mdlm``, ``ae``, ``prior``, ``distill``...).
        step: optimizer steps taken.
        config: the stage's config as plain data (rebuilds the model).
        extra: anything else a stage needs to use the weights (vocabulary, mask id,
            tokenizer directory, latent statistics...).
        versions: library versions that wrote it.
    """

    stage: str
    step: int
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """Loaded weights: ``tensors`` maps parameter names to CPU tensors."""

    tensors: dict[str, torch.Tensor]
    meta: CheckpointMeta
    path: Path


def _versions() -> dict[str, str]:
    return {"diladiff": __version__, "torch": torch.__version__}


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Atomically write weights and metadata as one safetensors file."""
    doc = meta_document(meta)
    data = safetensors.torch.save(_contiguous(tensors), metadata={META_KEY: json.dumps(doc)})
    atomic_write_bytes(Path(path), data)


def meta_document(meta: CheckpointMeta) -> dict[str, Any]:
    """The metadata as the JSON document a weights file holds (versions filled in when
    ``meta`` has none); :func:`parse_meta` reads it back."""
    return {
        "stage": meta.stage,
        "step": meta.step,
        "config": meta.config,
        "extra": meta.extra,
        "versions": meta.versions or _versions(),
    }


def parse_meta(doc: Any, *, source: str) -> CheckpointMeta:
    """The :class:`CheckpointMeta` of a metadata document (:func:`meta_document`).

    Raises:
        CheckpointError: a document without the stage, step or config, or of wrong
            types (one line naming ``source``).
    """
    try:
        return CheckpointMeta(
            stage=str(doc["stage"]),
            step=int(doc["step"]),
            config=dict(doc["config"]),
            extra=dict(doc.get("extra", {})),
            versions=dict(doc.get("versions", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{source}: malformed diladiff metadata ({type(err).__name__}: {err})"
        ) from None


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata of a weights file (cheap: no tensors are loaded)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with path.open("rb"):  # an unreadable file is not a foreign one: say which it is
            pass
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as err:  # safetensors raises its own error types for foreign files
        # its reason tells a truncated copy ("file not fully covered") from a foreign file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = reason.removeprefix("Error while deserializing header: ")
        what = "empty" if path.stat().st_size == 0 else f"not a whole safetensors file ({reason})"
        raise CheckpointError(f"{path} is not a diladiff checkpoint: {what}") from None
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without diladiff metadata")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: its diladiff metadata is not valid JSON") from None
    return parse_meta(doc, source=str(path))


def tensor_names(path: str | Path) -> set[str]:
    """The names of the tensors of a weights file (cheap: the header only; an unreadable
    file gives the one-line error of :func:`read_meta`)."""
    read_meta(path)
    with safetensors.safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def load_checkpoint(path: str | Path, *, stage: str | Iterable[str]) -> Checkpoint:
    """Load a weights file written by ``stage`` (or one of several stages).

    Raises:
        CheckpointError: missing file, foreign file, or a checkpoint of another stage.
    """
    path = Path(path)
    meta = read_meta(path)
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    if meta.stage not in stages:
        raise CheckpointError(
            f"{path} is a '{meta.stage}' checkpoint, expected {' or '.join(repr(s) for s in stages)}"
        )
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors' own error types (a truncated copy...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: unreadable tensors ({reason})") from None
    return Checkpoint(tensors=tensors, meta=meta, path=path)


def layout_difference(module: torch.nn.Module, names: Iterable[str]) -> str | None:
    """How the tensor ``names`` of a weights file differ from ``module``'s state dict
    ("2 missing and 30 unexpected tensors (missing 'x')"); None when they are the same."""
    own, found = set(module.state_dict()), set(names)
    missing, unexpected = sorted(own - found), sorted(found - own)
    if not missing and not unexpected:
        return None
    first = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
    return f"{len(missing)} missing and {len(unexpected)} unexpected tensors ({first})"


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error on any mismatch."""
    own = module.state_dict()
    difference = layout_difference(module, tensors)
    if difference is not None:
        raise CheckpointError(f"{source} does not fit the model: {difference}")
    for name, tensor in tensors.items():
        if own[name].shape != tensor.shape:
            raise CheckpointError(
                f"{source} does not fit the model: '{name}' has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[name].shape)}"
            )
    module.load_state_dict(tensors, strict=True)


# ----------------------------------------------------------------------------- resume state


def state_dir(weights_path: str | Path) -> Path:
    """Where the resume state of a weights file lives."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.name + ".state")


@dataclass
class TrainState:
    """Everything beyond the weights that an exact resume needs.

    Attributes:
        step: optimizer steps completed.
        model: raw (non-EMA) weights.
        ema: EMA weights (empty when EMA is off).
        optimizer: ``optimizer.state_dict()``.
        rng: named RNG states (``cpu``, ``cuda``) as uint8 tensors.
        info: JSON-able scalars (config fingerprint, world size...).
    """

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    info: dict[str, Any]


def save_train_state(weights_path: str | Path, state: TrainState) -> None:
    """Atomically write the resume state directory beside ``weights_path``."""
    final = state_dir(weights_path)
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model.{k}": v for k, v in state.model.items()})
    tensors.update({f"ema.{k}": v for k, v in state.ema.items()})
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state.optimizer["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                opt_scalars.setdefault(str(idx), {})[key] = value
    doc = {
        "step": state.step,
        "param_groups": state.optimizer["param_groups"],
        "opt_scalars": opt_scalars,
        "info": state.info,
    }
    # Serialised in memory (like the weights) rather than with save_file, whose I/O
    # failures are not OSErrors: a full disk must read as one.
    data = safetensors.torch.save(_contiguous(tensors))
    old = final.with_name(final.name + ".old")
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            write_synced(tmp / "state.safetensors", data)
            write_synced(tmp / "state.json", json.dumps(doc).encode())
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(old, ignore_errors=True)


def load_train_state(weights_path: str | Path) -> TrainState | None:
    """The resume state beside ``weights_path``, or ``None`` when there is none.

    Raises:
        CheckpointError: the state is there but unreadable (one line naming it).
    """
    final = state_dir(weights_path)
    if not (final / "state.json").is_file():
        old = final.with_name(final.name + ".old")  # killed between the two renames
        if not (old / "state.json").is_file():
            return None
        final = old
    try:
        doc = json.loads((final / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(final / "state.safetensors"))
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "rng": {}}
        opt_state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            kind, rest = name.split(".", 1)
            if kind == "opt":
                idx, key = rest.split(".", 1)
                opt_state.setdefault(int(idx), {})[key] = tensor
            else:
                groups[kind][rest] = tensor
        for idx, scalars in doc["opt_scalars"].items():
            opt_state.setdefault(int(idx), {}).update(scalars)
        return TrainState(
            step=int(doc["step"]),
            model=groups["model"],
            ema=groups["ema"],
            optimizer={"state": opt_state, "param_groups": doc["param_groups"]},
            rng=groups["rng"],
            info=dict(doc["info"]),
        )
    except Exception as err:  # JSON, safetensors' own error types, missing keys
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"unreadable resume state in {final} ({reason}); pass --no-resume to start over"
        ) from None


def remove_orphans(weights_path: str | Path) -> list[Path]:
    """Remove what runs killed mid-write left beside ``weights_path``: temporary copies
    of the weights, temporary state directories, and a previous state that a finished
    swap no longer needs (kept when it is the only state: :func:`load_train_state`
    resumes from it). Only safe while holding the output's lock.

    Returns:
        The paths removed.
    """
    final = state_dir(weights_path)
    removed = remove_temporaries(weights_path) + remove_temporaries(final, suffix="")
    old = final.with_name(final.name + ".old")
    if old.exists() and (final / "state.json").is_file():
        with writing(old):
            shutil.rmtree(old)
        removed.append(old)
    return removed
