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
latents (see :func:`diladiff_cli.analysis.prior_quality.write_standin_latents`) that
docs/prior.md was first measured on.

The measures live in :mod:`diladiff_cli.analysis.prior_quality`; this script parses,
calls :func:`~diladiff_cli.analysis.prior_quality.measure_prior_quality` and writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from diladiff_cli.analysis.prior_quality import (
    TEACHER_RUNS,
    measure_prior_quality,
    parse_teacher_runs,
    prior_quality_markdown,
    write_standin_latents,
)
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_text


def main() -> None:
    if sys.argv[1:2] == ["--make-standin"]:
        write_standin_latents(Path(sys.argv[2]))
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

    try:
        result = measure_prior_quality(
            prior=args.prior,
            students=args.student,
            latents=args.latents,
            num_samples=args.num_samples,
            seeds=args.seeds,
            batch_size=args.batch_size,
            pca=args.pca,
            teacher_runs=parse_teacher_runs(args.teacher_runs),
            device=args.device,
            reuse_teacher=args.reuse_teacher,
            intervals=args.intervals,
            progress=lambda line: print(line, flush=True),
        )
    except DiladiffError as err:
        raise SystemExit(str(err)) from None
    info = {
        "command": "python " + " ".join(sys.argv),
        "held_out": result.held_out,
        "held_out_count": result.held_out_count,
        "shape": result.shape,
        "num_samples": result.num_samples,
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
        "interval_substeps": result.interval_substeps,
    }
    out = Path(args.out)
    atomic_write_text(
        out, prior_quality_markdown(result.rows, result.checks, info, result.intervals)
    )
    record = {"info": info, "rows": [asdict(r) for r in result.rows], "checks": result.checks}
    if result.intervals:
        record["intervals"] = result.intervals
    atomic_write_text(
        Path(args.json or out.with_suffix(".json")), json.dumps(record, indent=1) + "\n"
    )
    print(json.dumps(result.checks, indent=1))


if __name__ == "__main__":
    main()
