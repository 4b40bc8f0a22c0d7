"""Optimisation settings shared by every trainable stage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from diladiff_cli.config._checks import at_least, fields_in, not_empty, number, unit_interval
from diladiff_cli.structs import FieldError

Precision = Literal["fp32", "bf16", "fp16"]
WandbMode = Literal["disabled", "offline", "online"]


@dataclass(frozen=True)
class TensorBoardConfig:
    """TensorBoard event files of a run (needs the ``tensorboard`` package)."""

    enabled: bool = False
    dir: str | None = None  # the event directory; None: `<out stem>.tb/` beside the weights

    def __post_init__(self) -> None:
        not_empty(self, "dir")


@dataclass(frozen=True)
class WandbConfig:
    """A Weights & Biases run (needs the ``wandb`` package). ``offline`` needs no network
    or account: ``wandb sync <dir>/wandb/offline-run-*`` uploads it later."""

    mode: WandbMode = "disabled"
    project: str = "diladiff"
    entity: str | None = None  # team or user; None: the account's default
    name: str | None = None  # run name; None: the output's stem (`mdlm` for mdlm.pt)
    dir: str | None = None  # where `wandb/` is written; None: $WANDB_DIR, else the cwd

    def __post_init__(self) -> None:
        not_empty(self, "project", "entity", "name", "dir")


@dataclass(frozen=True)
class LoggingConfig:
    """Where the metrics go besides `<out stem>.metrics.jsonl`, which is always written.

    Not part of the run's identity: a run may resume with other logging settings.
    """

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one stage."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # global batch (sequences per optimizer step, all processes)
    micro_batch_size: int = (
        0  # per-process micro-batch; 0 = batch_size / world_size (no accumulation)
    )
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up, then the schedule
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema: float = 0.0  # EMA decay of the weights; 0 disables (the checkpoint then holds raw weights)
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    eval_batches: int = 4  # global batches of the validation split per evaluation
    ckpt_every: int = 100  # resume-state interval in steps
    seed: int = 0
    # torch.compile the model (Inductor: CUDA, or CPU with a C++ compiler); the first step
    # compiles (about a minute on 2 CPU cores), and a compiler failure falls back to eager.
    compile: bool = False
    # torch.use_deterministic_algorithms while training: on CPU two runs of one seed are
    # bit-identical whatever the thread count, at no measured cost; on CUDA it only warns
    # where an op has no deterministic kernel (reruns then differ in rounding).
    deterministic: bool = True
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # TensorBoard, W&B

    def __post_init__(self) -> None:
        # steps = 0 writes the initial weights in the stage's format (the benchmark inputs
        # do); a recipe refuses it (Recipe.__post_init__).
        at_least(self, 0, "steps", "micro_batch_size", "warmup_steps", "eval_every", "seed")
        at_least(self, 1, "batch_size", "log_every", "ckpt_every", "eval_batches")
        # Whatever the world size, the global batch splits into whole micro-batches only
        # if micro_batch_size divides it.
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise FieldError(
                "micro_batch_size",
                f"must divide batch_size={self.batch_size}, got {self.micro_batch_size}",
            )
        fields_in(self, "lr", gt=0.0)
        fields_in(self, "weight_decay", "grad_clip", ge=0.0)
        for i, beta in enumerate(self.betas):
            number(f"betas[{i}]", beta, ge=0.0, lt=1.0)
        unit_interval(self, "min_lr_ratio")
        fields_in(self, "ema", ge=0.0, lt=1.0)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.min_lr_ratio
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
