"""scripts/prior_report.py --intervals: the student's local error, interval by interval,
against the teacher's ODE path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from diladiff_cli.config import FlowConfig
from diladiff_cli.diffusion.flow import GaussianFlow
from diladiff_cli.models.latent_dit import LatentDiT
from diladiff_cli.prior import LatentModel, init_student

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location(
        "prior_report", ROOT / "scripts" / "prior_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["prior_report"] = module
    spec.loader.exec_module(module)
    return module


def _model(net: LatentDiT, kind: str) -> LatentModel:
    return LatentModel(
        kind=kind, model=net.eval(), flow=GaussianFlow.from_config(FlowConfig(prediction="x0")),
        latent={}, config={}, extra={}, step=0, path=Path("x"), ncont=5,
        method="heun" if kind == "prior" else "few_step",
    )  # fmt: skip


def test_a_student_equal_to_its_teacher_makes_exactly_the_teachers_euler_steps():
    """With one sub-step the teacher's path is Heun, except onto t = 0 where it is Euler:
    a student initialised from the teacher (u = v at any r) is then exact on the last
    interval only, and wrong by Heun's correction elsewhere."""
    report = _script()
    torch.manual_seed(0)
    net = LatentDiT(num_latents=4, latent_dim=8, hidden=32, depth=2, heads=2, cond_dim=16)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape))
    teacher, student = _model(net, "prior"), _model(init_student(net), "distill")
    noise = torch.randn(6, 4, 8)
    path = report.teacher_path(teacher, noise, steps=5, substeps=1)
    assert len(path) == 6 and torch.equal(path[0], noise)
    errors = report.interval_errors(student, path, steps=5)
    assert errors[-1] < 1e-10
    assert min(errors[:-1]) > 1e-8
    fine = report.teacher_path(teacher, noise, steps=5, substeps=8)
    assert report.interval_errors(student, fine, steps=5)[-1] > 1e-8  # 8 sub-steps: not Euler
