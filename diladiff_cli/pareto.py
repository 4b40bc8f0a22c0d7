"""Speed-quality sweeps (`pareto`): sample and evaluate a grid of settings, then
tabulate, plot and compare the frontiers.

A recipe's ``pareto`` section lists one or more grids; each grid is the
cartesian product of its lists (model, ncont, ndisc, selection, temperature,
distillation label), and the sweep runs the union of their cells. For each cell
:func:`sample_cell` draws the samples and :class:`~diladiff_cli.evaluate.Evaluator`
scores them; the result is cached as ``<out>/cells/<cell>-<hash>.json``, the
hash covering the cell, the sampling settings, the checkpoint and the
evaluation settings, so an interrupted sweep resumes where it stopped and a
changed setting reruns only what it affects (samples are kept under
``work_dir`` and reused when only the evaluation changed). Each evaluation record
(``<work_dir>/scores/<hash>.json``) and real-text floor (``<work_dir>/floors/``) is
kept there too, so sweeps that share a work_dir and a cell (the experiments of one
scale) score it once.

Outputs under ``out``: ``pareto.csv`` (one row per cell), ``pareto.md`` (the
table, the judge and the real-text floor, the headline), ``floor.json`` and
PNG figures like the paper's.

The headline: at equal quality (MAUVE, or GenPPL), how much cheaper each model
is than the baseline (MDLM): along each model's Pareto frontier (its
non-dominated cells at the frontier temperature), the cost (seconds per sample,
or decoder forward passes) is interpolated as a function of quality, linearly
in (quality, log cost), and the ratio of the two costs is averaged
(geometrically) over the quality range both frontiers cover.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diladiff_cli.checkpoint import atomic_write_bytes, atomic_write_text, read_meta
from diladiff_cli.config.evaluation import EvalConfig, ParetoConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.data import load_data_info
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.evaluate import Evaluator, ReferenceFloor, read_judge_record
from diladiff_cli.sample import meta_path
from diladiff_cli.structs import to_dict
from diladiff_cli.train import Reporter

SAMPLERS = ("mdlm", "ladiff", "diladiff")  # models sample_cell can draw from
HYBRID = ("ladiff", "diladiff")  # latent first: they also need checkpoints["ae"]
COLORS = {"mdlm": "tab:orange", "ladiff": "tab:green", "diladiff": "tab:purple"}
CSV_COLUMNS = (
    "model",
    "ncont",
    "ndisc",
    "selection",
    "temperature",
    "distill",
    "num_samples",
    "forward_passes",
    "forward_passes_latent",
    "tokens_per_forward",
    "genppl",
    "mauve",
    "entropy",
    "seconds_per_sample",
    "latent_share",
    "genppl_floor",
    "judge_valid_ppl",
    "reference_entropy",
    "device",
    "cell",
)


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One point of the sweep (mdlm cells always have ncont 0 and no distill label)."""

    model: str
    ncont: int
    ndisc: int
    selection: str
    temperature: float
    distill: str = ""

    @property
    def checkpoint_key(self) -> str:
        return f"{self.model}/{self.distill}" if self.distill else self.model

    @property
    def series(self) -> str:
        """The curve a cell belongs to in the figures (selection apart)."""
        if self.model == "mdlm":
            return "mdlm"
        parts = [self.model, f"Ncont={self.ncont}"] + ([self.distill] if self.distill else [])
        return " ".join(parts)

    @property
    def name(self) -> str:
        """File-safe, readable id."""
        distill = f"-{self.distill}" if self.distill else ""
        text = (
            f"{self.model}{distill}-nc{self.ncont}-nd{self.ndisc}-{self.selection}"
            f"-T{self.temperature:g}"
        )
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def expand_cells(cfg: ParetoConfig) -> list[Cell]:
    """The union of the grids' cells, in order, without repeats."""
    cells: dict[Cell, None] = {}
    for g in cfg.grids:
        for model, ncont, ndisc, sel, temp, distill in itertools.product(
            g.models, g.ncont, g.ndisc, g.selection, g.temperature, g.distill
        ):
            if model == "mdlm":
                ncont, distill = 0, ""
            cells[Cell(model, ncont, ndisc, sel, float(temp), distill)] = None
    return list(cells)


# ----------------------------------------------------------------------------- sampling


def resolve_checkpoints(cells: list[Cell], cfg: ParetoConfig) -> dict[str, str]:
    """Check, before anything runs, that every cell's model can be sampled.

    Raises:
        DiladiffError: one line naming the model and its missing checkpoint.
    """
    found: dict[str, str] = {}
    for cell in cells:
        key = cell.checkpoint_key
        if key in found:
            continue
        path = cfg.checkpoints.get(key)
        if path is None:
            raise DiladiffError(
                f"pareto: no checkpoint for model '{key}': set pareto.checkpoints.{key}"
            )
        if not Path(path).exists():
            raise DiladiffError(
                f"pareto: model '{key}' needs checkpoint {path}, which does not exist "
                f"(train it first, or drop '{cell.model}' from the grids)"
            )
        if cell.model not in SAMPLERS:
            raise DiladiffError(
                f"pareto: sampling model '{cell.model}' (checkpoint {path}) is not available "
                f"yet; available: {', '.join(SAMPLERS)}"
            )
        found[key] = path
    if any(cell.model in HYBRID for cell in cells):
        ae = cfg.checkpoints.get("ae")
        if ae is None or not Path(ae).exists():
            raise DiladiffError(
                f"pareto: LaDiff / DiLaDiff cells decode with the autoencoder: set "
                f"pareto.checkpoints.ae to an existing `train-ae` checkpoint (got {ae})"
            )
        found["ae"] = ae
    return found


def sample_cell(
    cell: Cell,
    *,
    checkpoint: str,
    num_samples: int,
    batch_size: int,
    seed: int,
    top_p: float,
    out: Path,
    runtime: Runtime,
    precision: Precision,
    autoencoder: str | None = None,
    latent_cache: Path | None = None,
) -> Path:
    """Draw one cell's samples and write them (JSONL + ``.meta.json`` timing record).

    Hybrid cells keep their latents in ``latent_cache`` (see :func:`sample_hybrid`):
    cells that differ only in the discrete stage draw z once, and each still reports
    the latent stage's measured seconds.

    The one place where a model name meets its sampler: LaDiff and DiLaDiff plug
    in here (and in :data:`SAMPLERS`).

    Returns:
        The JSONL path.
    """
    from diladiff_cli.sample import SampleSettings, sample_hybrid, sample_mdlm, write_samples

    settings = SampleSettings(
        num_samples=num_samples,
        batch_size=batch_size,
        ndisc=cell.ndisc,
        selection=cell.selection,  # type: ignore[arg-type]
        temperature=cell.temperature,
        top_p=top_p,
        seed=seed,
    )
    if cell.model == "mdlm":
        if _is_autoencoder(checkpoint):  # the same decoder as LaDiff's, with the null latent
            result = sample_hybrid(
                autoencoder=checkpoint,
                latent_model=None,
                ncont=None,
                settings=settings,
                runtime=runtime,
                precision=precision,
            )
        else:
            result = sample_mdlm(
                checkpoint=checkpoint, settings=settings, runtime=runtime, precision=precision
            )
        write_samples(result, out)
        return out
    if cell.model in HYBRID and autoencoder is not None:
        result = sample_hybrid(
            autoencoder=autoencoder,
            latent_model=checkpoint,
            ncont=cell.ncont or None,
            settings=settings,
            runtime=runtime,
            precision=precision,
            latent_cache=latent_cache,
        )
        write_samples(result, out)
        return out
    raise DiladiffError(
        f"pareto: sampling model '{cell.model}' (checkpoint {checkpoint}) is not available yet"
    )


def _is_autoencoder(path: str) -> bool:
    """Whether ``path`` is a `train-ae` checkpoint (an MDLM cell then decodes with its
    null latent: the MDLM baseline with exactly LaDiff's decoder weights)."""
    try:
        return read_meta(path).stage == "ae"
    except CheckpointError:
        return False


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _checkpoint_identity(path: str) -> dict[str, Any]:
    """What identifies a checkpoint's weights: its metadata, else its size and time."""
    try:
        meta = read_meta(path)
        return {"stage": meta.stage, "step": meta.step, "config": meta.config}
    except CheckpointError:
        stat = Path(path).stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _scorer_identity(name: str) -> Any:
    """What identifies the scorer's weights: a judge's record, the files of another
    local directory, or a hub id's name (a retrained judge invalidates the cache)."""
    path = Path(name)
    if not path.is_dir():
        return name
    record = read_judge_record(name)
    if record is not None:
        return record
    return sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())


# ----------------------------------------------------------------------------- results


def make_row(cell: Cell, record: dict[str, Any]) -> dict[str, Any]:
    """A CSV row from a cell and its :class:`~diladiff_cli.evaluate.EvalRecord` (as a dict)."""
    speed = record["speed"]
    return {
        "model": cell.model,
        "ncont": cell.ncont,
        "ndisc": cell.ndisc,
        "selection": cell.selection,
        "temperature": cell.temperature,
        "distill": cell.distill,
        "num_samples": record["num_samples"],
        "forward_passes": speed["forward_passes_discrete"],
        "forward_passes_latent": speed["forward_passes_latent"],
        "tokens_per_forward": speed["tokens_per_forward"],
        "genppl": record["genppl"],
        "mauve": record["mauve"],
        "entropy": record["entropy"],
        "seconds_per_sample": speed["seconds_per_sample"],
        "latent_share": speed["latent_share"],
        "genppl_floor": record["reference_genppl"],
        "judge_valid_ppl": record["scorer_valid_ppl"],
        "reference_entropy": record["reference_entropy"],
        "device": speed["device"],
        "cell": cell.name,
    }


def row_cell(row: dict[str, Any]) -> Cell:
    return Cell(
        model=row["model"],
        ncont=int(row["ncont"]),
        ndisc=int(row["ndisc"]),
        selection=row["selection"],
        temperature=float(row["temperature"]),
        distill=row["distill"] or "",
    )


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


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of (cost, quality) points, lower cost and higher quality
    being better: sorted by cost, each point better in quality than every cheaper one."""
    out: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or quality > out[-1][1]:
            out.append((cost, quality))
    return out


def speedup_at_equal_quality(
    baseline: list[tuple[float, float]], model: list[tuple[float, float]], *, levels: int = 41
) -> tuple[float, float, float, tuple[float, float]] | None:
    """Ratio of the baseline's cost to the model's at equal quality.

    Args:
        baseline: (cost, quality) points of the baseline, any cells.
        model: (cost, quality) points of the candidate.
        levels: quality levels sampled in the shared range.

    Returns:
        (geometric mean, min, max, (quality low, quality high)) of the ratio, or
        None when the two frontiers share no quality level.
    """
    fa, fb = frontier(baseline), frontier(model)
    lo = max(fa[0][1], fb[0][1])
    hi = min(fa[-1][1], fb[-1][1])
    if lo > hi:
        return None
    q = np.linspace(lo, hi, levels) if hi > lo else np.array([lo])

    def log_cost(front: list[tuple[float, float]]) -> np.ndarray:
        qs = np.array([p[1] for p in front])
        cs = np.log(np.array([p[0] for p in front]))
        return np.interp(q, qs, cs)  # the frontier's quality is increasing

    ratio = log_cost(fa) - log_cost(fb)
    return (
        float(np.exp(ratio.mean())),
        float(np.exp(ratio.min())),
        float(np.exp(ratio.max())),
        (
            float(lo),
            float(hi),
        ),
    )


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
            better = frontier(cand)[0][1] > frontier(base)[-1][1]
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


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    atomic_write_text(path, buf.getvalue())
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


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
        f"seed {settings['seed']}, top-p {settings['top_p']:g}; device {_fmt(rows[0]['device']) if rows else '-'}",
        "",
        "| model | Ncont | Ndisc | selection | T | tokens/fwd | s/sample | latent share "
        "| GenPPL | MAUVE | entropy |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        model = r["model"] + (f" ({r['distill']})" if r["distill"] else "")
        lines.append(
            f"| {model} | {r['ncont']} | {r['ndisc']} | {r['selection']} | {r['temperature']:g} "
            f"| {_fmt(r['tokens_per_forward'])} | {_fmt(r['seconds_per_sample'])} "
            f"| {_fmt(r['latent_share'], 2)} | {_fmt(r['genppl'])} | {_fmt(r['mauve'])} "
            f"| {_fmt(r['entropy'])} |"
        )
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
                    f"| {s.factor_min:.2f}-{s.factor_max:.2f}x | {_fmt(q[0])}-{_fmt(q[1])} |"
                )
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _at_temperature(rows: list[dict[str, Any]], temperature: float) -> list[dict[str, Any]]:
    return [r for r in rows if math.isclose(float(r["temperature"]), temperature)]


def _valid(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _log_axis(ax: Any, which: str, base: int = 10) -> None:
    """A log scale with plain tick labels (1, 2, 4 / 0.5, 1, 2), no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    if base == 10:  # ranges of less than a decade still get a few labels
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _selection_style(selection: str) -> str:
    return "--" if selection == "confidence" else "-"


def plot_pareto(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, temperature: float, path: Path
) -> Path | None:
    """MAUVE and GenPPL vs tokens per forward pass and vs seconds per sample at one
    temperature: one line per model (and per selection rule: dashed = confidence),
    each point labelled with its Ndisc, plus the real-text lines."""
    rows = _at_temperature(rows, temperature)
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    xs = (("tokens_per_forward", "tokens per forward pass (higher is faster)", 2),
          ("seconds_per_sample", "seconds per sample (lower is faster)", 10))  # fmt: skip
    ys = (("mauve", "MAUVE (higher is better)"), ("genppl", "GenPPL (lower is better)"))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((_series_of(r), r["selection"]), []).append(r)
    for i, (xkey, xlabel, base) in enumerate(xs):
        for j, (ykey, ylabel) in enumerate(ys):
            ax = axes[j, i]
            for (series, selection), rs in groups.items():
                pts = sorted(
                    (float(r[xkey]), float(r[ykey]), int(r["ndisc"])) for r in rs if _valid(r[ykey])
                )
                if not pts:
                    continue
                x, y, nd = zip(*pts, strict=True)
                ax.plot(x, y, marker="o", ls=_selection_style(selection),
                        color=COLORS.get(series.split()[0]), label=f"{series}, {selection}")  # fmt: skip
                for xi, yi, n in pts:
                    ax.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(3, 3),
                                fontsize=6, color="0.35")  # fmt: skip
            if ykey == "genppl":
                if floor is not None:
                    ax.axhline(floor.genppl, color="k", ls=":", lw=1,
                               label=f"real text {floor.genppl:.1f}")  # fmt: skip
                _log_axis(ax, "y")
            if ykey == "mauve" and floor is not None and floor.mauve_real is not None:
                ax.axhline(floor.mauve_real, color="k", ls=":", lw=1,
                           label=f"real vs real {floor.mauve_real:.2f}")  # fmt: skip
            _log_axis(ax, "x", base)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(
        f"Speed-quality trade-off (temperature {temperature:g}; point labels: Ndisc; "
        "dashed: confidence selection)"
    )
    fig.tight_layout()
    return _save(fig, path)


def _line_plot(
    groups: dict[tuple, list[dict[str, Any]]],
    *,
    xkey: str,
    xlabel: str,
    title: str,
    style: Any,
    floor: ReferenceFloor | None,
    path: Path,
    xlog: int | None = None,
) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    metrics = (("mauve", "MAUVE (higher is better)"), ("genppl", "GenPPL (lower is better)"),
               ("entropy", "entropy (nats)"))  # fmt: skip
    for ax, (ykey, ylabel) in zip(axes, metrics, strict=True):
        for key, rs in groups.items():
            pts = sorted((float(r[xkey]), float(r[ykey])) for r in rs if _valid(r[ykey]))
            if pts:
                label, color, ls = style(key)
                ax.plot(*zip(*pts, strict=True), marker="o", ls=ls, color=color, label=label)
        if floor is not None:
            ref = {"genppl": floor.genppl, "entropy": floor.entropy, "mauve": floor.mauve_real}[
                ykey
            ]
            if ref is not None:
                ax.axhline(ref, color="k", ls=":", lw=1, label="real text")
        if ykey == "genppl":
            _log_axis(ax, "y")
        if xlog:
            _log_axis(ax, "x", xlog)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _series_of(row: dict[str, Any]) -> str:
    return row_cell(row).series


def plot_selection(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, temperature: float, path: Path
) -> Path | None:
    """Confidence vs random token selection: MAUVE, GenPPL and entropy vs tokens per
    forward pass, one line per (model, selection); dashed = confidence."""
    rows = _at_temperature(rows, temperature)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((_series_of(r), r["selection"]), []).append(r)
    if len({k[1] for k in groups}) < 2:
        return None

    def style(key: tuple) -> tuple[str, Any, str]:
        series, selection = key
        return (
            f"{series}, {selection}",
            COLORS.get(series.split()[0]),
            _selection_style(selection),
        )

    return _line_plot(
        groups,
        xkey="tokens_per_forward",
        xlabel="tokens per forward pass",
        title=f"Confidence vs random token selection (temperature {temperature:g})",
        style=style,
        floor=floor,
        path=path,
        xlog=2,
    )


def plot_temperature(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, path: Path
) -> Path | None:
    """MAUVE, GenPPL and entropy vs decoder temperature, one line per (model,
    selection, Ndisc) swept over at least two temperatures."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((_series_of(r), r["selection"], int(r["ndisc"])), []).append(r)
    groups = {k: v for k, v in groups.items() if len({float(r["temperature"]) for r in v}) > 1}
    if not groups:
        return None

    def style(key: tuple) -> tuple[str, Any, str]:
        series, selection, ndisc = key
        return (
            f"{series}, {selection}, Ndisc={ndisc}",
            COLORS.get(series.split()[0]),
            _selection_style(selection),
        )

    return _line_plot(
        groups,
        xkey="temperature",
        xlabel="decoder temperature",
        title="Temperature sampling",
        style=style,
        floor=floor,
        path=path,
    )


def plot_distill(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, path: Path
) -> Path | None:
    """MeanFlow vs TVM vs the teacher: MAUVE, GenPPL and entropy vs Ncont, one line
    per (model, distillation label, selection, Ndisc, T) with at least two Ncont."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["model"] == "mdlm":
            continue
        key = (
            r["model"],
            r["distill"] or "",
            r["selection"],
            int(r["ndisc"]),
            float(r["temperature"]),
        )
        groups.setdefault(key, []).append(r)
    groups = {k: v for k, v in groups.items() if len({int(r["ncont"]) for r in v}) > 1}
    if not groups:
        return None

    def style(key: tuple) -> tuple[str, Any, str]:
        model, distill, selection, ndisc, temp = key
        name = f"{model} {distill}".strip() + f", {selection}, Ndisc={ndisc}, T={temp:g}"
        return name, None, "--" if model == "ladiff" else "-"

    return _line_plot(
        groups,
        xkey="ncont",
        xlabel="latent steps Ncont",
        title="Distillation: MeanFlow vs TVM vs the teacher across Ncont",
        style=style,
        floor=floor,
        path=path,
        xlog=2,
    )


PLOTS = {
    "pareto": "pareto.png",
    "selection": "confidence_vs_random.png",
    "temperature": "temperature.png",
    "distill": "distill_ncont.png",
}


def write_plots(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, temperature: float, out: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure the rows allow.

    Returns:
        (written figures by name, skipped figures by name with the reason).
    """
    made: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    calls = {
        "pareto": (lambda p: plot_pareto(rows, floor=floor, temperature=temperature, path=p),
                   f"no cells at temperature {temperature:g}"),
        "selection": (lambda p: plot_selection(rows, floor=floor, temperature=temperature, path=p),
                      "needs both random and confidence cells"),
        "temperature": (lambda p: plot_temperature(rows, floor=floor, path=p),
                        "needs cells at two or more temperatures"),
        "distill": (lambda p: plot_distill(rows, floor=floor, path=p),
                    "needs LaDiff/DiLaDiff cells at two or more Ncont"),
    }  # fmt: skip
    for name, (fn, reason) in calls.items():
        path = fn(out / PLOTS[name])
        if path is None:
            skipped[name] = reason
        else:
            made[name] = path
    return made, skipped


# ----------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        rows: one dict per cell (the CSV columns).
        csv: the CSV file.
        table: the Markdown file.
        plots: figures written, by name.
        skipped_plots: figures not drawn, with the reason.
        floor: the judge's perplexity and the real-text scores.
        speedups: the headline.
        cells_run: cells sampled or evaluated in this call.
        cells_cached: cells whose results already existed.
    """

    rows: list[dict[str, Any]]
    csv: Path
    table: Path
    plots: dict[str, Path]
    skipped_plots: dict[str, str]
    floor: ReferenceFloor
    speedups: list[SpeedUp]
    cells_run: int = 0
    cells_cached: int = 0


def run_sweep(
    *,
    cfg: ParetoConfig,
    eval_cfg: EvalConfig,
    data_dir: str | Path,
    runtime: Runtime,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
) -> SweepResult:
    """Sample and evaluate every cell not done yet, then write the CSV, the table,
    the figures and the headline under ``cfg.out``.

    Args:
        cfg: the grids and sampling settings.
        eval_cfg: how samples are scored.
        data_dir: the prepared data (tokenizer, references).
        runtime: device (one process).
        precision: autocast precision of the samplers.
        reporter: progress messages.

    Returns:
        A :class:`SweepResult`.
    """
    cells = expand_cells(cfg)
    checkpoints = resolve_checkpoints(cells, cfg)
    out, work = Path(cfg.out), Path(cfg.work_dir)
    info = load_data_info(data_dir)
    evaluator = Evaluator(cfg=eval_cfg, data_dir=data_dir, device=runtime.device, reporter=reporter)
    eval_id = {
        "eval": to_dict(eval_cfg),
        "data": info.fingerprint,
        "scorer": _scorer_identity(eval_cfg.scorer.name),
    }
    identities = {k: _checkpoint_identity(p) for k, p in checkpoints.items()}
    sampling = {k: getattr(cfg, k) for k in ("num_samples", "batch_size", "seed", "top_p")}
    log = reporter.log if reporter is not None else (lambda _: None)

    rows, run, cached = [], 0, 0
    for n, cell in enumerate(cells, 1):
        sample_key = _digest(
            {"cell": asdict(cell), **sampling, "checkpoint": identities[cell.checkpoint_key],
             "autoencoder": identities.get("ae") if cell.model in HYBRID else None,
             "precision": precision}
        )  # fmt: skip
        eval_key = _digest({"sample": sample_key, **eval_id})
        result_file = out / "cells" / f"{cell.name}-{eval_key}.json"
        tag = f"[{n}/{len(cells)}] {cell.name}"
        if result_file.is_file():
            rows.append(json.loads(result_file.read_text())["row"])
            cached += 1
            log(f"{tag}: done before")
            continue
        samples = work / "samples" / f"{cell.name}-{sample_key}.jsonl"
        if not meta_path(samples).is_file():  # the record is written last
            log(f"{tag}: sampling")
            sample_cell(
                cell,
                checkpoint=checkpoints[cell.checkpoint_key],
                autoencoder=checkpoints.get("ae"),
                out=samples,
                runtime=runtime,
                precision=precision,
                latent_cache=work / "latents",
                **sampling,
            )
        score_file = work / "scores" / f"{eval_key}.json"
        if score_file.is_file():  # scored by another sweep over the same work_dir
            log(f"{tag}: scored before")
            record = json.loads(score_file.read_text())
        else:
            log(f"{tag}: evaluating")
            record = asdict(evaluator.evaluate(samples))
            atomic_write_text(score_file, json.dumps(record, indent=2) + "\n")
        row = make_row(cell, record)
        payload = {"cell": asdict(cell), "sample_key": sample_key, "row": row, "record": record}
        atomic_write_text(result_file, json.dumps(payload, indent=2) + "\n")
        rows.append(row)
        run += 1
        log(
            f"{tag}: GenPPL {row['genppl']:.2f} MAUVE {_fmt(row['mauve'])} entropy "
            f"{row['entropy']:.3f} tokens/fwd {row['tokens_per_forward']:.2f}"
        )

    floor_key = _digest({**eval_id, "num": cfg.num_samples})
    floor, floor_files = None, (out / "floor.json", work / "floors" / f"{floor_key}.json")
    for floor_file in floor_files:
        if floor_file.is_file():
            saved = json.loads(floor_file.read_text())
            if saved.get("key") == floor_key:
                floor = ReferenceFloor(**saved["floor"])
                break
    if floor is None:
        log("real-text floor")
        floor = evaluator.floor(eval_cfg.num_references or cfg.num_samples)
    text = json.dumps({"key": floor_key, "floor": asdict(floor)}, indent=2) + "\n"
    for floor_file in floor_files:
        if not floor_file.is_file() or floor_file.read_text() != text:
            atomic_write_text(floor_file, text)

    speedups = headline(rows, baseline=cfg.baseline, temperature=cfg.frontier_temperature)
    csv_path = write_csv(rows, out / "pareto.csv")
    table = write_markdown(
        rows,
        floor=floor,
        speedups=speedups,
        eval_cfg=eval_cfg,
        settings={**sampling, "baseline": cfg.baseline},
        path=out / "pareto.md",
    )
    plots, skipped = write_plots(rows, floor=floor, temperature=cfg.frontier_temperature, out=out)
    return SweepResult(
        rows=rows,
        csv=csv_path,
        table=table,
        plots=plots,
        skipped_plots=skipped,
        floor=floor,
        speedups=speedups,
        cells_run=run,
        cells_cached=cached,
    )
