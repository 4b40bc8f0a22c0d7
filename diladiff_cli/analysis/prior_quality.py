"""How close are prior samples to encoder latents? The teacher (LaDiff) against its
students (DiLaDiff) on held-out latents.

For every sampler setting (the teacher's ODE at several Ncont with Euler and Heun, each
student's few-step sampler at Ncont = 1 / 2 / 5) :func:`measure_prior_quality` draws
``num_samples`` latents with each of ``seeds`` seeds and measures their distance in
distribution to the held-out encoder latents:

* MMD^2 (unbiased) with a Gaussian kernel on the flattened latents, the sum over three
  bandwidths (0.5, 1 and 2 times the median pairwise distance of the held-out set);
* the Frechet distance between Gaussians fitted to the latents projected on the top
  ``pca`` principal directions of the held-out set (a full 1024-dimensional covariance
  is not estimable from a few hundred samples).

"Noise" is the spread over seeds; the floor is the same distance for as many *training*
latents (what a perfect sampler scores at this sample size). The interval diagnostic
(:func:`teacher_path`, :func:`interval_errors`) measures each student step's local error
against the teacher's ODE over the same interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diladiff_cli.diffusion.flow import integrate, velocity_of
from diladiff_cli.diffusion.meanflow import average_velocity
from diladiff_cli.errors import DiladiffError
from diladiff_cli.latent_shards import write_split
from diladiff_cli.prior import (
    LatentModel,
    held_out_latents,
    load_prior,
    load_student,
    sample_latents,
)

TEACHER_RUNS = "euler:5,euler:20,euler:200,heun:5,heun:20,heun:200"
STUDENT_STEPS = (1, 2, 5)
INTERVAL_SUBSTEPS = 40  # Heun steps per grid interval of the teacher's reference path
FIRST_SEED = 1000  # sampler seeds are FIRST_SEED + i; the floor's subsets use seed i


# ----------------------------------------------------------------------------- distances


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` of the rows of ``x`` ``(n, d)``."""
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between two Gaussians,
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    Args:
        mu1: ``(d,)`` first mean.
        s1: ``(d, d)`` first covariance.
        mu2: ``(d,)`` second mean.
        s2: ``(d, d)`` second covariance.

    Returns:
        The squared 2-Wasserstein distance between the two Gaussians.
    """
    root = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


class Distances:
    """MMD^2 and PCA Frechet distance against a fixed held-out set.

    Args:
        held_out: ``(n, N, D)`` held-out encoder latents.
        pca: principal directions kept for the Frechet distance.
    """

    def __init__(self, held_out: torch.Tensor, *, pca: int) -> None:
        self.y = held_out.flatten(1).double()  # (n, N*D)
        d2 = torch.cdist(self.y, self.y).pow(2)
        median = d2[~torch.eye(len(self.y), dtype=torch.bool)].median()
        self.bandwidths = [float(median) * f for f in (0.25, 1.0, 4.0)]  # squared: 0.5x, 1x, 2x
        self.k_yy = self._kernel_mean(d2, same=True)
        mean = self.y.mean(0)
        _, _, v = torch.linalg.svd(self.y - mean, full_matrices=False)
        self.mean, self.basis = mean, v[:pca].T  # (N*D,), (N*D, pca)
        self.mu_y, self.cov_y = gaussian_fit(self._project(self.y))

    def _kernel_mean(self, d2: torch.Tensor, *, same: bool) -> float:
        k = sum(torch.exp(-d2 / (2 * h)) for h in self.bandwidths)
        if same:  # unbiased: drop the diagonal
            n = len(k)
            return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))
        return float(k.mean())

    def _project(self, x: torch.Tensor) -> np.ndarray:
        return ((x - self.mean) @ self.basis).numpy()

    def mmd2(self, samples: torch.Tensor) -> float:
        """Unbiased MMD^2 of ``samples`` ``(m, N, D)`` against the held-out set."""
        x = samples.flatten(1).double()
        k_xx = self._kernel_mean(torch.cdist(x, x).pow(2), same=True)
        k_xy = self._kernel_mean(torch.cdist(x, self.y).pow(2), same=False)
        return k_xx + self.k_yy - 2 * k_xy

    def frechet(self, samples: torch.Tensor) -> float:
        """Frechet distance of ``samples`` ``(m, N, D)`` to the held-out set, in PCA space."""
        mu, cov = gaussian_fit(self._project(samples.flatten(1).double()))
        return frechet_distance(mu, cov, self.mu_y, self.cov_y)


# ----------------------------------------------------------------------------- measurement


@dataclass
class SamplerRow:
    """One sampler setting, over seeds (a row of the report and of its JSON record)."""

    model: str
    kind: str
    method: str
    ncont: int
    forward_passes: int
    mmd2_mean: float
    mmd2_std: float
    fd_mean: float
    fd_std: float
    seconds_per_1k: float


def measure_sampler(
    name: str,
    model: LatentModel,
    *,
    method: str,
    ncont: int,
    distances: Distances,
    num_samples: int,
    seeds: int,
    batch_size: int,
    device: str,
) -> SamplerRow:
    """Distances of one sampler setting's draws, one draw per seed ``FIRST_SEED + i``.

    Args:
        name: the row's model column.
        model: a loaded prior or student.
        method: ``euler``, ``heun`` (prior) or ``few_step`` (student).
        ncont: continuous steps.
        distances: the held-out set's measures.
        num_samples: latents per seed.
        seeds: number of seeds (at least 2: the spread is a sample std).
        batch_size: latents per sampler batch.
        device: where to sample.
    """
    mmd, fd, secs, passes = [], [], [], 0
    for seed in range(seeds):
        drawn = sample_latents(
            model, num_samples=num_samples, ncont=ncont, method=method,
            batch_size=batch_size, seed=FIRST_SEED + seed, device=device,
        )  # fmt: skip
        mmd.append(distances.mmd2(drawn.latents))
        fd.append(distances.frechet(drawn.latents))
        secs.append(drawn.seconds * 1000 / num_samples)
        passes = drawn.forward_passes
    return SamplerRow(
        model=name, kind=model.kind, method=method, ncont=ncont, forward_passes=passes,
        mmd2_mean=float(np.mean(mmd)), mmd2_std=float(np.std(mmd, ddof=1)),
        fd_mean=float(np.mean(fd)), fd_std=float(np.std(fd, ddof=1)),
        seconds_per_1k=float(np.mean(secs)),
    )  # fmt: skip


def floor_row(
    train: torch.Tensor, *, distances: Distances, num_samples: int, seeds: int
) -> SamplerRow:
    """The distance of real training latents: what a perfect sampler would score.

    Args:
        train: ``(n, N, D)`` training latents; seed i measures a random subset of
            ``num_samples`` of them.
        distances: the held-out set's measures.
        num_samples: latents per seed.
        seeds: number of subsets.
    """
    mmd, fd = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(train), generator=g)[:num_samples]
        mmd.append(distances.mmd2(train[pick]))
        fd.append(distances.frechet(train[pick]))
    return SamplerRow(
        model="training latents (floor)", kind="data", method="-", ncont=0, forward_passes=0,
        mmd2_mean=float(np.mean(mmd)), mmd2_std=float(np.std(mmd, ddof=1)),
        fd_mean=float(np.mean(fd)), fd_std=float(np.std(fd, ddof=1)), seconds_per_1k=0.0,
    )  # fmt: skip


@torch.no_grad()
def teacher_path(
    teacher: LatentModel, noise: torch.Tensor, *, steps: int, substeps: int
) -> list[torch.Tensor]:
    """The teacher's ODE state at each point of the ``steps``-step uniform grid, each
    interval integrated by ``substeps`` Heun steps (an Euler step onto t = 0).

    Args:
        teacher: the prior.
        noise: ``(n, N, D)`` the state at t = 1.
        steps: grid intervals from t = 1 to t = 0.
        substeps: Heun steps per interval.

    Returns:
        ``steps + 1`` states ``(n, N, D)``, the first being ``noise``.
    """
    v = velocity_of(teacher.model, teacher.flow)
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    states = [noise]
    for hi, lo in zip(grid[:-1], grid[1:], strict=True):
        fine = torch.linspace(hi, lo, substeps + 1, device=noise.device)
        states.append(integrate(v, states[-1], fine, method="heun")[0])
    return states


@torch.no_grad()
def interval_errors(student: LatentModel, path: list[torch.Tensor], *, steps: int) -> list[float]:
    """Mean squared error of one student step against the teacher over each grid interval,
    both started from the teacher's state (the student's local error, interval by interval).

    Args:
        student: the distilled student.
        path: :func:`teacher_path` on the same grid.
        steps: grid intervals.

    Returns:
        One error per interval, from t = 1 down.
    """
    u = average_velocity(student.model, student.flow)
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    errors = []
    for i, (hi, lo) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        z = path[i]
        t, r = (torch.full((len(z),), x, device=z.device) for x in (hi, lo))
        errors.append(float((z - (hi - lo) * u(z, t, r) - path[i + 1]).pow(2).mean()))
    return errors


def verdicts(rows: list[SamplerRow], students: list[str], seeds: int) -> list[dict[str, Any]]:
    """Student at Ncont=5 vs teacher (Heun) at 200 (within noise?) and at 5 (clearly closer?).

    "Within noise": |difference of means| <= 2 standard errors of the difference
    (seed spread); "clearly closer": the student is lower by more than that.

    Args:
        rows: every measured row; the teacher's heun@200, heun@5 and euler@5 must be there.
        students: the students' row names.
        seeds: seeds per row (for the standard errors).

    Returns:
        One check per student and metric (``mmd2``, ``fd``).
    """

    def se(a: SamplerRow, b: SamplerRow, metric: str) -> float:
        std = f"{metric}_std"
        return math.sqrt((getattr(a, std) ** 2 + getattr(b, std) ** 2) / seeds)

    def get(model: str, method: str, ncont: int) -> SamplerRow:
        return next(r for r in rows if r.model == model and r.method == method and r.ncont == ncont)

    out = []
    for student in students:
        s5 = get(student, "few_step", 5)
        for metric in ("mmd2", "fd"):
            mean = f"{metric}_mean"

            t200, t5h, t5e = (
                get("teacher", "heun", 200),
                get("teacher", "heun", 5),
                get("teacher", "euler", 5),
            )
            out.append(
                {
                    "student": student,
                    "metric": metric,
                    "student_5": getattr(s5, mean),
                    "teacher_heun_200": getattr(t200, mean),
                    "teacher_heun_5": getattr(t5h, mean),
                    "teacher_euler_5": getattr(t5e, mean),
                    "within_noise_of_teacher_200": abs(getattr(s5, mean) - getattr(t200, mean))
                    <= 2 * se(s5, t200, metric),
                    "better_than_teacher_200": getattr(s5, mean) < getattr(t200, mean),
                    "clearly_closer_than_teacher_heun_5": getattr(t5h, mean) - getattr(s5, mean)
                    > 2 * se(s5, t5h, metric),
                    "clearly_closer_than_teacher_euler_5": getattr(t5e, mean) - getattr(s5, mean)
                    > 2 * se(s5, t5e, metric),
                }
            )
    return out


# ----------------------------------------------------------------------------- the whole measure


@dataclass
class PriorQuality:
    """What :func:`measure_prior_quality` measured.

    Attributes:
        rows: the floor, the teacher's settings, then each student's, in that order.
        checks: :func:`verdicts` of each student.
        intervals: per student, its local error on each grid interval (empty when not asked).
        held_out: where the held-out latents came from (``<latents>/valid``).
        held_out_count: how many held-out latents.
        shape: ``[N, D]`` of one latent.
        num_samples: latents per seed (capped at the held-out count).
        interval_substeps: Heun steps per interval of the teacher's path (None: not asked).
    """

    rows: list[SamplerRow]
    checks: list[dict[str, Any]]
    intervals: dict[str, list[float]] = field(default_factory=dict)
    held_out: str = ""
    held_out_count: int = 0
    shape: list[int] = field(default_factory=list)
    num_samples: int = 0
    interval_substeps: int | None = None


def parse_teacher_runs(text: str) -> list[tuple[str, int]]:
    """``"euler:5,heun:200"`` -> ``[("euler", 5), ("heun", 200)]``."""
    runs = []
    for run in text.split(","):
        method, n = run.split(":")
        runs.append((method, int(n)))
    return runs


def reused_rows(
    record_path: str | Path,
    *,
    prior: str | Path,
    latents: str | Path,
    held_out_count: int,
    num_samples: int,
    seeds: int,
    pca: int,
) -> list[SamplerRow]:
    """The floor and teacher rows of an earlier record, after checking it measured the same.

    Raises:
        DiladiffError: the record measured another prior, latents or sample size.
    """
    path = Path(record_path)
    record = json.loads(path.read_text())
    info = record["info"]
    same = (
        Path(info["prior"]).resolve() == Path(prior).resolve()
        and info["held_out"] == str(Path(latents) / "valid")
        and info["held_out_count"] == held_out_count
        and (info["num_samples"], info["seeds"], info["pca"]) == (num_samples, seeds, pca)
    )
    if not same:
        raise DiladiffError(
            f"{path} measured another prior, latents or sample size: cannot reuse it"
        )
    return [SamplerRow(**r) for r in record["rows"] if r["kind"] in ("data", "prior")]


def student_name(index: int, student: LatentModel, path: str | Path) -> str:
    """A student's row name: its position, objective and file."""
    return f"student {index + 1} ({student.extra.get('objective')}, {Path(path).name})"


def measure_prior_quality(
    *,
    prior: str | Path,
    students: list[str | Path],
    latents: str | Path,
    num_samples: int = 512,
    seeds: int = 3,
    batch_size: int = 512,
    pca: int = 32,
    teacher_runs: list[tuple[str, int]] | None = None,
    device: str = "cpu",
    reuse_teacher: str | Path | None = None,
    intervals: int = 0,
    progress: Callable[[str], None] | None = None,
) -> PriorQuality:
    """Measure the teacher's and each student's samples against held-out latents.

    Args:
        prior: the train-prior checkpoint (the teacher).
        students: distill checkpoints.
        latents: `encode`'s output directory (``train/`` and ``valid/``).
        num_samples: latents per seed (capped at the held-out count).
        seeds: seeds per setting.
        batch_size: latents per sampler batch.
        pca: principal directions of the Frechet distance.
        teacher_runs: the teacher's ``(method, ncont)`` settings (default
            :data:`TEACHER_RUNS`); euler@5, heun@5 and heun@200 are needed by the checks.
        device: where to sample.
        reuse_teacher: an earlier JSON record whose floor and teacher rows to take.
        intervals: also measure each student's local error on every interval of this
            many grid steps (0: not).
        progress: called with a line after each measured row.

    Returns:
        The rows, checks and (when asked) the interval errors.
    """
    say = progress or (lambda _: None)
    held_out = held_out_latents(latents, "valid")
    train = held_out_latents(latents, "train")
    num_samples = min(num_samples, len(held_out))
    distances = Distances(held_out, pca=pca)
    teacher = load_prior(prior, device=device)
    common = dict(
        distances=distances, num_samples=num_samples, seeds=seeds, batch_size=batch_size,
        device=device,
    )  # fmt: skip
    if reuse_teacher:
        rows = reused_rows(
            reuse_teacher, prior=prior, latents=latents, held_out_count=len(held_out),
            num_samples=num_samples, seeds=seeds, pca=pca,
        )  # fmt: skip
    else:
        rows = [floor_row(train, distances=distances, num_samples=num_samples, seeds=seeds)]
        for method, n in teacher_runs or parse_teacher_runs(TEACHER_RUNS):
            rows.append(measure_sampler("teacher", teacher, method=method, ncont=n, **common))
            say(str(asdict(rows[-1])))
    names, errors = [], {}
    if intervals:
        noise = torch.randn(
            num_samples, *teacher.shape, generator=torch.Generator().manual_seed(FIRST_SEED)
        ).to(device)
        path_points = teacher_path(teacher, noise, steps=intervals, substeps=INTERVAL_SUBSTEPS)
    for i, path in enumerate(students):
        student = load_student(path, device=device)
        name = student_name(i, student, path)
        names.append(name)
        for n in STUDENT_STEPS:
            rows.append(measure_sampler(name, student, method="few_step", ncont=n, **common))
            say(str(asdict(rows[-1])))
        if intervals:
            errors[name] = interval_errors(student, path_points, steps=intervals)
            say(f"{name} {errors[name]}")
    return PriorQuality(
        rows=rows,
        checks=verdicts(rows, names, seeds),
        intervals=errors,
        held_out=str(Path(latents) / "valid"),
        held_out_count=len(held_out),
        shape=list(held_out.shape[1:]),
        num_samples=num_samples,
        interval_substeps=INTERVAL_SUBSTEPS if intervals else None,
    )


# ----------------------------------------------------------------------------- the report


def prior_quality_markdown(
    rows: list[SamplerRow],
    checks: list[dict[str, Any]],
    info: dict[str, Any],
    intervals: dict[str, list[float]] | None = None,
) -> str:
    """The Markdown report: the rows, the checks, and the interval errors when measured.

    Args:
        rows: the measured rows.
        checks: :func:`verdicts`.
        info: the settings (command, held-out set, sample size, seeds, pca, device, torch,
            ``interval_substeps``, ``note``).
        intervals: per student, the local error of each interval.
    """
    lines = [
        "# Latent prior: samples vs held-out encoder latents",
        "",
        "Written by `scripts/prior_report.py`; the command, data and settings are below.",
        "Lower is closer. Mean +- standard deviation over seeds.",
        "",
        f"- command: `{info['command']}`",
        f"- held-out latents: `{info['held_out']}` ({info['held_out_count']} latents of shape "
        f"{info['shape']}); samples per seed: {info['num_samples']}; seeds: {info['seeds']}",
        f"- MMD^2: unbiased, Gaussian kernels at 0.5/1/2 x the median distance (summed); "
        f"FD: Frechet distance on the top {info['pca']} principal directions of the held-out set",
        f"- device: {info['device']}; torch {info['torch']}",
        "",
        "| model | sampler | Ncont | NFE | MMD^2 | FD (PCA) | s / 1k samples |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.method} | {r.ncont or '-'} | {r.forward_passes or '-'} | "
            f"{r.mmd2_mean:.4f} +- {r.mmd2_std:.4f} | {r.fd_mean:.3f} +- {r.fd_std:.3f} | "
            f"{r.seconds_per_1k:.2f} |"
        )
    lines += ["", "## Checks (student at Ncont = 5)", ""]
    lines += [
        "| student | metric | student@5 | teacher heun@200 | within noise of teacher@200 "
        "| clearly closer than teacher heun@5 | clearly closer than teacher euler@5 |",
        "| --- | --- | ---: | ---: | --- | --- | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c['student']} | {c['metric']} | {c['student_5']:.4f} | {c['teacher_heun_200']:.4f} | "
            f"{'yes' if c['within_noise_of_teacher_200'] or c['better_than_teacher_200'] else 'NO'}"
            f"{' (lower)' if c['better_than_teacher_200'] else ''} | "
            f"{'yes' if c['clearly_closer_than_teacher_heun_5'] else 'NO'} | "
            f"{'yes' if c['clearly_closer_than_teacher_euler_5'] else 'NO'} |"
        )
    if intervals:
        steps = len(next(iter(intervals.values())))
        lines += [
            "",
            f"## Local error of each student step (Ncont = {steps})",
            "",
            "Mean squared error of one student step against the teacher's ODE over the same "
            f"interval (Heun, {info['interval_substeps']} steps), both started from the "
            "teacher's state; the first interval starts at the noise (t = 1).",
            "",
            "| student | " + " | ".join(f"t {1 - i / steps:.1f} -> {1 - (i + 1) / steps:.1f}"
                                       for i in range(steps)) + " |",
            "| --- |" + " ---: |" * steps,
        ]  # fmt: skip
        for name, errs in intervals.items():
            lines.append(f"| {name} | " + " | ".join(f"{e:.5f}" for e in errs) + " |")
    if info.get("note"):
        lines += ["", info["note"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the stand-in


def write_standin_latents(directory: str | Path) -> None:
    """Write the stand-in latents used while no real `encode` output existed: 9510 train /
    516 valid latents of shape (16, 64), a 16-component mixture in 1024 dimensions whose
    components are curved (tanh of a rank-8 factor), standardised per entry as the
    autoencoder's ``stats`` normalisation would be. Written in `encode`'s format, each
    split in shards of 2048, credited to a placeholder autoencoder."""
    g = torch.Generator().manual_seed(0)
    k_, n_, d_, rank = 16, 16, 64, 8
    centres = torch.randn(k_, n_ * d_, generator=g)
    factors = 0.7 * torch.randn(k_, n_ * d_, rank, generator=g)

    def draw(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.randint(0, k_, (n,), generator=g)
        h = torch.randn(n, rank, 1, generator=g)
        x = centres[k] + 1.5 * torch.tanh(factors[k] @ h).squeeze(-1)
        return (x + 0.2 * torch.randn(n, n_ * d_, generator=g)).view(n, n_, d_)

    train, valid = draw(9510, 1), draw(516, 2)
    mean, std = train.mean(0), train.std(0)
    record = {"path": "synthetic-ae.pt", "sha256": "c" * 64, "step": 0}
    for split, z in (("train", train), ("valid", valid)):
        latents = ((z - mean) / std).float()
        write_split(directory, latents, split=split, autoencoder=record, shard_size=2048)
