"""The paper's six experiments, their recipes, and the commit a result came from.

No torch and no stage is imported here: ``scripts/reproduce.py`` plans the pipeline from
this module and the torch-free :mod:`diladiff_cli.config` and starts at once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# oracle: the embedded default, the tiny sizes on the oracle corpus (exactly scored, CPU);
# tiny: the same sizes on Shakespeare (CPU); paper: the paper's sizes (CUDA, torchrun);
# oracle-gpu: the oracle corpus at L = 128 with an 8x512 DiT (one CUDA GPU, ~10 min).
SCALES = ("oracle", "tiny", "paper", "oracle-gpu")
CPU_SCALES = ("oracle", "tiny")
# Number -> the name of its recipe (recipes/<scale>/<name>.yaml) and of its results directory.
EXPERIMENTS: dict[int, str] = {
    1: "exp1_latent_analysis",
    2: "exp2_ladiff_vs_mdlm",
    3: "exp3_temperature",
    4: "exp4_token_selection",
    5: "exp5_diladiff_frontier",
    6: "exp6_meanflow_vs_tvm",
}
# Experiments 2..6 are `pareto` sweeps; experiment 1 is the latent analysis (ae_report).
SWEEPS: tuple[str, ...] = tuple(EXPERIMENTS[i] for i in range(2, 7))
# The sweep of the headline (DiLaDiff and LaDiff against MDLM). Its cells include
# experiment 2's, so the pipeline runs it first: every cell the headline compares is then
# timed in one sweep, seed by seed (`pareto.sampling_order`), and experiment 2 reuses them.
HEADLINE_SWEEP = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


def recipes_dir(scale: str) -> str:
    """``recipes/<scale>``, relative to the repository root."""
    return f"recipes/{scale}"


def base_recipe(scale: str) -> str:
    """The recipe every stage of a scale trains from: ``default.yaml`` (oracle, tiny,
    oracle-gpu) or ``pipeline.yaml`` (paper), relative to the repository root."""
    return f"{recipes_dir(scale)}/{'pipeline.yaml' if scale == 'paper' else 'default.yaml'}"


def experiment_recipe(scale: str, number: int) -> str:
    """The recipe of experiment ``number`` (1..6) at ``scale``, relative to the repository root."""
    return f"{recipes_dir(scale)}/{EXPERIMENTS[number]}.yaml"


def git_commit(root: str | Path = REPO_ROOT) -> str:
    """The short commit of the checkout at ``root``, with " (uncommitted changes)" when a
    tracked file differs from it; "unknown" outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (uncommitted changes)" if dirty else "")
