"""How steady is a sweep cell's standard error? (issue 13, item 4; results/oracle/se_dof)

For every cell of the five sweeps of each pipeline seed, compares two standard errors of the
cell's mean oracle NLL over its three sampling seeds:

* seed SE: the standard deviation of the three seeds' means / sqrt(3), what pareto.csv
  carries and the verdicts use (2 degrees of freedom);
* sample SE: sqrt(sum of the three seeds' within-set SEs squared) / 3, each within-set SE
  over the seed's 32 or 48 texts (`oracle.nll_per_token_se` in the cell record), about 140
  degrees of freedom.

Both estimate the same thing when the seeds differ only by their samples. Usage (each
argument a run's results directory, its sweeps' cells/ still there):
    python results/oracle/se_dof/se_check.py /tmp/n0/results/oracle \
        /tmp/n1/results/oracle/pipeline_seed1 ...
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from diladiff_cli.analysis.verdicts import mean_and_se


def cell_ses(run: Path) -> list[tuple[str, float, float]]:
    """(cell, seed SE, sample SE) for every cell of run's five sweeps with 3 seeds, each
    cell once (a cell drawn for two sweeps, e.g. exp2's in exp5, is the same samples)."""
    out, seen = [], set()
    for exp in sorted(run.glob("exp*/cells")):
        groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for f in exp.glob("*.json"):
            rec = json.loads(f.read_text())
            oracle = rec["record"].get("oracle")
            if not oracle:
                continue
            key = json.dumps(rec["cell"], sort_keys=True)
            groups[key].append((oracle["nll_per_token"], oracle["nll_per_token_se"]))
        for key, vals in groups.items():
            if len(vals) != 3 or (key, tuple(sorted(vals))) in seen:
                continue
            seen.add((key, tuple(sorted(vals))))
            means = np.array([m for m, _ in vals])
            within = np.array([s for _, s in vals])
            _, seed_se = mean_and_se(means.tolist())  # pareto.csv's oracle_nll_se
            sample_se = math.sqrt((within**2).sum()) / 3
            out.append((key, seed_se, sample_se))
    return out


def main(paths: list[str]) -> None:
    rows = [r for p in paths for r in cell_ses(Path(p))]
    ratio = np.array([a / b for _, a, b in rows if b > 0])
    print(f"cells: {len(ratio)} over {len(paths)} runs")
    print(
        f"seed SE / sample SE: median {np.median(ratio):.2f}, "
        f"quartiles {np.quantile(ratio, 0.25):.2f}-{np.quantile(ratio, 0.75):.2f}"
    )
    for r in (1 / 3, 0.55, 1.0, 2.0):
        print(
            f"  share below {r:.2f}: {np.mean(ratio < r):.2f}"
            f"  (2 degrees of freedom, no extra variance between seeds: {1 - math.exp(-r * r):.2f})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
