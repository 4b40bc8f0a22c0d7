"""How close are prior samples to encoder latents? The teacher (LaDiff) against its student
(DiLaDiff) on held-out latents.

For every sampler setting (the teacher's ODE at Ncont = 5 / 20 / 200 with Euler and
Heun, each student's few-step sampler at Ncont = 1 / 2 / 5) it draws ``--num-samples``
latents with each of ``--seeds`` seeds and measures their distance in distribution to
the held-out encoder latents (``<latents>/valid``):

* MMD^2 (unbiased) with a Gaussian kernel on the flattened latents, the sum over three
  bandwidths (0.5, 1 and 2 times the median pairwise distance of the held-out set);
* the Frechet distance between Gaussians fitted to the latents projected on the top
  ``--pca`` principal directions of the held-out set (a full 1024-dimensional
  covariance is not estimable from a few hundred samples).

"Noise" is the spread over seeds; the floor is the same distance for as many
*training* latents (what a perfect sampler scores at this sample size). Writes a
Markdown report and a JSON record.

Example:
    python scripts/prior_report.py --prior runs/tiny/ladiff.pt \\
        --student runs/tiny/diladiff.pt --latents runs/tiny/latents

``python scripts/prior_report.py --make-standin DIR`` writes the synthetic stand-in
latents (see :func:`make_standin`) that docs/prior.md was first measured on.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diladiff_cli.checkpoint import atomic_write_text  # noqa: E402
from diladiff_cli.diffusion.flow import integrate, velocity_of  # noqa: E402
from diladiff_cli.diffusion.meanflow import average_velocity  # noqa: E402
from diladiff_cli.prior import (  # noqa: E402
    LatentModel,
    held_out_latents,
    load_prior,
    load_student,
    sample_latents,
)

TEACHER_RUNS = "euler:5,euler:20,euler:200,heun:5,heun:20,heun:200"
STUDENT_STEPS = (1, 2, 5)


# ----------------------------------------------------------------------------- distances


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
        self.mu_y, self.cov_y = _gaussian(self._project(self.y))

    def _kernel_mean(self, d2: torch.Tensor, *, same: bool) -> float:
        k = sum(torch.exp(-d2 / (2 * h)) for h in self.bandwidths)
        if same:  # unbiased: drop the diagonal
            n = len(k)
            return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))
        return float(k.mean())

    def _project(self, x: torch.Tensor) -> np.ndarray:
        return ((x - self.mean) @ self.basis).numpy()

    def mmd2(self, samples: torch.Tensor) -> float:
        x = samples.flatten(1).double()
        k_xx = self._kernel_mean(torch.cdist(x, x).pow(2), same=True)
        k_xy = self._kernel_mean(torch.cdist(x, self.y).pow(2), same=False)
        return k_xx + self.k_yy - 2 * k_xy

    def frechet(self, samples: torch.Tensor) -> float:
        mu, cov = _gaussian(self._project(samples.flatten(1).double()))
        return _frechet(mu, cov, self.mu_y, self.cov_y)


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
    root = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


# ----------------------------------------------------------------------------- measurement


@dataclass
class Row:
    """One sampler setting, over seeds."""

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


def measure(name: str, model: LatentModel, method: str, ncont: int, dist: Distances, args) -> Row:
    mmd, fd, secs, passes = [], [], [], 0
    for seed in range(args.seeds):
        drawn = sample_latents(
            model, num_samples=args.num_samples, ncont=ncont, method=method,
            batch_size=args.batch_size, seed=1000 + seed, device=args.device,
        )  # fmt: skip
        mmd.append(dist.mmd2(drawn.latents))
        fd.append(dist.frechet(drawn.latents))
        secs.append(drawn.seconds * 1000 / args.num_samples)
        passes = drawn.forward_passes
    return Row(
        model=name, kind=model.kind, method=method, ncont=ncont, forward_passes=passes,
        mmd2_mean=float(np.mean(mmd)), mmd2_std=float(np.std(mmd, ddof=1)),
        fd_mean=float(np.mean(fd)), fd_std=float(np.std(fd, ddof=1)),
        seconds_per_1k=float(np.mean(secs)),
    )  # fmt: skip


def floor(train: torch.Tensor, dist: Distances, args) -> Row:
    """The distance of real training latents: what a perfect sampler would score."""
    mmd, fd = [], []
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(train), generator=g)[: args.num_samples]
        mmd.append(dist.mmd2(train[pick]))
        fd.append(dist.frechet(train[pick]))
    return Row(
        model="training latents (floor)", kind="data", method="-", ncont=0, forward_passes=0,
        mmd2_mean=float(np.mean(mmd)), mmd2_std=float(np.std(mmd, ddof=1)),
        fd_mean=float(np.mean(fd)), fd_std=float(np.std(fd, ddof=1)), seconds_per_1k=0.0,
    )  # fmt: skip


@torch.no_grad()
def teacher_path(teacher: LatentModel, noise: torch.Tensor, *, steps: int, substeps: int):
    """The teacher's ODE state at each point of the ``steps``-step uniform grid, each
    interval integrated by ``substeps`` Heun steps (an Euler step onto t = 0)."""
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
    both started from the teacher's state (the student's local error, interval by interval)."""
    u = average_velocity(student.model, student.flow)
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    errors = []
    for i, (hi, lo) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        z = path[i]
        t, r = (torch.full((len(z),), x, device=z.device) for x in (hi, lo))
        errors.append(float((z - (hi - lo) * u(z, t, r) - path[i + 1]).pow(2).mean()))
    return errors


def reused_rows(path: Path, args: argparse.Namespace, held_out_count: int) -> list[Row]:
    """The floor and teacher rows of an earlier record, after checking it measured the same."""
    record = json.loads(path.read_text())
    info = record["info"]
    same = (
        Path(info["prior"]).resolve() == Path(args.prior).resolve()
        and info["held_out"] == str(Path(args.latents) / "valid")
        and info["held_out_count"] == held_out_count
        and (info["num_samples"], info["seeds"], info["pca"])
        == (args.num_samples, args.seeds, args.pca)
    )
    if not same:
        raise SystemExit(f"{path} measured another prior, latents or sample size: cannot reuse it")
    return [Row(**r) for r in record["rows"] if r["kind"] in ("data", "prior")]


def verdicts(rows: list[Row], students: list[str], seeds: int) -> list[dict]:
    """Student at Ncont=5 vs teacher (Heun) at 200 (within noise?) and at 5 (clearly closer?).

    "Within noise": |difference of means| <= 2 standard errors of the difference
    (seed spread); "clearly closer": the student is lower by more than that.
    """

    def se(a: Row, b: Row, metric: str) -> float:
        std = f"{metric}_std"
        return math.sqrt((getattr(a, std) ** 2 + getattr(b, std) ** 2) / seeds)

    def get(model: str, method: str, ncont: int) -> Row:
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


def markdown(
    rows: list[Row], checks: list[dict], info: dict, intervals: dict[str, list[float]] | None = None
) -> str:
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


def make_standin(directory: Path) -> None:
    """Write the stand-in latents used while no real `encode` output existed: 9510 train /
    516 valid latents of shape (16, 64), a 16-component mixture in 1024 dimensions whose
    components are curved (tanh of a rank-8 factor), standardised per entry as the
    autoencoder's ``stats`` normalisation would be. Written in `encode`'s format."""
    from tests._latents_synthetic import write_latents

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
    for split, z in (("train", train), ("valid", valid)):
        write_latents(
            directory, ((z - mean) / std).float(), split=split, ae_sha="c" * 64, shard_size=2048
        )


def main() -> None:
    if sys.argv[1:2] == ["--make-standin"]:
        make_standin(Path(sys.argv[2]))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--prior", required=True, help="train-prior checkpoint (the teacher)")
    p.add_argument("--student", action="append", default=[], help="distill checkpoint (repeatable)")
    p.add_argument("--latents", required=True, help="encode output: train/ and valid/")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--pca", type=int, default=32)
    p.add_argument(
        "--teacher-runs",
        default=TEACHER_RUNS,
        help="solver:ncont settings of the teacher (euler:5, heun:5 and heun:200 are needed "
        "for the checks)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--reuse-teacher",
        default=None,
        help="a previous JSON record of this script: take the floor and teacher rows from it "
        "(same prior, latents, sample count and seeds; the 200-step teacher is the slow part)",
    )
    p.add_argument(
        "--intervals",
        type=int,
        default=0,
        help="also measure each student's local error on every interval of this many "
        "grid steps (e.g. 5) against the teacher's ODE (slow: a 200-step teacher path)",
    )
    p.add_argument("--note", default="", help="a line appended to the report")
    p.add_argument("--out", default="docs/prior.md")
    p.add_argument("--json", default=None, help="default: the report's path with .json")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    held_out = held_out_latents(args.latents, "valid")
    train = held_out_latents(args.latents, "train")
    args.num_samples = min(args.num_samples, len(held_out))
    dist = Distances(held_out, pca=args.pca)
    teacher = load_prior(args.prior, device=args.device)
    if args.reuse_teacher:
        rows = reused_rows(Path(args.reuse_teacher), args, len(held_out))
    else:
        rows = [floor(train, dist, args)]
        for run in args.teacher_runs.split(","):
            method, n = run.split(":")
            rows.append(measure("teacher", teacher, method, int(n), dist, args))
            print(asdict(rows[-1]), flush=True)
    names, intervals = [], {}
    substeps = 40
    if args.intervals:
        noise = torch.randn(
            args.num_samples, *teacher.shape, generator=torch.Generator().manual_seed(1000)
        ).to(args.device)
        path_points = teacher_path(teacher, noise, steps=args.intervals, substeps=substeps)
    for i, path in enumerate(args.student):
        student = load_student(path, device=args.device)
        name = f"student {i + 1} ({student.extra.get('objective')}, {Path(path).name})"
        names.append(name)
        for n in STUDENT_STEPS:
            rows.append(measure(name, student, "few_step", n, dist, args))
            print(asdict(rows[-1]), flush=True)
        if args.intervals:
            intervals[name] = interval_errors(student, path_points, steps=args.intervals)
            print(name, intervals[name], flush=True)
    checks = verdicts(rows, names, args.seeds)
    info = {
        "command": "python " + " ".join(sys.argv),
        "held_out": str(Path(args.latents) / "valid"),
        "held_out_count": len(held_out),
        "shape": list(held_out.shape[1:]),
        "num_samples": args.num_samples,
        "seeds": args.seeds,
        "pca": args.pca,
        "device": f"{args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "prior": args.prior,
        "students": args.student,
        "teacher_runs": args.teacher_runs,
        "reused_teacher_rows_from": args.reuse_teacher,
        "note": args.note,
        "interval_substeps": substeps if args.intervals else None,
    }
    out = Path(args.out)
    atomic_write_text(out, markdown(rows, checks, info, intervals))
    record = {"info": info, "rows": [asdict(r) for r in rows], "checks": checks}
    if intervals:
        record["intervals"] = intervals
    atomic_write_text(
        Path(args.json or out.with_suffix(".json")), json.dumps(record, indent=1) + "\n"
    )
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
