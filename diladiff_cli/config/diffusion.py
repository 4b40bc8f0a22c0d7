"""The continuous latent process (flow path, time sampling) and MeanFlow/TVM distillation
settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diladiff_cli.config._checks import fields_in, unit_interval

Schedule = Literal["linear", "cosine"]
Prediction = Literal["x0", "eps", "v"]
Solver = Literal["euler", "heun", "dopri5"]


@dataclass(frozen=True)
class FlowConfig:
    """The Gaussian process and what the network predicts.

    Attributes:
        schedule: ``linear`` (alpha = 1 - t, sigma = t; rectified flow / MeanFlow) or
            ``cosine`` (alpha = cos(pi t / 2), sigma = sin(pi t / 2)).
        prediction: ``x0`` (clean latent, the LDM loss), ``eps`` (noise) or ``v``
            (the velocity alpha' z + sigma' eps).
        t_min: guard of the conversions to a velocity: x0 uses sigma(max(t, t_min)),
            eps uses alpha(min(t, 1 - t_min)), where the exact formulas divide by 0.
    """

    schedule: Schedule = "linear"
    prediction: Prediction = "x0"
    t_min: float = 1e-3

    def __post_init__(self) -> None:
        fields_in(self, "t_min", gt=0.0, lt=0.5)


@dataclass(frozen=True)
class TimeSamplingConfig:
    """Training times of the prior: ``uniform`` on [0, 1) or ``logit_normal``:
    t = sigmoid(mean + std * n), n ~ N(0, 1)."""

    kind: Literal["uniform", "logit_normal"] = "uniform"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        fields_in(self, "mean")
        fields_in(self, "std", gt=0.0)


@dataclass(frozen=True)
class TimePairConfig:
    """How (t, r) are drawn: two independent logit-normal times, t the larger, r the
    smaller; then r = t on a share of the batch (plain velocity distillation there).

    DiLaDiff compares LogitNormal(-1, 1) and LogitNormal(-1, 2); MeanFlow uses
    r = t on 75 % of the batch.

    Attributes:
        mean: logit-normal location.
        std: logit-normal scale.
        equal_share: probability that r = t.
    """

    mean: float = -1.0
    std: float = 1.0
    equal_share: float = 0.75

    def __post_init__(self) -> None:
        fields_in(self, "mean")
        fields_in(self, "std", gt=0.0)
        unit_interval(self, "equal_share")


@dataclass(frozen=True)
class AdaptiveWeightConfig:
    """MeanFlow's adaptive loss weight w = 1 / (err + c)^p on the per-sample error
    (stop-gradient); p = 0 is the plain squared error."""

    p: float = 1.0
    c: float = 1e-3

    def __post_init__(self) -> None:
        fields_in(self, "p", ge=0.0)
        fields_in(self, "c", gt=0.0)
