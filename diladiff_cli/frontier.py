"""The rows of a sweep, compared and tabulated: Pareto frontiers, the speed-up at
equal quality (the headline), ``pareto.csv`` and ``pareto.md``.

A row is one cell's results, a dict with the keys :data:`CSV_COLUMNS`: each of
:data:`MEASURES` as its mean over the cell's sampling seeds, with that mean's standard
error in ``<measure>_se`` (over the seeds' texts for :data:`TEXT_SE_MEASURES`, over the
seeds for the others; :func:`diladiff_cli.pareto.aggregate` of the seeds' rows, or read
back from a ``pareto.csv``); the frontiers and the headline use the means.

The headline: at equal quality (MAUVE, or GenPPL), how much cheaper each model
is than the baseline (MDLM): along each model's Pareto frontier (its
non-dominated cells at the frontier temperature), the cost (seconds per sample,
or decoder forward passes) is interpolated as a function of quality, linearly
in (quality, log cost), and the ratio of the two costs is averaged
(geometrically) over the quality range both frontiers cover.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diladiff_cli.analysis.verdicts import equal_quality_ratios, geomean, pareto_frontier
from diladiff_cli.config.evaluation import EvalConfig
from diladiff_cli.evaluate import ReferenceFloor
from diladiff_cli.files import atomic_write_text

# Measured once per sampling seed: a cell's row holds the mean over its seeds in column
# ``m`` and the standard error of that mean in ``m_se`` (see diladiff_cli.pareto.aggregate).
MEASURES = (
    "forward_passes",
    "forward_passes_latent",
    "tokens_per_forward",
    "genppl",
    "mauve",
    "entropy",
    "seconds_per_sample",
    "latent_share",
    "oracle_nll",  # the exact scorer's measures: empty unless the corpus is an oracle one
    "oracle_bad_transitions",
    "oracle_purity",
    "oracle_posterior_max",
    "oracle_topic_kl",
    "oracle_oov",
)
# Means over the texts of a seed that each seed's record gives with their standard error
# over its texts (column ``m_se`` of ``pareto_seeds.csv``): a cell's ``m_se`` combines them,
# sqrt(sum se_i^2) / n over its n seeds, about 140 degrees of freedom at 3 x 48 samples
# where the spread of 3 seed means has 2 (results/oracle/se_dof). The samples of a seed
# are independent draws, so the two estimate the same noise.
TEXT_SE_MEASURES = ("oracle_nll",)
CELL_COLUMNS = ("model", "ncont", "ndisc", "selection", "temperature", "distill", "num_samples")
# The same for every seed of a cell: the real-text floor and the judge
REFERENCE_COLUMNS = (
    "genppl_floor",
    "judge_valid_ppl",
    "reference_entropy",
    "oracle_nll_floor",
)
TAIL_COLUMNS = ("device", "cell")
CSV_COLUMNS = (
    *CELL_COLUMNS,
    "seeds",  # sampling seeds averaged
    *itertools.chain.from_iterable((m, f"{m}_se") for m in MEASURES),
    *REFERENCE_COLUMNS,
    *TAIL_COLUMNS,
)
"""``pareto.csv``: one row per cell, the measures as mean and standard error over seeds."""
SEED_CSV_COLUMNS = (
    *CELL_COLUMNS,
    "seed",
    *MEASURES,
    *(f"{m}_se" for m in TEXT_SE_MEASURES),
    *REFERENCE_COLUMNS,
    *TAIL_COLUMNS,
)
"""``pareto_seeds.csv``: one row per (cell, seed), each measure as measured (a mean over
the seed's texts for :data:`TEXT_SE_MEASURES`, with its standard error over them)."""


# ----------------------------------------------------------------------------- headline


@dataclass(frozen=True)
class SpeedUp:
    """How much cheaper ``model`` is than ``baseline`` at equal quality.

    Attributes:
        model: the faster candidate.
        baseline: the reference (MDLM).
        quality: ``"mauve"`` or ``"genppl"``.
        cost: ``"seconds_per_sample"`` or ``"forward_passes"`` (decoder passes).
        factor: geometric mean of baseline cost / model cost over the shared
            quality range (None when the frontiers share no quality level).
        factor_min: smallest ratio over that range.
        factor_max: largest ratio over that range.
        quality_range: the shared range, in the metric's own units.
        note: why there is no factor, when there is none.
    """

    model: str
    baseline: str
    quality: str
    cost: str
    factor: float | None
    factor_min: float | None = None
    factor_max: float | None = None
    quality_range: tuple[float, float] | None = None
    note: str = ""


def speedup_at_equal_quality(
    baseline: list[tuple[float, float]], model: list[tuple[float, float]], *, levels: int = 41
) -> tuple[float, float, float, tuple[float, float]] | None:
    """Ratio of the baseline's cost to the model's at equal quality: both Pareto
    frontiers interpolated linearly in (quality, log cost), the ratio taken at ``levels``
    qualities across their shared range
    (:func:`~diladiff_cli.analysis.verdicts.equal_quality_ratios`).

    Args:
        baseline: (cost, quality) points of the baseline, any cells.
        model: (cost, quality) points of the candidate.
        levels: quality levels sampled in the shared range.

    Returns:
        (geometric mean, min, max, (quality low, quality high)) of the ratio, or
        None when the two frontiers share no quality level.
    """
    shared = equal_quality_ratios(baseline, model, levels)
    if shared is None:
        return None
    qs, ratios = shared
    return geomean(ratios), min(ratios), max(ratios), (qs[0], qs[-1])


def _quality(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value) if metric == "mauve" else -math.log(float(value))


def _cost(row: dict[str, Any], cost: str) -> float:
    if cost == "seconds_per_sample":
        return float(row["seconds_per_sample"])
    return float(row["forward_passes"])


def _points(
    rows: list[dict[str, Any]], model: str, metric: str, cost: str
) -> list[tuple[float, float]]:
    """(cost, quality) of ``model``'s rows that have a value of ``metric``."""
    pts = []
    for r in rows:
        q = _quality(r, metric)
        if r["model"] == model and q is not None:
            pts.append((_cost(r, cost), q))
    return pts


def headline(
    rows: list[dict[str, Any]], *, baseline: str = "mdlm", temperature: float = 1.0
) -> list[SpeedUp]:
    """Speed-ups of every non-baseline model over ``baseline`` at equal quality,
    along the frontiers of their cells at ``temperature``."""
    at_t = [r for r in rows if math.isclose(float(r["temperature"]), temperature)]
    models = sorted({r["model"] for r in at_t} - {baseline})
    out = []
    for model, metric, cost in itertools.product(
        models, ("mauve", "genppl"), ("seconds_per_sample", "forward_passes")
    ):
        base = _points(at_t, baseline, metric, cost)
        cand = _points(at_t, model, metric, cost)
        if not base or not cand:
            out.append(SpeedUp(model, baseline, metric, cost, None, note=f"no {metric} values"))
            continue
        result = speedup_at_equal_quality(base, cand)
        if result is None:
            better = pareto_frontier(cand)[0][1] > pareto_frontier(base)[-1][1]
            note = (
                f"{model}'s cheapest frontier point is better than {baseline}'s best"
                if better
                else f"{model}'s best frontier point is worse than {baseline}'s cheapest"
            )
            out.append(SpeedUp(model, baseline, metric, cost, None, note=note))
            continue
        factor, lo, hi, (qa, qb) = result
        if metric == "genppl":  # back to GenPPL units: quality is -log(GenPPL)
            qa, qb = math.exp(-qb), math.exp(-qa)
        out.append(SpeedUp(model, baseline, metric, cost, factor, lo, hi, (qa, qb)))
    return out


# ----------------------------------------------------------------------------- writers


def write_csv(
    rows: list[dict[str, Any]], path: Path, *, columns: tuple[str, ...] = CSV_COLUMNS
) -> Path:
    """Write ``rows`` as CSV, atomically: the ``columns`` (:data:`CSV_COLUMNS`, or
    :data:`SEED_CSV_COLUMNS` for the rows of single seeds), None as empty.

    Returns:
        ``path``.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table or a log line: ``digits`` significant digits, none after
    the point from 1000 on, ``-`` for None, NaN and infinity."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def fmt_se(row: dict[str, Any], measure: str, digits: int = 3) -> str:
    """A row's mean of ``measure`` with its standard error (``0.91 ± 0.012``), the mean
    alone when there is none (one seed)."""
    mean, se = row.get(measure), row.get(f"{measure}_se")
    if se is None or not math.isfinite(float(se)) or fmt(mean) == "-":
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {float(se):.2g}"


def write_markdown(
    rows: list[dict[str, Any]],
    *,
    floor: ReferenceFloor,
    speedups: list[SpeedUp],
    eval_cfg: EvalConfig,
    settings: dict[str, Any],
    path: Path,
) -> Path:
    """The table, what it was measured with, and the headline."""
    judge = eval_cfg.scorer.name
    lines = [
        "# Speed-quality sweep",
        "",
        f"- GenPPL judge: `{judge}`"
        + (
            f", its own validation perplexity **{floor.scorer_valid_ppl:.2f}**"
            if floor.scorer_valid_ppl is not None
            else ""
        ),
        f"- Real held-out text ({floor.num_references} blocks of the "
        f"`{eval_cfg.reference_split}` split): GenPPL **{floor.genppl:.2f}** (the floor), "
        f"entropy {floor.entropy:.3f}"
        + (
            f", MAUVE against other held-out text {floor.mauve_real:.3f} (the ceiling)"
            if floor.mauve_real is not None
            else ""
        ),
        f"- EOS policy `{eval_cfg.eos}`; MAUVE features `{eval_cfg.mauve.features}` "
        f"({eval_cfg.mauve.featurizer} pooling), seed {eval_cfg.mauve.seed}, "
        f"clusters {'auto (n/10)' if not eval_cfg.mauve.num_clusters else eval_cfg.mauve.num_clusters}, "
        f"scaling {eval_cfg.mauve.scaling:g}",
        f"- Sampling: {settings['num_samples']} samples per cell, batch {settings['batch_size']}, "
        f"seeds {', '.join(str(s) for s in settings['seeds'])}, top-p {settings['top_p']:g}; "
        f"device {fmt(rows[0]['device']) if rows else '-'}",
        "- Each measure: the mean over the sampling seeds ± its standard error (std over "
        "seeds, ddof 1, / sqrt(seeds); none with one seed; the oracle NLL's: over the "
        "texts, sqrt(sum of the seeds' SE^2) / seeds); per-seed values in `pareto_seeds.csv`",
        "",
        "| model | Ncont | Ndisc | selection | T | tokens/fwd | s/sample | latent share "
        "| GenPPL | MAUVE | entropy |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        model = r["model"] + (f" ({r['distill']})" if r["distill"] else "")
        lines.append(
            f"| {model} | {r['ncont']} | {r['ndisc']} | {r['selection']} | {r['temperature']:g} "
            f"| {fmt(r['tokens_per_forward'])} | {fmt_se(r, 'seconds_per_sample')} "
            f"| {fmt(r['latent_share'], 2)} | {fmt_se(r, 'genppl')} | {fmt_se(r, 'mauve')} "
            f"| {fmt_se(r, 'entropy')} |"
        )
    if any(r.get("oracle_nll") is not None for r in rows):
        lines += [
            "",
            "## Exact measures (oracle corpus)",
            "",
            f"NLL per token of held-out text (the entropy rate): "
            f"{fmt(rows[0]['oracle_nll_floor'], 4)}",
            "",
            "| cell | seeds | NLL / token | bad transitions / text | purity | topic KL |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['cell']} | {r['seeds']} | {fmt_se(r, 'oracle_nll', 4)} "
            f"| {fmt_se(r, 'oracle_bad_transitions')} | {fmt_se(r, 'oracle_purity')} "
            f"| {fmt_se(r, 'oracle_topic_kl')} |"
            for r in rows
        ]
    lines += ["", "## Headline: speed-up over the baseline at equal quality", ""]
    if not speedups:
        lines.append(
            f"Only `{settings['baseline']}` cells in this sweep: nothing to compare yet "
            "(LaDiff / DiLaDiff cells appear once their checkpoints exist)."
        )
    else:
        lines += [
            "| model | vs | quality | cost | speed-up (geo. mean) | range | quality range |",
            "| --- | --- | --- | --- | ---: | --- | --- |",
        ]
        for s in speedups:
            if s.factor is None:
                lines.append(
                    f"| {s.model} | {s.baseline} | {s.quality} | {s.cost} | - | {s.note} | - |"
                )
            else:
                q = s.quality_range or (math.nan, math.nan)
                lines.append(
                    f"| {s.model} | {s.baseline} | {s.quality} | {s.cost} | {s.factor:.2f}x "
                    f"| {s.factor_min:.2f}-{s.factor_max:.2f}x | {fmt(q[0])}-{fmt(q[1])} |"
                )
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
