"""The figures of a sweep (matplotlib, PNG): :func:`write_plots` draws every figure
of :data:`PLOTS` that the rows allow.

* ``pareto``: MAUVE and GenPPL vs tokens per forward pass and vs seconds per sample;
* ``selection``: confidence vs random token selection;
* ``temperature``: the metrics vs decoder temperature;
* ``distill``: MeanFlow vs TVM vs the teacher across Ncont.

The rows are those of :mod:`diladiff_cli.frontier` (the ``pareto.csv`` columns): a
measure with a standard error (``<measure>_se``) is drawn with an
error bar of :data:`ERROR_BARS` standard errors each way. The autoregressive baseline
(``ar`` rows: no Ndisc, no selection rule) is one point per temperature, "AR (KV cache)".
matplotlib is imported when a figure is drawn, with the Agg backend.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from diladiff_cli.evaluate import ReferenceFloor
from diladiff_cli.files import atomic_write_bytes

COLORS = {
    "mdlm": "tab:orange",
    "ladiff": "tab:green",
    "diladiff": "tab:purple",
    "ar": "tab:blue",
    "bound": "tab:gray",
}
AR_LABEL = "AR (KV cache)"
BOUND_LABEL = "bound (true topic)"
ERROR_BARS = 2  # bars span ± this many standard errors (the verdicts' K)
PLOTS = {
    "pareto": "pareto.png",
    "selection": "confidence_vs_random.png",
    "temperature": "temperature.png",
    "distill": "distill_ncont.png",
}


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


def _err(row: dict[str, Any], key: str) -> float:
    """Half the error bar of ``key`` in ``row``: :data:`ERROR_BARS` standard errors, 0
    without one."""
    se = row.get(f"{key}_se")
    return ERROR_BARS * float(se) if _valid(se) else 0.0


def _bars_note(rows: list[dict[str, Any]]) -> str:
    """What the error bars are, for a figure's title ("" when no row has any)."""
    seeds = {int(r.get("seeds") or 1) for r in rows} - {1}
    if not seeds:
        return ""
    n = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)}"
    return f"; error bars: ±{ERROR_BARS} SE, {n} sampling seeds"


def _errorbar(ax: Any, rows: list[dict[str, Any]], xkey: str, ykey: str, **style: Any) -> None:
    """One line through the rows with a value of ``ykey``, sorted by ``xkey``, with error
    bars where the rows have standard errors."""
    rs = sorted(
        (r for r in rows if _valid(r[ykey])), key=lambda r: (float(r[xkey]), float(r[ykey]))
    )
    if not rs:
        return
    x, y = [float(r[xkey]) for r in rs], [float(r[ykey]) for r in rs]
    xerr, yerr = [_err(r, xkey) for r in rs], [_err(r, ykey) for r in rs]
    ax.errorbar(x, y, xerr=xerr if any(xerr) else None, yerr=yerr if any(yerr) else None,
                marker="o", capsize=2, elinewidth=0.8, **style)  # fmt: skip


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


def _label(series: str, selection: str) -> str:
    """A curve's legend entry: the series and its selection rule, if it has one."""
    return f"{series}, {selection}" if selection else series


def plot_pareto(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, temperature: float, path: Path
) -> Path | None:
    """MAUVE and GenPPL vs tokens per forward pass and vs seconds per sample at one
    temperature: one line per model (and per selection rule: dashed = confidence),
    each point labelled with its Ndisc (AR: one unlabelled point), error bars where the
    rows have standard errors, plus the real-text lines."""
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
                _errorbar(ax, rs, xkey, ykey, ls=_selection_style(selection),
                          color=COLORS.get(rs[0]["model"]), label=_label(series, selection))  # fmt: skip
                for r in rs:
                    if _valid(r[ykey]) and int(r["ndisc"]):  # ar rows have no Ndisc
                        ax.annotate(str(int(r["ndisc"])), (float(r[xkey]), float(r[ykey])),
                                    textcoords="offset points", xytext=(3, 3), fontsize=6,
                                    color="0.35")  # fmt: skip
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
        f"dashed: confidence selection{_bars_note(rows)})"
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
            label, color, ls = style(key)
            _errorbar(ax, rs, xkey, ykey, ls=ls, color=color, label=label)
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
    fig.suptitle(title + _bars_note([r for rs in groups.values() for r in rs]))
    fig.tight_layout()
    return _save(fig, path)


def _series_of(row: dict[str, Any]) -> str:
    """The curve a row belongs to in the figures (selection apart)."""
    if row["model"] == "ar":
        return AR_LABEL
    if row["model"] == "mdlm":
        return "mdlm"
    if row["model"] == "bound":
        return BOUND_LABEL
    distill = row["distill"] or ""
    parts = [row["model"], f"Ncont={int(row['ncont'])}"] + ([distill] if distill else [])
    return " ".join(parts)


def plot_selection(
    rows: list[dict[str, Any]], *, floor: ReferenceFloor | None, temperature: float, path: Path
) -> Path | None:
    """Confidence vs random token selection: MAUVE, GenPPL and entropy vs tokens per
    forward pass, one line per (model, selection); dashed = confidence. Rows without a
    selection rule (AR) are left out: drawn only when both rules were swept."""
    rows = [r for r in _at_temperature(rows, temperature) if r["selection"]]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], _series_of(r), r["selection"]), []).append(r)
    if len({k[2] for k in groups}) < 2:
        return None

    def style(key: tuple) -> tuple[str, Any, str]:
        model, series, selection = key
        return _label(series, selection), COLORS.get(model), _selection_style(selection)

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
    selection, Ndisc) swept over at least two temperatures (AR: one line)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["model"], _series_of(r), r["selection"], int(r["ndisc"]))
        groups.setdefault(key, []).append(r)
    groups = {k: v for k, v in groups.items() if len({float(r["temperature"]) for r in v}) > 1}
    if not groups:
        return None

    def style(key: tuple) -> tuple[str, Any, str]:
        model, series, selection, ndisc = key
        label = series if model == "ar" else f"{_label(series, selection)}, Ndisc={ndisc}"
        return label, COLORS.get(model), _selection_style(selection)

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
        if r["model"] in ("mdlm", "ar", "bound"):  # no latent steps
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


def plot_gap(rows: list[dict[str, Any]], *, floor: float, path: Path) -> Path:
    """The factorization-gap curve: exact NLL per token of the samples against tokens per
    forward pass (error bars: standard error over sampling seeds), the process's entropy
    rate as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model in sorted({r["model"] for r in rows}):
        mine = sorted(
            (r for r in rows if r["model"] == model), key=lambda r: r["tokens_per_forward"]
        )
        ax.errorbar(
            [r["tokens_per_forward"] for r in mine],
            [r["oracle_nll"] for r in mine],
            yerr=[_err(r, "oracle_nll") for r in mine],
            marker="o",
            capsize=3,
            color=COLORS.get(model, "black"),
            label=f"{model} samples (±{ERROR_BARS} s.e. over seeds)",
        )
    ax.axhline(floor, color="grey", linestyle="--", label=f"entropy rate H = {floor:.3f}")
    _log_axis(ax, "x", base=2)
    ax.set_xlabel("tokens per forward pass")
    ax.set_ylabel("oracle NLL per token (nats)")
    ax.set_title("Factorization gap on the oracle corpus")
    ax.legend(fontsize=8)
    return _save(fig, path)
