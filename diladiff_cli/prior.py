"""Stages 2 and 3: the latent prior (LaDiff, `train-prior`) and its self-distillation
(DiLaDiff, `distill`), plus the latent sampler that the hybrid `sample` calls.

This module only wires data, networks, processes and checkpoints together:

* network: :class:`~diladiff_cli.models.latent_dit.LatentDiT`;
* process, LDM loss and ODE samplers: :mod:`diladiff_cli.diffusion.flow`;
* MeanFlow / TVM objectives and the few-step sampler: :mod:`diladiff_cli.diffusion.meanflow`;
* the loop: :func:`diladiff_cli.train.train`.

Latents come from `diladiff encode` (a directory with ``train/`` and ``valid/``
splits, see :mod:`diladiff_cli.latent_shards`), or are encoded on the fly by the frozen
autoencoder when no directory is given. A prior checkpoint (stage ``prior``)
records the latent shape, the normalisation and the sha256 of the autoencoder
checkpoint the latents came from, so that `distill` and sampling refuse latents of
another autoencoder. A student checkpoint (stage ``distill``) records its teacher
(path, sha256), the objective and the (t, r) distribution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diladiff_cli.checkpoint import CheckpointMeta, load_checkpoint, load_into, read_meta
from diladiff_cli.config.diffusion import FlowConfig
from diladiff_cli.config.models import LatentDiTConfig
from diladiff_cli.config.stages import DistillStageConfig, PriorStageConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.diffusion.flow import (
    GaussianFlow,
    LatentBatch,
    LatentDiffusionLoss,
    sample_ode,
    velocity_of,
)
from diladiff_cli.diffusion.meanflow import (
    MeanFlowLoss,
    TVMLoss,
    average_velocity,
    sample_few_step,
)
from diladiff_cli.distributed import Runtime, synchronize
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.latent_shards import LatentIndex, LatentShards, file_sha256
from diladiff_cli.models.latent_dit import LatentDiT
from diladiff_cli.structs import from_dict, to_dict
from diladiff_cli.train import ExampleSource, Reporter, TrainResult, seed_everything, train

PRIOR = "prior"
DISTILL = "distill"


# ----------------------------------------------------------------------------- data


class LatentSource:
    """An :class:`~diladiff_cli.train.ExampleSource` over an in-memory latent tensor.

    Args:
        latents: ``(count, N, D)`` latents.
    """

    def __init__(self, latents: torch.Tensor) -> None:
        if latents.dim() != 3:
            raise DiladiffError(f"latents must be (count, N, D), got shape {tuple(latents.shape)}")
        self.latents = latents.float()

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, indices: np.ndarray) -> LatentBatch:
        return LatentBatch(latents=self.latents[torch.as_tensor(indices)])


class EncodingSource:
    """Latents of a prepared split, encoded on the fly by the frozen autoencoder.

    Args:
        ae: the loaded autoencoder (:func:`diladiff_cli.ae.load_autoencoder`).
        data_dir: the prepared data.
        split: ``train`` or ``valid``.
    """

    def __init__(self, *, ae: Any, data_dir: str | Path, split: str) -> None:
        from diladiff_cli import hub
        from diladiff_cli.ae import TwoViewBlocks
        from diladiff_cli.data import load_data_info

        self.ae = ae
        self.blocks = TwoViewBlocks(
            data_dir=data_dir,
            split=split,
            decoder_tokenizer=hub.load_tokenizer(load_data_info(data_dir).tokenizer_dir),
            encoder_tokenizer=ae.encoder_tokenizer,
            max_len=ae.config.encoder.max_len,
        )

    def __len__(self) -> int:
        return len(self.blocks)

    def batch(self, indices: np.ndarray) -> LatentBatch:
        return LatentBatch(latents=self.ae.encode_view(self.blocks.batch(indices)).cpu())


@dataclass
class LatentData:
    """The latents a stage trains on and where they came from.

    Attributes:
        train: training split.
        valid: held-out split (None when absent).
        shape: ``(N, D)`` of one latent.
        record: what a checkpoint stores about them: ``shape``, ``normalization``
            (kind and sha256 of its statistics), ``autoencoder`` (path, sha256,
            step), ``latents`` (the directory, or null when encoded on the fly).
    """

    train: ExampleSource
    valid: ExampleSource | None
    shape: tuple[int, int]
    record: dict[str, Any]


def _normalization_record(norm: dict[str, Any]) -> dict[str, Any]:
    """The normalisation kind plus a hash of its statistics (not the statistics: at
    paper scale they would be megabytes of JSON in the weights' header)."""
    stats = {k: v for k, v in norm.items() if k != "kind"}
    digest = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:16]
    return {"kind": norm.get("kind", "none"), "stats_sha256": digest if stats else None}


def open_latents(directory: str | Path, *, autoencoder: str | Path | None = None) -> LatentData:
    """Open `encode`'s output directory: ``train/`` (required) and ``valid/`` (optional).

    Args:
        directory: the latent directory.
        autoencoder: when given and present on disk, the checkpoint the latents must
            come from (sha256 check, one-line error on mismatch).

    Raises:
        DiladiffError: no latents there, or latents of another autoencoder.
    """
    directory = Path(directory)
    check = autoencoder if autoencoder is not None and Path(autoencoder).is_file() else None
    train_split = LatentShards(directory / "train", autoencoder=check)
    index: LatentIndex = train_split.index
    valid = None
    if (directory / "valid" / "index.json").is_file():
        valid_split = LatentShards(directory / "valid", autoencoder=check)
        if valid_split.index.autoencoder.get("sha256") != index.autoencoder.get("sha256"):
            raise DiladiffError(
                f"{directory}: the train and valid latents come from different autoencoders"
            )
        valid = LatentSource(valid_split.all())
    return LatentData(
        train=LatentSource(train_split.all()),
        valid=valid,
        shape=tuple(index.shape),
        record={
            "shape": list(index.shape),
            "normalization": _normalization_record(index.normalization),
            "autoencoder": dict(index.autoencoder),
            "latents": str(directory.resolve()),
        },
    )


def encode_on_the_fly(
    autoencoder: str | Path, *, data_dir: str | Path, device: torch.device
) -> LatentData:
    """Latents encoded batch by batch by the frozen autoencoder (no `encode` needed)."""
    from diladiff_cli.ae import load_autoencoder

    ae = load_autoencoder(autoencoder, device=device)
    train_src = EncodingSource(ae=ae, data_dir=data_dir, split="train")
    valid_src = EncodingSource(ae=ae, data_dir=data_dir, split="valid")
    return LatentData(
        train=train_src,
        valid=valid_src,
        shape=tuple(ae.model.latent_shape),
        record={
            "shape": list(ae.model.latent_shape),
            "normalization": _normalization_record(ae.normalization()),
            "autoencoder": {"path": str(ae.path.resolve()), "sha256": ae.sha256, "step": ae.step},
            "latents": None,
        },
    )


def check_latent_shape(model: LatentDiTConfig, shape: tuple[int, int], *, source: str) -> None:
    if (model.num_latents, model.latent_dim) != tuple(shape):
        raise DiladiffError(
            f"{source}: the model is sized for ({model.num_latents}, {model.latent_dim}) latents, "
            f"the latents are {tuple(shape)}: set model.num_latents / model.latent_dim to match"
        )


# ----------------------------------------------------------------------------- stage 2


def fit_prior(
    *,
    cfg: PriorStageConfig,
    data: LatentData,
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train the prior on given latents (the core of `train-prior`; tests call it directly).

    Returns:
        The loop's :class:`~diladiff_cli.train.TrainResult`; the checkpoint is ``cfg.out``.
    """
    check_latent_shape(cfg.model, data.shape, source="prior.model")
    seed_everything(cfg.train.seed)
    model = LatentDiT.from_config(cfg.model)
    objective = LatentDiffusionLoss(flow=GaussianFlow.from_config(cfg.flow), times=cfg.time)
    meta = CheckpointMeta(stage=PRIOR, step=0, config=to_dict(cfg), extra=dict(data.record))
    return train(
        model=model,
        objective=objective,
        train_data=data.train,
        valid_data=data.valid,
        cfg=cfg.train,
        out=cfg.out,
        meta=meta,
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )


def train_prior(
    *,
    cfg: PriorStageConfig,
    data_dir: str | Path,
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> TrainResult:
    """`train-prior`: open the latents (or encode on the fly) and train the prior.

    Args:
        cfg: the stage config.
        data_dir: the prepared data (used only to encode on the fly).
        runtime: process topology and device.
        precision: autocast precision.
        resume: continue an interrupted run.
        reporter: progress sink.
    """
    if cfg.latents is not None:
        data = open_latents(cfg.latents, autoencoder=cfg.autoencoder)
    else:
        data = encode_on_the_fly(cfg.autoencoder, data_dir=data_dir, device=runtime.device)
    return fit_prior(
        cfg=cfg, data=data, runtime=runtime, precision=precision, resume=resume, reporter=reporter
    )


# ----------------------------------------------------------------------------- loading


@dataclass
class LatentModel:
    """A prior (teacher) or a distilled student, ready to sample.

    Attributes:
        kind: ``prior`` (probability-flow ODE) or ``distill`` (few-step MeanFlow sampler).
        model: the network in eval mode.
        net: its shape.
        flow: the process its output is read in.
        latent: the latent record (shape, normalisation, autoencoder sha256...).
        config: the stage config it was trained with (plain data).
        extra: the checkpoint's extra data.
        step: training steps.
        path: the checkpoint.
        ncont: its default number of continuous steps.
        method: its default solver (``few_step`` for a student).
    """

    kind: Literal["prior", "distill"]
    model: LatentDiT
    net: LatentDiTConfig
    flow: GaussianFlow
    latent: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any]
    step: int
    path: Path
    ncont: int
    method: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, D)`` of one latent."""
        return self.net.num_latents, self.net.latent_dim

    @property
    def autoencoder_sha256(self) -> str | None:
        return (self.latent.get("autoencoder") or {}).get("sha256")


def check_autoencoder(model: LatentModel, autoencoder: str | Path) -> None:
    """Raise unless ``model`` was trained on latents of exactly this autoencoder checkpoint.

    Raises:
        DiladiffError: one line naming both (the hybrid sampler calls it).
    """
    sha = file_sha256(autoencoder)
    if model.autoencoder_sha256 != sha:
        raise DiladiffError(
            f"{model.path} was trained on latents of another autoencoder "
            f"({model.latent.get('autoencoder', {}).get('path')}, sha256 "
            f"{str(model.autoencoder_sha256)[:12]}), not {autoencoder} (sha256 {sha[:12]})"
        )


def load_prior(path: str | Path, *, device: torch.device | str = "cpu") -> LatentModel:
    """Load a `train-prior` checkpoint.

    Raises:
        CheckpointError: missing, foreign, or not a ``prior`` checkpoint.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta.stage != PRIOR:
        raise CheckpointError(
            f"{path} is a '{meta.stage}' checkpoint, not a latent prior (train-prior writes one)"
        )
    cfg = from_dict(PriorStageConfig, meta.config, source=f"{path} metadata")
    model = LatentDiT.from_config(cfg.model)
    load_into(model, load_checkpoint(path, stage=PRIOR).tensors, source=str(path))
    return LatentModel(
        kind=PRIOR,
        model=model.to(device).eval(),
        net=cfg.model,
        flow=GaussianFlow.from_config(cfg.flow),
        latent=meta.extra,
        config=meta.config,
        extra=meta.extra,
        step=meta.step,
        path=path,
        ncont=cfg.sampler.ncont,
        method=cfg.sampler.method,
    )


def load_student(path: str | Path, *, device: torch.device | str = "cpu") -> LatentModel:
    """Load a `distill` checkpoint.

    Raises:
        CheckpointError: missing, foreign, or not a ``distill`` checkpoint.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta.stage != DISTILL:
        raise CheckpointError(
            f"{path} is a '{meta.stage}' checkpoint, not a distilled student (distill writes one)"
        )
    try:
        model_cfg = from_dict(LatentDiTConfig, meta.config["model"], source=f"{path} metadata")
        flow_cfg = from_dict(FlowConfig, meta.config["flow"], source=f"{path} metadata")
    except KeyError as err:
        raise CheckpointError(f"{path}: its metadata has no {err} config") from None
    model = LatentDiT.from_config(model_cfg)
    load_into(model, load_checkpoint(path, stage=DISTILL).tensors, source=str(path))
    return LatentModel(
        kind=DISTILL,
        model=model.to(device).eval(),
        net=model_cfg,
        flow=GaussianFlow.from_config(flow_cfg),
        latent=meta.extra.get("latent", {}),
        config=meta.config,
        extra=meta.extra,
        step=meta.step,
        path=path,
        ncont=int(meta.config.get("ncont", 5)),
        method="few_step",
    )


def load_latent_model(path: str | Path, *, device: torch.device | str = "cpu") -> LatentModel:
    """Load a prior or a student, whichever ``path`` holds."""
    stage = read_meta(path).stage
    if stage == DISTILL:
        return load_student(path, device=device)
    return load_prior(path, device=device)


# ----------------------------------------------------------------------------- stage 3


def student_config(teacher: LatentDiTConfig) -> LatentDiTConfig:
    """The student's shape: the teacher's, conditioned on a second time r."""
    return dataclasses.replace(teacher, two_times=True)


def init_student(teacher: LatentDiT, config: LatentDiTConfig) -> LatentDiT:
    """A two-time student with the teacher's weights (``config``: the teacher's shape);
    its (t - r) branch is zero, so it computes exactly the teacher's output for every r."""
    student = LatentDiT.from_config(student_config(config))
    own = student.state_dict()
    extra = sorted(k for k in own if k not in teacher.state_dict())
    if any(not k.startswith("dt_embed.") for k in extra):  # an architecture bug, not user error
        raise RuntimeError(f"student has unexpected tensors beyond the teacher's: {extra}")
    load_into(student, {**own, **teacher.state_dict()}, source="the teacher")
    return student


def _teacher_record(teacher: LatentModel) -> dict[str, Any]:
    return {
        "path": str(teacher.path.resolve()),
        "sha256": file_sha256(teacher.path),
        "step": teacher.step,
    }


def fit_student(
    *,
    cfg: DistillStageConfig,
    teacher: LatentModel,
    data: LatentData,
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Distil ``teacher`` on given latents (the core of `distill`; tests call it directly).

    Raises:
        DiladiffError: the latents come from another autoencoder than the teacher's,
            or have another shape.
    """
    check_latent_shape(teacher.net, data.shape, source=f"teacher {teacher.path}")
    data_sha = (data.record.get("autoencoder") or {}).get("sha256")
    if teacher.autoencoder_sha256 and data_sha != teacher.autoencoder_sha256:
        raise DiladiffError(
            f"the latents ({data.record.get('latents') or 'encoded on the fly'}) come from another "
            f"autoencoder (sha256 {str(data_sha)[:12]}) than the teacher {teacher.path} was "
            f"trained on (sha256 {teacher.autoencoder_sha256[:12]})"
        )
    seed_everything(cfg.train.seed)
    student = init_student(teacher.model.cpu(), teacher.net)
    loss_cls = MeanFlowLoss if cfg.objective == "meanflow" else TVMLoss
    objective = loss_cls(
        teacher=teacher.model, flow=teacher.flow, times=cfg.time, weighting=cfg.weighting
    )
    config = {
        **to_dict(cfg),
        "model": to_dict(student_config(teacher.net)),
        "flow": {
            "schedule": teacher.flow.schedule,
            "prediction": teacher.flow.prediction,
            "t_min": teacher.flow.t_min,
        },
    }
    extra = {
        "teacher": _teacher_record(teacher),
        "latent": teacher.latent,
        "objective": cfg.objective,
        "time": to_dict(cfg.time),
    }
    return train(
        model=student,
        objective=objective,
        train_data=data.train,
        valid_data=data.valid,
        cfg=cfg.train,
        out=cfg.out,
        meta=CheckpointMeta(stage=DISTILL, step=0, config=config, extra=extra),
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )


def distill(
    *,
    cfg: DistillStageConfig,
    data_dir: str | Path,
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> TrainResult:
    """`distill`: load the teacher, open its latents (or ``cfg.latents``) and distil it.

    Raises:
        CheckpointError: the teacher is not a prior checkpoint.
        DiladiffError: latents of another autoencoder or shape.
    """
    teacher = load_prior(cfg.teacher, device="cpu")
    directory = cfg.latents or teacher.latent.get("latents")
    if directory:
        data = open_latents(directory)
    else:
        ae = (teacher.latent.get("autoencoder") or {}).get("path")
        if not ae:
            raise DiladiffError(
                f"{cfg.teacher} records no latents nor autoencoder: set distill.latents"
            )
        data = encode_on_the_fly(ae, data_dir=data_dir, device=runtime.device)
    return fit_student(
        cfg=cfg,
        teacher=teacher,
        data=data,
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )


# ----------------------------------------------------------------------------- sampling


@dataclass
class LatentSamples:
    """Latents drawn from a prior or a student.

    Attributes:
        latents: ``(num_samples, N, D)`` float32 on CPU, in the autoencoder's
            normalised latent space (what its decoder takes).
        forward_passes: latent-network evaluations per batch (per trajectory).
        seconds: wall time of the sampling (loading excluded).
        kind: ``prior`` or ``distill``.
        method: ``euler``, ``heun``, ``dopri5`` or ``few_step``.
        ncont: continuous steps.
        seed: the noise seed.
    """

    latents: torch.Tensor
    forward_passes: int
    seconds: float
    kind: str
    method: str
    ncont: int
    seed: int


def sample_latents(
    model: LatentModel | str | Path,
    *,
    num_samples: int,
    ncont: int | None = None,
    method: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LatentSamples:
    """Draw latents: the probability-flow ODE of a prior, or the few-step sampler of a student.

    The noise of sample i is the same whatever ``batch_size`` (all of it is drawn
    up front on the CPU from ``seed``); the state is float32 with autocast off.

    Args:
        model: a loaded model or a checkpoint path (prior or student).
        num_samples: how many latents.
        ncont: continuous steps (default: the checkpoint's).
        method: prior only: ``euler``, ``heun`` or ``dopri5`` (default: the checkpoint's).
        batch_size: latents per batch.
        seed: noise seed.
        device: where to run.

    Raises:
        DiladiffError: ncont < 1, num_samples < 1, or a method the model cannot use.
    """
    device = torch.device(device)
    if not isinstance(model, LatentModel):
        model = load_latent_model(model, device=device)
    ncont = model.ncont if ncont is None else ncont
    if ncont < 1:
        raise DiladiffError(f"--ncont must be at least 1, got {ncont}")
    if num_samples < 1 or batch_size < 1:
        raise DiladiffError("num_samples and batch_size must be at least 1")
    method = method or model.method
    if model.kind == DISTILL and method != "few_step":
        raise DiladiffError(f"a distilled student samples with few_step, not {method}")
    net = model.model.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, *model.shape, generator=g)  # (n, N, D) float32
    out, passes = [], 0
    synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        for lo in range(0, num_samples, batch_size):
            z1 = noise[lo : lo + batch_size].to(device)
            if model.kind == DISTILL:
                result = sample_few_step(average_velocity(net, model.flow), z1, steps=ncont)
            else:
                result = sample_ode(velocity_of(net, model.flow), z1, steps=ncont, method=method)
            out.append(result.latents.float().cpu())
            passes = result.forward_passes
    synchronize(device)
    return LatentSamples(
        latents=torch.cat(out),
        forward_passes=passes,
        seconds=time.perf_counter() - t0,
        kind=model.kind,
        method=method,
        ncont=ncont,
        seed=seed,
    )


def held_out_latents(directory: str | Path, split: str = "valid") -> torch.Tensor:
    """All latents of one split of `encode`'s output, ``(count, N, D)``."""
    return LatentShards(Path(directory) / split).all().float()
