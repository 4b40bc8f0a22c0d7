"""Self-distillation of the latent prior (DiLaDiff, stage 3): MeanFlow and TVM.

The student u(z_t, t, r) predicts the *average* velocity of the teacher's
probability-flow ODE over [r, t] (r <= t, t = 1 is noise), so one step
``z_r = z_t - (t - r) u(z_t, t, r)`` follows the ODE exactly when u is exact
(MeanFlow, Geng et al. 2025). The student is a two-time
:class:`~diladiff_cli.models.latent_dit.LatentDiT` whose raw output is read in the
teacher's parameterisation (x0, eps or v) and turned into a velocity by the same
:meth:`~diladiff_cli.diffusion.flow.GaussianFlow.to_velocity`; initialised from the
teacher it therefore *is* the teacher's velocity, exact at r = t.

Two objectives, same student, same (t, r) sampling, same adaptive weighting:

* :class:`MeanFlowLoss` differentiates the identity (t - r) u = int_r^t v with
  respect to the start time t: ``u_tgt = v - (t - r) du/dt`` with the total
  derivative du/dt = v . d_z u + d_t u, a JVP along (v, 1, 0); stop-gradient on the
  target. Here v is the frozen teacher's velocity v_psi(z_t, t).
* :class:`TVMLoss` (Terminal Velocity Matching, Zhou et al. 2025) differentiates it
  with respect to the terminal time r, evaluated at the model's own end point.

Forward-mode AD (``torch.func.jvp``) cannot go through the fused attention kernels,
so every JVP runs inside :func:`~diladiff_cli.models.dit.math_attention`, in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from diladiff_cli.config.diffusion import AdaptiveWeightConfig, TimePairConfig
from diladiff_cli.diffusion.flow import (
    GaussianFlow,
    LatentBatch,
    at_least_fp32,
    expand_time,
    time_grid,
)
from diladiff_cli.models.dit import math_attention
from diladiff_cli.objective import LossOutput, StepContext, unwrap

AverageVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``u(z (B, N, D), t (B,), r (B,)) -> (B, N, D)``."""


def sample_time_pair(cfg: TimePairConfig, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, r)``, each ``(B,)``, with 0 < r <= t < 1, from the step's deterministic noise."""
    a = torch.sigmoid(cfg.mean + cfg.std * ctx.normal())
    b = torch.sigmoid(cfg.mean + cfg.std * ctx.normal())
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = ctx.uniform() < cfg.equal_share
    return t, torch.where(equal, t, r)


def average_velocity(model: nn.Module, flow: GaussianFlow) -> AverageVelocityFn:
    """The student's average velocity u(z, t, r): its raw output read in the flow's
    parameterisation (a differentiable function of z, t and r)."""

    def u(z: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return flow.to_velocity(at_least_fp32(model(z, t, r)), z, t)

    return u


def adaptive_loss(err: torch.Tensor, cfg: AdaptiveWeightConfig) -> torch.Tensor:
    """mean_b w_b err_b with w = sg(1 / (err + c)^p); ``err`` ``(B,)`` per-sample errors."""
    weight = (err.detach() + cfg.c).pow(-cfg.p)
    return (weight * err).mean()


@contextmanager
def replay_rng(device: torch.device) -> Iterator[None]:
    """Run a block, then rewind the torch RNG (CPU and, on CUDA, the device's) to where
    it was: the next pass draws the very same dropout masks."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _fp32(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def meanflow_target(
    u: AverageVelocityFn,
    z_t: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MeanFlow target u_tgt = v - (t - r) (v . d_z u + d_t u) (Geng et al. 2025, Eq. 10).

    The total derivative is one forward-mode JVP of u along the tangent (v, 1, 0) in
    (z, t, r). Call it under ``torch.no_grad()`` (the target is stop-gradient) and in
    fp32; it runs the attention with the math backend.

    Args:
        u: the student's average velocity.
        z_t: ``(B, N, D)`` noisy latents.
        t: ``(B,)`` start times.
        r: ``(B,)`` end times.
        v: ``(B, N, D)`` the instantaneous velocity at (z_t, t) (the teacher's).

    Returns:
        ``(u_tgt, du_dt, u_primal)``, each ``(B, N, D)``: the target, the total
        derivative and u itself (the JVP's primal output).
    """
    with math_attention():
        u_primal, du_dt = torch.func.jvp(
            u, (z_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r))
        )
    return v - expand_time(t - r, v) * du_dt, du_dt, u_primal


class _Distillation:
    """What MeanFlow and TVM share: a frozen teacher, the process, (t, r) and weights."""

    def __init__(
        self,
        *,
        teacher: nn.Module,
        flow: GaussianFlow,
        times: TimePairConfig,
        weighting: AdaptiveWeightConfig,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.flow = flow
        self.times = times
        self.weighting = weighting

    def teacher_velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_psi(z, t) in fp32, no gradient; the teacher follows the batch's device."""
        param = next(self.teacher.parameters())
        if param.device != z.device:
            self.teacher.to(z.device)
        with torch.no_grad(), _fp32(z.device):
            return self.flow.to_velocity(at_least_fp32(self.teacher(z, t)), z, t)

    def draw(self, batch: LatentBatch, ctx: StepContext):
        """``(z_t, t, r)`` for the micro-batch: (t, r) pairs and the forward kernel."""
        z = at_least_fp32(batch.latents)  # (B, N, D)
        t, r = (x.to(z) for x in sample_time_pair(self.times, ctx))
        eps = ctx.normal(*z.shape[1:]).to(z)
        return self.flow.noise(z, t, eps), t, r


class MeanFlowLoss(_Distillation):
    """MeanFlow self-distillation, an objective for the training loop.

    Per sample: ``err = mean ||u(z_t, t, r) - sg(u_tgt)||^2`` over the latent entries,
    ``u_tgt = v_psi - (t - r)(v_psi . d_z u + d_t u)``, loss ``mean_b w_b err_b`` with
    ``w = sg(1 / (err + c)^p)``.

    Two passes, so that it is exact under DDP and with dropout:

    1. the JVP, under ``no_grad``, in fp32, on the *unwrapped* module
       (``torch.func.jvp`` does not need DDP's hooks and nothing is back-propagated);
    2. the gradient pass through ``model`` itself (the DDP wrapper, which
       synchronises the gradients), under the loop's autocast.

    The torch RNG is rewound between them, so both passes draw the same dropout
    masks. The metric ``primal_gap`` (max |u_jvp - u_grad|) checks it: rounding only
    (math attention vs the fused kernel, fp32 vs autocast); a mask mismatch would be
    of the order of u itself.

    Args:
        teacher: the frozen prior network (``model(z, t)``).
        flow: the teacher's process (the student is read in the same parameterisation).
        times: the (t, r) distribution.
        weighting: the adaptive weight.
    """

    def __call__(self, model: nn.Module, batch: LatentBatch, ctx: StepContext) -> LossOutput:
        z_t, t, r = self.draw(batch, ctx)
        v = self.teacher_velocity(z_t, t)
        with torch.no_grad(), _fp32(z_t.device), replay_rng(z_t.device):
            u_tgt, _, u_jvp = meanflow_target(
                average_velocity(unwrap(model), self.flow), z_t, t, r, v
            )
        u = average_velocity(model, self.flow)(z_t, t, r)  # gradient pass (through DDP)
        err = (u - u_tgt).pow(2).flatten(1).mean(1)  # (B,)
        loss = adaptive_loss(err, self.weighting)
        metrics = {
            "mse": err.mean().detach(),
            "mse_r_eq_t": _masked_mean(err.detach(), t == r),
            "primal_gap": (u.detach() - u_jvp).abs().max(),
        }
        return LossOutput(loss=loss, metrics=metrics)


class TVMLoss(_Distillation):
    """Terminal Velocity Matching (Zhou et al. 2025) as a distillation objective.

    What is implemented. The student's flow map is X(z_t, t, r) = z_t - (t - r) u(z_t, t, r).
    The exact flow map of the teacher's ODE satisfies, at its *terminal* time r,
    d/dr X(z_t, t, r) = v(X(z_t, t, r), r). Differentiating X gives the model's
    terminal velocity

        V(z_t, t, r) = u(z_t, t, r) - (t - r) d_r u(z_t, t, r),

    and the loss regresses it onto the target velocity at the model's own end point:

        err = mean || V(z_t, t, r) - v_psi(sg(z_r), r) ||^2,   z_r = X(z_t, t, r),

    with the same adaptive weight as MeanFlow. d_r u is a forward-mode JVP along the
    tangent (0, 0, 1) in (z, t, r), and the gradient flows *through* it (about 3x the
    cost of a plain step). The target network is the frozen teacher (the anchors'
    "EMA / stop-grad target": in distillation the teacher is the fixed target) and the
    end point is stop-gradient. At r = t the loss is plain velocity distillation
    ||u(z_t, t, t) - v_psi(z_t, t)||^2, the flow-matching boundary condition; an exact
    average velocity has zero loss everywhere (the fixed point; tested).

    Passes: the tangent d_r u by ``torch.func.jvp`` on the *unwrapped* module with
    gradients enabled (a functorch transform cannot wrap DDP's forward: it mutates
    buffers and rebuilds buckets inside it), then u itself through ``model`` (the DDP
    wrapper), with the RNG rewound so both see the same dropout masks. DDP's forward
    arms its reducer, and a parameter's gradient hook fires once per backward, after
    the contributions of both paths are summed, so the whole gradient is synchronised
    (tested against one process). Both passes run in fp32, the JVP with math attention.

    Args:
        teacher: the frozen prior network (``model(z, t)``).
        flow: the teacher's process.
        times: the (t, r) distribution.
        weighting: the adaptive weight.
    """

    def __call__(self, model: nn.Module, batch: LatentBatch, ctx: StepContext) -> LossOutput:
        z_t, t, r = self.draw(batch, ctx)
        with _fp32(z_t.device), replay_rng(z_t.device), math_attention():
            u_unwrapped = average_velocity(unwrap(model), self.flow)
            _, du_dr = torch.func.jvp(
                lambda r_: u_unwrapped(z_t, t, r_), (r,), (torch.ones_like(r),)
            )
        with _fp32(z_t.device):
            u = average_velocity(model, self.flow)(z_t, t, r)  # through DDP, same dropout masks
        gap = expand_time(t - r, u)
        z_r = (z_t - gap * u).detach()  # the model's own end point, stop-gradient
        v_end = self.teacher_velocity(z_r, r)
        terminal = u - gap * du_dr  # d/dr of the flow map X(z_t, t, r)
        err = (terminal - v_end).pow(2).flatten(1).mean(1)  # (B,)
        loss = adaptive_loss(err, self.weighting)
        metrics = {"mse": err.mean().detach(), "mse_r_eq_t": _masked_mean(err.detach(), t == r)}
        return LossOutput(loss=loss, metrics=metrics)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- sampler


@dataclass
class FewStepSample:
    """What the few-step sampler returns.

    Attributes:
        latents: ``(B, N, D)`` the state at t = 0.
        forward_passes: student evaluations (= steps).
        steps: steps of the grid.
    """

    latents: torch.Tensor
    forward_passes: int
    steps: int


@torch.no_grad()
def sample_few_step(u: AverageVelocityFn, noise: torch.Tensor, *, steps: int = 5) -> FewStepSample:
    """MeanFlow sampling: ``z_r = z_t - (t - r) u(z_t, t, r)`` on the uniform grid 1 -> 0.

    Args:
        u: the average velocity ``u(z, t, r)``.
        noise: ``(B, N, D)`` the state at t = 1 (its dtype is kept).
        steps: grid steps (>= 1), one evaluation each.

    Returns:
        A :class:`FewStepSample`.
    """
    grid = time_grid(steps, device=noise.device, dtype=noise.dtype)
    batch = noise.shape[0]
    z = noise
    for i in range(steps):
        t, r = grid[i].expand(batch), grid[i + 1].expand(batch)
        z = z - expand_time(t - r, z) * u(z, t, r).to(z.dtype)
    return FewStepSample(latents=z, forward_passes=steps, steps=steps)
