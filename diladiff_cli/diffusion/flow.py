"""Continuous diffusion on latents (LaDiff): the Gaussian process, the LDM loss, ODE samplers.

Conventions (``shared/notes/anchors.md``, MeanFlow section): t = 1 is noise, t = 0 is
data, and the forward kernel is ``z_t = alpha(t) z + sigma(t) eps`` with
``eps ~ N(0, I)``. The default ``linear`` schedule is alpha = 1 - t, sigma = t, so
``z_t = (1 - t) z + t eps`` and the velocity is ``v = dz_t/dt = eps - z``. The
sampler integrates the probability-flow ODE ``dz/dt = v(z, t)`` from t = 1 to t = 0.

The network may predict the clean latent (``x0``, the paper's "LDM" loss), the
noise (``eps``) or the velocity (``v``); every prediction is turned into one
velocity by :meth:`GaussianFlow.to_velocity`, so the samplers and the distillation
only ever see velocities. Network, process and sampler are separate objects: a
sampler takes any ``velocity(z, t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diladiff_cli.config.diffusion import (
    FlowConfig,
    Prediction,
    Schedule,
    Solver,
    TimeSamplingConfig,
)
from diladiff_cli.errors import DiladiffError
from diladiff_cli.objective import LossOutput, StepContext

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(z (B, N, D), t (B,)) -> (B, N, D)``."""


def sample_times(cfg: TimeSamplingConfig, ctx: StepContext) -> torch.Tensor:
    """``(B,)`` training times for the micro-batch, from the step's deterministic noise."""
    if cfg.kind == "uniform":
        return ctx.uniform()
    return torch.sigmoid(cfg.mean + cfg.std * ctx.normal())


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it already is (float64 checks stay exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def expand_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcasting against ``like``, in like's dtype."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class GaussianFlow:
    """The process z_t = alpha(t) z + sigma(t) eps and the conversions between predictions.

    Args:
        schedule: ``linear`` or ``cosine``.
        prediction: what the network outputs: ``x0``, ``eps`` or ``v``.
        t_min: guard of the conversions near t = 0 (x0) and t = 1 (eps).
    """

    def __init__(
        self, *, schedule: Schedule = "linear", prediction: Prediction = "x0", t_min: float = 1e-3
    ) -> None:
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule {schedule!r}")
        if prediction not in ("x0", "eps", "v"):
            raise ValueError(f"unknown prediction {prediction!r}")
        self.schedule = schedule
        self.prediction = prediction
        self.t_min = t_min

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> GaussianFlow:
        return cls(schedule=cfg.schedule, prediction=cfg.prediction, t_min=cfg.t_min)

    def coefficients(
        self, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha, sigma, d alpha/dt, d sigma/dt)`` at t (same shape as t)."""
        if self.schedule == "linear":
            one = torch.ones_like(t)
            return 1 - t, t, -one, one
        half_pi = math.pi / 2
        return (
            torch.cos(half_pi * t),
            torch.sin(half_pi * t),
            -half_pi * torch.sin(half_pi * t),
            half_pi * torch.cos(half_pi * t),
        )

    def noise(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The forward kernel: ``z_t = alpha(t) z + sigma(t) eps``; z, eps ``(B, N, D)``, t ``(B,)``."""
        alpha, sigma, _, _ = self.coefficients(expand_time(t, z))
        return alpha * z + sigma * eps

    def velocity(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The conditional velocity d z_t / dt = alpha'(t) z + sigma'(t) eps (linear: eps - z)."""
        _, _, d_alpha, d_sigma = self.coefficients(expand_time(t, z))
        return d_alpha * z + d_sigma * eps

    def target(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses: z (x0), eps, or the velocity (v)."""
        if self.prediction == "x0":
            return z
        if self.prediction == "eps":
            return eps
        return self.velocity(z, eps, t)

    def to_velocity(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Turn a network output into the velocity of the probability-flow ODE.

        With x0-hat D: eps-hat = (z_t - alpha D) / sigma and v = alpha' D + sigma' eps-hat
        (linear: v = (z_t - D) / t). With eps-hat: D = (z_t - sigma eps-hat) / alpha and
        the same v (linear: v = (eps-hat - z_t) / (1 - t)). Both are exact where they
        are defined; the guard ``t_min`` keeps the divisions finite at the ends.

        Args:
            out: ``(B, N, D)`` network output in this flow's parameterisation.
            z_t: ``(B, N, D)`` the noisy input.
            t: ``(B,)`` times.

        Returns:
            ``(B, N, D)`` velocity, in the dtype of ``out`` promoted with ``z_t``.
        """
        if self.prediction == "v":
            return out
        tb = expand_time(t, z_t)
        if self.prediction == "x0":
            alpha, sigma, d_alpha, d_sigma = self.coefficients(tb.clamp(min=self.t_min))
            return d_alpha * out + d_sigma * (z_t - alpha * out) / sigma
        alpha, sigma, d_alpha, d_sigma = self.coefficients(tb.clamp(max=1 - self.t_min))
        return d_alpha * (z_t - sigma * out) / alpha + d_sigma * out


def velocity_of(model: nn.Module, flow: GaussianFlow) -> VelocityFn:
    """The instantaneous velocity ``v(z, t)`` of a one-time network (the teacher), >= fp32."""

    def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow.to_velocity(at_least_fp32(model(z, t)), z, t)

    return velocity


@dataclass(frozen=True)
class LatentBatch:
    """A micro-batch of clean latents.

    Attributes:
        latents: ``(B, N, D)`` float latents (normalised as the autoencoder wrote them).
    """

    latents: torch.Tensor

    def to(self, device: torch.device) -> LatentBatch:
        return LatentBatch(latents=self.latents.to(device, non_blocking=True))


class LatentDiffusionLoss:
    """The LDM L2 loss, an objective for the training loop.

    ``loss = mean ||f(z_t, t) - target||^2`` over every entry of the micro-batch,
    where the target is z (x0), eps or the velocity, as the flow's ``prediction``
    says (unweighted, each in its own space). Times come from ``times``; all noise
    from the :class:`StepContext`.

    Args:
        flow: the process.
        times: the training-time distribution.
    """

    def __init__(self, *, flow: GaussianFlow, times: TimeSamplingConfig) -> None:
        self.flow = flow
        self.times = times

    def __call__(self, model: nn.Module, batch: LatentBatch, ctx: StepContext) -> LossOutput:
        """Loss of one micro-batch; ``model(z_t (B, N, D), t (B,)) -> (B, N, D)``.

        Returns:
            The loss and the metrics ``mse`` (equal to the loss) and
            ``v_mse`` (the error of the implied velocity, the quantity the sampler uses).
        """
        z = at_least_fp32(batch.latents)  # (B, N, D)
        t = sample_times(self.times, ctx).to(z)  # (B,)
        eps = ctx.normal(*z.shape[1:]).to(z)  # (B, N, D)
        z_t = self.flow.noise(z, t, eps)
        out = at_least_fp32(model(z_t, t))
        loss = (out - self.flow.target(z, eps, t)).pow(2).mean()
        with torch.no_grad():
            v_err = self.flow.to_velocity(out, z_t, t) - self.flow.velocity(z, eps, t)
            metrics = {"mse": loss.detach(), "v_mse": v_err.pow(2).mean()}
        return LossOutput(loss=loss, metrics=metrics)


# ----------------------------------------------------------------------------- samplers


@dataclass
class ODESample:
    """What an ODE sampler returns.

    Attributes:
        latents: ``(B, N, D)`` the state at t = 0.
        forward_passes: velocity evaluations (network forward passes) made.
        steps: steps of the time grid (adaptive solvers: accepted steps, if known,
            else 0).
    """

    latents: torch.Tensor
    forward_passes: int
    steps: int


def time_grid(
    steps: int, *, device: torch.device | str = "cpu", dtype=torch.float32
) -> torch.Tensor:
    """``(steps + 1,)`` uniform grid from t = 1 down to t = 0."""
    if steps < 1:
        raise DiladiffError(f"the number of continuous steps (--ncont) must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)


@torch.no_grad()
def sample_ode(
    velocity: VelocityFn,
    noise: torch.Tensor,
    *,
    steps: int,
    method: Solver = "heun",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ODESample:
    """Integrate dz/dt = v(z, t) from t = 1 (``noise``) to t = 0.

    * ``euler``: ``steps`` evaluations, global error O(1/steps).
    * ``heun``: the explicit trapezoid (Heun's second-order method), except that the
      step ending at t = 0 is an Euler step as in EDM (Karras et al. 2022, Alg. 1):
      x0/eps conversions are singular at t = 0, and one final first-order step keeps
      the global error O(1/steps^2). ``2 * steps - 1`` evaluations.
    * ``dopri5``: adaptive Dormand-Prince from torchdiffeq (optional dependency), an
      accuracy reference; ``steps`` is ignored.

    The state stays in the dtype of ``noise`` (pass float32; autocast is the
    caller's business, :func:`diladiff_cli.prior.sample_latents` turns it off).

    Args:
        velocity: ``v(z (B, N, D), t (B,)) -> (B, N, D)``.
        noise: ``(B, N, D)`` the state at t = 1.
        steps: grid steps (>= 1).
        method: ``euler``, ``heun`` or ``dopri5``.
        rtol: relative tolerance (dopri5).
        atol: absolute tolerance (dopri5).

    Returns:
        An :class:`ODESample`.
    """
    if method == "dopri5":
        return _sample_dopri5(velocity, noise, rtol=rtol, atol=atol)
    if method not in ("euler", "heun"):
        raise DiladiffError(f"unknown ODE solver {method!r} (expected euler, heun or dopri5)")
    grid = time_grid(steps, device=noise.device, dtype=noise.dtype)
    z, passes = integrate(velocity, noise, grid, method=method)
    return ODESample(latents=z, forward_passes=passes, steps=steps)


@torch.no_grad()
def integrate(
    velocity: VelocityFn, z: torch.Tensor, grid: torch.Tensor, *, method: Solver = "heun"
) -> tuple[torch.Tensor, int]:
    """Follow dz/dt = v(z, t) along a decreasing time ``grid`` (Euler or Heun; a step
    that ends at t = 0 is an Euler step, see :func:`sample_ode`).

    Returns:
        ``(z at grid[-1], velocity evaluations)``.
    """
    batch = z.shape[0]
    ends = grid.tolist()  # on the host once: no device sync per step
    passes = 0
    for i in range(len(grid) - 1):
        t, s = grid[i], grid[i + 1]
        v = velocity(z, t.expand(batch)).to(z.dtype)
        passes += 1
        z_next = z + (s - t) * v  # Euler predictor (s < t: moving towards data)
        if method == "heun" and ends[i + 1] != 0:
            v_next = velocity(z_next, s.expand(batch)).to(z.dtype)
            passes += 1
            z_next = z + (s - t) * 0.5 * (v + v_next)
        z = z_next
    return z, passes


def _sample_dopri5(
    velocity: VelocityFn, noise: torch.Tensor, *, rtol: float, atol: float
) -> ODESample:
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise DiladiffError(
            "the dopri5 reference solver needs torchdiffeq (pip install torchdiffeq)"
        ) from None
    batch = noise.shape[0]
    passes = 0

    def f(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        nonlocal passes
        passes += 1
        return velocity(z, t.expand(batch)).to(z.dtype)

    times = torch.tensor([1.0, 0.0], device=noise.device, dtype=noise.dtype)
    path = odeint(f, noise, times, method="dopri5", rtol=rtol, atol=atol)
    return ODESample(latents=path[-1], forward_passes=passes, steps=0)
