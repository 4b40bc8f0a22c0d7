"""The interval diagnostic of scripts/prior_report.py --intervals
(diladiff_cli.analysis.prior_quality): the student's local error, interval by interval,
against the teacher's ODE path."""

from __future__ import annotations

from pathlib import Path

import torch

from diladiff_cli.analysis.prior_quality import interval_errors, teacher_path
from diladiff_cli.config import FlowConfig, LatentDiTConfig
from diladiff_cli.diffusion.flow import GaussianFlow
from diladiff_cli.models.latent_dit import LatentDiT
from diladiff_cli.prior import LatentModel, init_student, student_config


def _model(net: LatentDiT, config: LatentDiTConfig, kind: str) -> LatentModel:
    return LatentModel(
        kind=kind, model=net.eval(), net=config, flow=GaussianFlow.from_config(FlowConfig(prediction="x0")),
        latent={}, config={}, extra={}, step=0, path=Path("x"), ncont=5,
        method="heun" if kind == "prior" else "few_step",
    )  # fmt: skip


def test_a_student_equal_to_its_teacher_makes_exactly_the_teachers_euler_steps():
    """With one sub-step the teacher's path is Heun, except onto t = 0 where it is Euler:
    a student initialised from the teacher (u = v at any r) is then exact on the last
    interval only, and wrong by Heun's correction elsewhere."""
    torch.manual_seed(0)
    cfg = LatentDiTConfig(num_latents=4, latent_dim=8, hidden=32, depth=2, heads=2, cond_dim=16)
    net = LatentDiT.from_config(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape))
    teacher = _model(net, cfg, "prior")
    student = _model(init_student(net, cfg), student_config(cfg), "distill")
    noise = torch.randn(6, 4, 8)
    path = teacher_path(teacher, noise, steps=5, substeps=1)
    assert len(path) == 6 and torch.equal(path[0], noise)
    errors = interval_errors(student, path, steps=5)
    assert errors[-1] < 1e-10
    assert min(errors[:-1]) > 1e-8
    fine = teacher_path(teacher, noise, steps=5, substeps=8)
    assert interval_errors(student, fine, steps=5)[-1] > 1e-8  # 8 sub-steps: not Euler
