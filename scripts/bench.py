"""Benchmark every stage on whatever device it runs; append the figures to docs/benchmarks.md.

What it measures (training throughput and MFU of every stage; sampling speed and latent
share of MDLM, LaDiff and DiLaDiff at Ndisc in {L/16, L/4, L}) is described in
:mod:`diladiff_cli.analysis.benchmark`, which does the measuring.

Weights: the trained checkpoints the recipe names (mdlm.out, ae.out, prior.out,
distill.out) when all of them exist, else random initialisation at the recipe's sizes
(written as checkpoints to a temporary directory, so that both cases run the same code).
Throughput does not depend on the weights, except through the sampler's caching
(steps that unmask nothing reuse the logits).

Timing: each training stage runs ``--warmup`` steps (allocator, kernels, compilation), then
``--steps`` timed steps; the clock starts when the loop draws the first batch of the first
timed step and stops at the loop's last metrics read. On CUDA ``torch.cuda.synchronize``
runs only at those two points. Data: the prepared blocks when the recipe's data directory
holds them (the autoencoder then tokenises for its encoder on every step, as in training),
else random tokens, the encoder view padded to its ``max_len``; latents are random.

The measuring is :mod:`diladiff_cli.analysis.benchmark`; this script parses, loads the
recipe, calls :func:`~diladiff_cli.analysis.benchmark.run_benchmark` and appends.

Output: a markdown section appended to ``--out`` (default docs/benchmarks.md) and a record
appended to the JSON list beside it (docs/benchmarks.json), both written atomically.

Usage:
    python scripts/bench.py --recipe recipes/tiny/default.yaml
    python scripts/bench.py --recipe recipes/paper/pipeline.yaml --device cuda --compile
    python scripts/bench.py --recipe tests/recipes/micro.yaml --quick --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diladiff_cli.analysis.benchmark import STAGES, Plan, append_results, run_benchmark
from diladiff_cli.config import load_recipe
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe YAML (default: the embedded one, recipes/oracle/default.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override, repeatable (e.g. ae.train.batch_size=64)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument("--samples", type=int, default=None, help="samples per call (default 16)")
    p.add_argument("--ncont-ladiff", type=int, default=200)
    p.add_argument("--ncont-diladiff", type=int, default=5)
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="default: bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the trained networks (default: the recipe's, CUDA only)",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--use-checkpoints",
        dest="weights",
        action="store_const",
        const="checkpoints",
        help="the recipe's trained checkpoints (default when all exist)",
    )
    weights.add_argument(
        "--random-init",
        dest="weights",
        action="store_const",
        const="random",
        help="random weights at the recipe's sizes",
    )
    p.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 warm-up + 2 timed steps, batch <= 4, 2 samples (tests)",
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown file to append to; the JSON list goes beside it (.json)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"bench: unknown stage(s) {unknown}; choose from {','.join(STAGES)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recipe = load_recipe(args.recipe, args.set)
        runtime = init_runtime(args.device)
        if runtime.distributed:
            raise DiladiffError("the benchmark runs in one process (no torchrun)")
        cuda = runtime.device.type == "cuda"
        plan = Plan(
            warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
            steps=args.steps if args.steps is not None else (2 if args.quick else 10),
            max_batch=4 if args.quick else 0,
            samples=args.samples if args.samples is not None else (2 if args.quick else 16),
            ncont_ladiff=args.ncont_ladiff,
            ncont_diladiff=args.ncont_diladiff,
            precision=args.precision or ("bf16" if cuda else "fp32"),
            compile=args.compile,
        )
        if min(plan.warmup, plan.steps - 1, plan.samples - 1) < 0:
            raise DiladiffError("need --warmup >= 0, --steps >= 1 and --samples >= 1")
        record = run_benchmark(recipe, args.weights, stages, plan, runtime)
    except DiladiffError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2))
    if not args.no_write:
        out = Path(args.out)
        append_results(record, out, out.with_suffix(".json"))
        print(f"appended to {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
