"""Write ``<results>/REPORT.md``: what a `scripts/reproduce.py` run measured, against the paper.

Reads, under the results directory: ``timings.json`` (stage wall times), one directory per
experiment (``exp1_latent_analysis/analysis.json``; ``expN_*/pareto.csv``, ``floor.json``
and figures for the sweeps 2..6) and ``prior_quality.json``. Writes the stage wall-time
table with its budget, the headline (experiment 5: DiLaDiff's and LaDiff's speed-up over
MDLM in seconds per sample at equal quality, and the latent's share of the wall time), the
judge and the real-text floor, then one section per experiment: the paper's claim, the
numbers, and a verdict computed from them by the rule it states
(:mod:`diladiff_cli.analysis.verdicts`: means over sampling seeds and their standard
errors; on an oracle corpus the exact NLL is the quality). An input that is missing (its
stage did not run) makes its section say "not run".

Usage: python scripts/report.py [--scale tiny|paper|oracle-gpu] [--results DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diladiff_cli.analysis.experiments import (
    CPU_SCALES,
    EXPERIMENTS,
    HEADLINE_SWEEP,
    SCALES,
    base_recipe,
    experiment_recipe,
    git_commit,
)
from diladiff_cli.analysis.verdicts import (
    ONE_SEED,
    ORACLE_NLL,
    Estimate,
    K,
    Measure,
    SpeedUpBound,
    SpeedUpInterval,
    Verdict,
    agreement,
    any_of,
    by,
    difference,
    dominates,
    equivalent,
    frontier_points,
    gap_closed,
    is_oracle,
    match,
    mean_of,
    monotone,
    not_worse,
    quality_measure,
    read_rows,
    speedup_across_trainings,
    speedup_interval,
    speedup_lower_bound,
    usual,
    valid,
    verdict,
)
from diladiff_cli.config import load_recipe
from diladiff_cli.files import atomic_write_json, atomic_write_text
from diladiff_cli.frontier import headline
from diladiff_cli.plots import PLOTS

ROOT = Path(__file__).resolve().parent.parent
TITLES = {
    1: "Latent space analysis",
    2: "LaDiff vs MDLM: the speed-quality frontier",
    3: "Decoder temperature",
    4: "Confidence-based vs random token selection",
    5: "DiLaDiff: the frontier with distillation",
    6: "MeanFlow vs Terminal Velocity Matching",
}
# The paper's claims, from its project page (/work/shared/paper).
CLAIMS = {
    1: "The latent carries sentence-level semantics: the BERTScore-F1 of decodes from a "
    "noised latent falls monotonically with the noise level, against the clean decode and "
    "against the ground truth; decodes of the same latent with two seeds stay close "
    "(intra-pool) while decodes of two latents diverge sharply (inter-pool).",
    2: "LaDiff (Ncont = 200) sits on a strictly better speed-quality frontier than MDLM: "
    "roughly 7x faster at equal MAUVE and GenPPL, and better at equal throughput.",
    3: "Lowering the decoder temperature collapses MDLM's entropy and MAUVE while LaDiff's "
    "stay put: the latent has absorbed the sentence-level diversity.",
    4: "Confidence-based token selection collapses MDLM, but with LaDiff it matches or beats "
    "random selection at every Ndisc.",
    5: "With Ncont = 5 latent steps DiLaDiff stays on the frontier of its LaDiff teacher at "
    "Ncont = 200 (40x fewer latent steps), and the latent takes ~5 % of the wall time.",
    6: "MeanFlow and Terminal Velocity Matching give nearly identical curves as Ncont sweeps, "
    "and both clearly beat the teacher's ODE at small Ncont.",
}
CPU_BUDGET_S = 20 * 60  # the CPU scales' wall-time budget (oracle, tiny), on 2 cores
GPU_TARGET_S = {"oracle-gpu": 10 * 60}  # what the GPU scale was sized for, on one GPU
LATENT_SHARE_MAX = 0.10  # "negligible" latent time (the paper reports ~5 %)
SMALL_NCONT = 5  # "small Ncont" in experiment 6
GENPPL = Measure("genppl", "GenPPL", "lower", 0.0, "")  # exp. 2 compares it as well as MAUVE
# The smallest effects that count (verdicts.difference): a "collapse" of the unigram
# entropy is more than 0.1 nats (real text: ~4.5), of the topic diversity more than 0.05
# nats of topic KL (its range: 0 to ln 8 = 2.08).
ENTROPY = Measure("entropy", "entropy", "higher", 0.1, "margin 0.1 nats")
TOPIC_KL = Measure("oracle_topic_kl", "topic KL", "lower", 0.05, "margin 0.05 nats")  # collapse
ORACLE_COLUMNS = (
    ("oracle_nll", "NLL / token"),
    ("oracle_bad_transitions", "bad transitions / text"),
    ("oracle_purity", "topic purity"),
    ("oracle_topic_kl", "topic KL"),
    ("seconds_per_sample", "s/sample"),
)
NOISE_RULE = (
    f"a difference is real beyond {K:g} SE of the difference plus the measure's margin (the "
    "smallest effect that counts; none for BERTScore and the shares of experiment 1)"
)
NAMES = {"mdlm": "MDLM", "ladiff": "LaDiff", "diladiff": "DiLaDiff"}
BETTER = {"mauve": "higher", "genppl": "lower"}  # the frontier.headline measures


# ----------------------------------------------------------------------------- inputs


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    if not valid(value):
        return "-"
    value = float(value)
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def pct(value: Any) -> str:
    return f"{100 * float(value):.1f} %" if valid(value) else "-"


def pair(row: dict[str, Any] | None) -> str:
    """MAUVE / GenPPL of a cell."""
    return "-" if row is None else f"{fmt(row['mauve'])} / {fmt(row['genppl'])}"


def with_se(row: dict[str, Any], column: str) -> str:
    """A cell's mean ± its standard error over seeds ("-" without a mean)."""
    e = Estimate.of(row, column)
    return "-" if e is None else fmt(e.mean, 4) + ("" if e.se is None else f" ± {fmt(e.se, 2)}")


def signed(e: Estimate) -> str:
    """A change with its sign, ± its standard error when it has one."""
    return f"{e.mean:+.3g}" + ("" if e.se is None else f" ± {e.se:.2g}")


def table(header: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table; ``header`` is the header row, ``"a | b | c"``."""
    width = len(header.split(" | "))
    lines = [f"| {header} |", "|" + " --- |" * width]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def link(results: Path, path: Path) -> str:
    rel = path.relative_to(results).as_posix()
    return f"[{rel}]({rel})"


def overall_outcome(parts: list[tuple[str, Verdict]]) -> str:
    """An experiment's outcome: the common outcome of its parts, or "mixed"."""
    outcomes = {v.outcome for _, v in parts}
    overall = outcomes.pop() if len(outcomes) == 1 else "mixed"
    if overall == "inconclusive" and any(v.one_seed for _, v in parts):
        overall = f"inconclusive ({ONE_SEED})"
    return overall


def verdict_line(parts: list[tuple[str, Verdict]]) -> str:
    """The one verdict line of an experiment: its overall outcome, then each part's rule
    and numbers."""
    overall = overall_outcome(parts)
    text = " ".join(
        (f"{name[:1].upper() + name[1:]}: *{v.label}*. " if len(parts) > 1 else "")
        + f"Rule: {v.rule}. Measured: {v.measured}."
        for name, v in parts
    )
    return f"**Verdict: {overall}.** {text}"


def _end(value: float | None) -> str:
    """An end of a speed-up interval; "?" where the shifted frontiers share no quality."""
    return fmt(value) if valid(value) else "?"


def interval_text(s: SpeedUpInterval, what: str) -> str:
    """A :class:`~diladiff_cli.analysis.verdicts.SpeedUpInterval`, in words."""
    if s.factor is None:
        return f"at equal {what}: no shared quality range ({s.note})"
    bounds = (
        f"no interval ({ONE_SEED})"
        if s.one_seed
        else f"{_end(s.low)}-{_end(s.high)}x with the qualities and costs shifted by ±{K:g} SE"
    )
    return (
        f"at equal {what} **{s.factor:.2f}x** ({min(s.ratios):.2f}-{max(s.ratios):.2f}x over "
        f"{what} {fmt(min(s.levels), 4)}-{fmt(max(s.levels), 4)}; {bounds})"
    )


def bound_text(b: SpeedUpBound, what: str, model: str) -> str:
    """A :class:`~diladiff_cli.analysis.verdicts.SpeedUpBound` that has a factor (and so
    its two points), in words."""
    name = NAMES.get(model, model)
    caveat = ""
    if b.one_seed:
        caveat = f"; {ONE_SEED}"
    elif b.outcome != "supported":
        caveat = (
            "; a bound at or below 1x says nothing"
            if b.factor <= b.at_least
            else "; not above 1x beyond the costs' noise"
        )
    return (
        f"at equal {what} **≥ {b.factor:.2f}x** (MDLM never reaches {name}'s quality at its "
        f"cheapest point; its best cell costs {fmt(b.baseline.cost)} s, {name}'s cheapest cell "
        f"better than that beyond {K:g} SE {fmt(b.model.cost)} s{caveat})"
    )


def speedup_text(s: Any) -> str:
    """One :class:`~diladiff_cli.frontier.SpeedUp`, in words."""
    what = "MAUVE" if s.quality == "mauve" else "GenPPL"
    if s.factor is None:
        return f"at equal {what}: no shared quality range ({s.note})"
    lo, hi = s.quality_range
    return (
        f"at equal {what} **{s.factor:.2f}x** ({s.factor_min:.2f}-{s.factor_max:.2f}x "
        f"over {what} {fmt(lo)}-{fmt(hi)})"
    )


def nll_speedup(rows: list[dict[str, Any]], model: str) -> SpeedUpInterval:
    """``model``'s speed-up over MDLM in seconds per sample at equal oracle NLL, over
    ``rows`` (one temperature's cells)."""
    return speedup_interval(
        frontier_points(rows, model="mdlm", column=ORACLE_NLL.column),
        frontier_points(rows, model=model, column=ORACLE_NLL.column),
        better=ORACLE_NLL.better,
    )


def speedups(rows: list[dict[str, Any]], model: str, temperature: float) -> list[str]:
    """``model``'s speed-ups over MDLM in seconds per sample, in words: at equal oracle
    NLL with its interval (oracle corpora), then at equal MAUVE and GenPPL."""
    texts = []
    at_t = match(rows, temperature=temperature)

    def bound(column: str, better: Any) -> SpeedUpBound:
        return speedup_lower_bound(
            frontier_points(at_t, model="mdlm", column=column),
            frontier_points(at_t, model=model, column=column),
            better=better,
        )

    if is_oracle(rows):
        s = nll_speedup(at_t, model)
        b = bound(ORACLE_NLL.column, ORACLE_NLL.better) if s.factor is None else None
        text = interval_text(s, ORACLE_NLL.name)
        texts.append(
            text if b is None or b.factor is None else bound_text(b, ORACLE_NLL.name, model)
        )
    found = headline(rows, baseline="mdlm", temperature=temperature)
    for s in found:
        if s.model != model or s.cost != "seconds_per_sample":
            continue
        b = bound(s.quality, BETTER[s.quality]) if s.factor is None else None
        what = "MAUVE" if s.quality == "mauve" else "GenPPL"
        texts.append(
            speedup_text(s) if b is None or b.factor is None else bound_text(b, what, model)
        )
    return texts


def speed_verdict(rows: list[dict[str, Any]], model: str, quality: Measure) -> Verdict:
    """``model``'s speed-up over MDLM at equal ``quality``, judged: the interval of
    :func:`~diladiff_cli.analysis.verdicts.speedup_interval`, or, when the two frontiers
    share no quality range, the lower bound of
    :func:`~diladiff_cli.analysis.verdicts.speedup_lower_bound`."""
    name = NAMES[model]
    base = frontier_points(rows, model="mdlm", column=quality.column)
    cand = frontier_points(rows, model=model, column=quality.column)
    rule = (
        f"{name}'s seconds per sample below MDLM's at equal {quality.name}: the speed-up's "
        f"interval (qualities and seconds shifted by ±{K:g} SE) above 1x; below 1x: not "
        f"supported. When "
        f"{name}'s cheapest cell is already better than MDLM's best, the lower bound MDLM's "
        f"best cell's cost / the cost of {name}'s cheapest cell better than it beyond {K:g} SE, "
        f"above 1x beyond {K:g} SE of the costs (a bound below 1x: inconclusive)"
    )
    s = speedup_interval(base, cand, better=quality.better)
    if s.factor is not None:
        return Verdict(s.outcome, rule, s.measured, one_seed=s.one_seed)
    b = speedup_lower_bound(base, cand, better=quality.better)
    if b.factor is None:
        return Verdict(s.outcome, rule, f"{s.measured}; {b.measured}", one_seed=s.one_seed)
    return Verdict(b.outcome, rule, b.measured, one_seed=b.one_seed)


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class Context:
    results: Path
    scale: str
    seq_len: int
    temperature: float  # the frontier temperature of the sweeps
    # experiment -> {"overall": outcome, "parts": {part: outcome}}: verdicts.json
    verdicts: dict[int, dict[str, Any]] = field(default_factory=dict)

    def verdict(self, experiment: int, parts: list[tuple[str, Verdict]]) -> str:
        """The experiment's verdict line (:func:`verdict_line`), recorded for verdicts.json."""
        self.verdicts[experiment] = {
            "overall": overall_outcome(parts),
            "parts": {name or "verdict": v.label for name, v in parts},
        }
        return verdict_line(parts)


def _floor(directory: Path) -> dict[str, Any] | None:
    saved = read_json(directory / "floor.json")
    return saved.get("floor") if saved else None


def _quality(rows: list[dict[str, Any]], directory: Path) -> Measure:
    return quality_measure(rows, mauve_real=(_floor(directory) or {}).get("mauve_real"))


def _links(ctx: Context, directory: Path) -> list[str]:
    """A line linking the sweep's table and figures, and a blank line (none: nothing)."""
    files = [directory / "pareto.md"] + [directory / name for name in PLOTS.values()]
    found = [link(ctx.results, f) for f in files if f.is_file()]
    return ["Files: " + ", ".join(found) + ".", ""] if found else []


def _oracle_table(rows: list[dict[str, Any]]) -> list[str]:
    """The exact measures of a sweep's cells, mean ± s.e., and a blank line
    (not an oracle corpus: nothing)."""
    if not is_oracle(rows):
        return []
    floor = next((r["oracle_nll_floor"] for r in rows if valid(r.get("oracle_nll_floor"))), None)
    lines = [
        "Exact measures (oracle corpus; mean ± s.e., the NLL's over the texts, the others' over "
        "the sampling seeds; the NLL of held-out "
        f"documents, the floor: {fmt(floor, 4)} nats/token):",
        "",
    ]
    lines += table(
        "cell | seeds | " + " | ".join(name for _, name in ORACLE_COLUMNS),
        [
            [r["cell"], str(r.get("seeds") or 1), *(with_se(r, c) for c, _ in ORACLE_COLUMNS)]
            for r in rows
        ],
    )
    return lines + [""]


# ----------------------------------------------------------------------------- experiments


def exp1(ctx: Context, directory: Path) -> list[str] | None:
    record = read_json(directory / "analysis.json")
    if record is None:
        return None
    n, a = record["nelbo"], record["latent_analysis"]
    lines = [
        f"Validation NELBO (nats/token, {n['blocks']} held-out blocks): decoder with the "
        f"encoder's z {fmt(n['z'], 4)}, with the null latent {fmt(n['null'], 4)}, base MDLM "
        f"{fmt(n['mdlm'], 4)}.",
        "",
    ]
    recon = {(r["ndisc"], r["selection"], r["model"]): r for r in record["reconstruction"]}
    keys = sorted({(k[0], k[1]) for k in recon})
    rows = []
    for ndisc, sel in keys:
        z, null = (
            recon.get((ndisc, sel, "AE, encoder z")),
            recon.get((ndisc, sel, "AE, null latent")),
        )
        rows.append(
            [str(ndisc), sel]
            + [
                f"{fmt(r['token_accuracy'])} / {fmt(r['bertscore_f1'])}" if r else "-"
                for r in (z, null)
            ]
        )
    lines += ["Reconstruction (token accuracy / BERTScore-F1):", ""]
    lines += table("Ndisc | selection | encoder z | null latent", rows) + [""]
    curve = a["curve"]
    exact = any(valid(c.get("topic_kept")) for c in curve)  # an oracle corpus
    lines += [
        f"Latent noise ({a['blocks']} blocks, {a['ndisc']} steps): BERTScore-F1 as z_t = "
        "(1 - t) z + t noise is decoded"
        + (
            "; topic kept (exact, oracle corpus): the share of decodes whose topic, the argmax "
            "of the oracle's posterior of the decoded words, is the source block's"
            if exact
            else ""
        )
        + (
            ". Mean ± s.e. over the blocks (one measurement each)."
            if valid(a.get("intra_pool_se"))
            else "."
        ),
        "",
    ]
    lines += table(
        "t | vs t = 0 decode | vs ground truth" + (" | topic kept" if exact else ""),
        [
            [f"{c['t']:.2f}", with_se(c, "vs_t0_decode"), with_se(c, "vs_ground_truth")]
            + ([with_se(c, "topic_kept")] if exact else [])
            for c in curve
        ],
    )
    pools_exact = valid(a.get("intra_pool_same_topic"))
    lines += [
        "",
        f"Pools, BERTScore-F1: intra-pool (same latent, two seeds) {with_se(a, 'intra_pool')}, "
        f"inter-pool (two latents, same seed) {with_se(a, 'inter_pool')}; two different "
        f"ground-truth blocks {with_se(a, 'ground_truth_vs_other_block')}.",
        "",
    ]
    if pools_exact:
        lines += [
            "Pools, share of pairs decoded with the same topic (exact): intra-pool "
            f"{with_se(a, 'intra_pool_same_topic')}, inter-pool "
            f"{with_se(a, 'inter_pool_same_topic')}; two different ground-truth blocks "
            f"{with_se(a, 'ground_truth_same_topic')}.",
            "",
        ]
    # A point's standard error is in "<key>_se" (records written before them have none:
    # inconclusive). The noise levels and the pools share their blocks; combining their
    # standard errors as if independent overstates the noise of a difference when the
    # measurements are positively correlated, so the rule errs towards inconclusive.
    series = [("vs_t0_decode", "vs t = 0"), ("vs_ground_truth", "vs ground truth")]
    series += [("topic_kept", "topic kept")] if exact else []
    curve_v = verdict(
        "BERTScore vs the t = 0 decode and vs the ground truth"
        + (", and the share of decodes keeping the source's topic," if exact else "")
        + f" fall from t = 0 to t = 1 and no step between noise levels rises; {NOISE_RULE}",
        [
            (name, monotone([Estimate.of(c, key) for c in curve], claim="falls"))
            for key, name in series
        ],
    )
    pool_parts = [
        (
            "BERTScore intra - inter",
            difference(Estimate.of(a, "intra_pool"), Estimate.of(a, "inter_pool"), claim="higher"),
        )
    ]
    if pools_exact:
        intra, inter = (
            Estimate.of(a, "intra_pool_same_topic"),
            Estimate.of(a, "inter_pool_same_topic"),
        )
        pool_parts.append(("same topic intra - inter", difference(intra, inter, claim="higher")))
    pool_v = verdict(
        "intra-pool BERTScore higher than inter-pool"
        + (
            ", and the intra-pool's share of same-topic pairs higher than the inter-pool's"
            if pools_exact
            else ""
        )
        + f"; {NOISE_RULE}",
        pool_parts,
    )
    analysis_md = directory / "analysis.md"
    if analysis_md.is_file():
        lines += [f"Files: {link(ctx.results, analysis_md)}.", ""]
    if not valid(a.get("intra_pool_se")):
        lines += [
            "This analysis.json has no standard errors over the blocks (written before "
            "`scripts/ae_report.py` recorded them): rerun the latent-analysis stage.",
            "",
        ]
    return lines + [ctx.verdict(1, [("noise curve", curve_v), ("pools", pool_v)])]


def exp2(ctx: Context, directory: Path) -> list[str] | None:
    rows = read_rows(directory / "pareto.csv")
    if not rows:
        return None
    quality = _quality(rows, directory)
    at = dict(selection="random", temperature=ctx.temperature)
    mdlm, ladiff = by(rows, "ndisc", model="mdlm", **at), by(rows, "ndisc", model="ladiff", **at)
    ndiscs = sorted(set(mdlm) | set(ladiff))
    lines = table(
        "Ndisc | tokens/fwd | MDLM MAUVE / GenPPL | LaDiff MAUVE / GenPPL | MDLM s/sample "
        "| LaDiff s/sample",
        [
            [
                str(n),
                fmt((mdlm.get(n) or ladiff.get(n))["tokens_per_forward"]),
                pair(mdlm.get(n)),
                pair(ladiff.get(n)),
                fmt((mdlm.get(n) or {}).get("seconds_per_sample")),
                fmt((ladiff.get(n) or {}).get("seconds_per_sample")),
            ]
            for n in ndiscs
        ],
    )
    lines += [
        "",
        "Speed-up of LaDiff over MDLM in seconds per sample: "
        + ("; ".join(speedups(rows, "ladiff", ctx.temperature)) or "no LaDiff cells")
        + ".",
        "",
    ]
    lines += _oracle_table(match(rows, **at)) + _links(ctx, directory)

    measures = [quality] if quality == ORACLE_NLL else [quality, GENPPL]
    parts = [
        (f"{m.name} at Ndisc {n}", difference(la, md, claim=m.better, margin=m.margin))
        for n in ndiscs
        for m in measures
        if (la := Estimate.of(ladiff.get(n), m.column)) is not None
        and (md := Estimate.of(mdlm.get(n), m.column)) is not None
    ]
    names = " and ".join(f"{m.name} ({m.better} is better)" for m in measures)
    throughput = verdict(
        f"at equal Ndisc LaDiff's {names} better than MDLM's at one Ndisc or more and "
        f"worse at none; {NOISE_RULE} (LaDiff - MDLM below)",
        parts,
        combine=dominates,
    )
    speed = speed_verdict(match(rows, **at), "ladiff", quality)
    return lines + [ctx.verdict(2, [("equal throughput", throughput), ("equal quality", speed)])]


def exp3(ctx: Context, directory: Path) -> list[str] | None:
    rows = read_rows(directory / "pareto.csv")
    if not rows:
        return None
    quality = _quality(rows, directory)
    rows = match(rows, selection="random")
    ndisc = usual(rows, "ndisc")
    mdlm = by(rows, "temperature", model="mdlm", ndisc=ndisc)
    ladiff = by(rows, "temperature", model="ladiff", ndisc=ndisc)
    temps = sorted(set(mdlm) | set(ladiff))

    def cols(r: dict[str, Any] | None) -> list[str]:
        return [fmt(r["mauve"]), fmt(r["entropy"]), fmt(r["genppl"])] if r else ["-"] * 3

    lines = [f"Ndisc = {ndisc}, random selection.", ""]
    lines += table(
        "T | MDLM MAUVE | MDLM entropy | MDLM GenPPL | LaDiff MAUVE | LaDiff entropy "
        "| LaDiff GenPPL",
        [[f"{t:g}", *cols(mdlm.get(t)), *cols(ladiff.get(t))] for t in temps],
    )
    lines += ["", *_oracle_table(match(rows, ndisc=ndisc)), *_links(ctx, directory)]
    # the collapse shows in MAUVE, or on an oracle corpus in the topics the samples cover
    diversity = TOPIC_KL if quality == ORACLE_NLL else quality
    both = [t for t in temps if t in mdlm and t in ladiff]
    parts = []
    for m in (diversity, ENTROPY):
        if len(both) < 2:
            break
        lo, hi = both[0], both[-1]
        change = {}  # lowest T minus T = 1, per model
        for name, cells in (("MDLM", mdlm), ("LaDiff", ladiff)):
            top, low = Estimate.of(cells[hi], m.column), Estimate.of(cells[lo], m.column)
            if top is not None and low is not None:
                change[name] = low - top
        if len(change) < 2:
            continue
        part = verdict(
            f"from T = {hi:g} to T = {lo:g} LaDiff's {m.name} ({m.better} is better) moves "
            f"less the worse way than MDLM's: its change {m.better} than MDLM's; {NOISE_RULE}",
            [
                (
                    f"change MDLM {signed(change['MDLM'])}, LaDiff {signed(change['LaDiff'])}; "
                    "LaDiff - MDLM",
                    difference(change["LaDiff"], change["MDLM"], claim=m.better, margin=m.margin),
                )
            ],
        )
        parts.append((m.name, part))
    if not parts:
        rule = f"LaDiff's {diversity.name} and entropy move less than MDLM's"
        return lines + [ctx.verdict(3, [("", Verdict("inconclusive", rule, "too few cells"))])]
    return lines + [ctx.verdict(3, parts)]


def exp4(ctx: Context, directory: Path) -> list[str] | None:
    rows = read_rows(directory / "pareto.csv")
    if not rows:
        return None
    quality = _quality(rows, directory)
    t = ctx.temperature
    cell = {
        (m, s): by(rows, "ndisc", model=m, selection=s, temperature=t)
        for m in ("mdlm", "ladiff")
        for s in ("random", "confidence")
    }
    ndiscs = sorted({n for d in cell.values() for n in d})
    lines = ["MAUVE / GenPPL per cell.", ""]
    lines += table(
        "Ndisc | MDLM random | MDLM confidence | LaDiff random | LaDiff confidence",
        [[str(n)] + [pair(cell[k].get(n)) for k in cell] for n in ndiscs],
    )
    lines += ["", *_oracle_table(match(rows, temperature=t)), *_links(ctx, directory)]

    def pairs(model: str) -> list[tuple[int, Estimate, Estimate]]:
        """(Ndisc, confidence, random) estimates of ``model``."""
        ran, con = cell[(model, "random")], cell[(model, "confidence")]
        out = []
        for n in ndiscs:
            c, r = Estimate.of(con.get(n), quality.column), Estimate.of(ran.get(n), quality.column)
            if c is not None and r is not None:
                out.append((n, c, r))
        return out

    matches = verdict(
        f"at every Ndisc LaDiff's {quality.name} with confidence selection not worse than "
        f"with random by more than the margin ({quality.better} is better; {quality.margin_text}"
        f"; {NOISE_RULE}; confidence - random, worse way positive, below)",
        [
            (f"Ndisc {n}", not_worse(c, r, margin=quality.margin, better=quality.better))
            for n, c, r in pairs("ladiff")
        ],
    )
    collapse = verdict(
        f"MDLM's {quality.name} with confidence selection worse than with random at one "
        f"Ndisc or more; {NOISE_RULE} (confidence - random below)",
        [
            (f"Ndisc {n}", difference(c, r, claim=quality.worse, margin=quality.margin))
            for n, c, r in pairs("mdlm")
        ],
        combine=any_of,
    )
    return lines + [
        ctx.verdict(4, [("LaDiff matches random", matches), ("MDLM collapses", collapse)])
    ]


def latent_shares(
    ctx: Context, rows: list[dict[str, Any]]
) -> tuple[Estimate | None, Estimate | None]:
    """DiLaDiff's latent share at Ncont = 5: mean over its Ndisc, and at Ndisc = L/16."""
    cells = by(
        rows, "ndisc", model="diladiff", ncont=5, selection="random", temperature=ctx.temperature
    )
    shares = {n: e for n, r in cells.items() if (e := Estimate.of(r, "latent_share")) is not None}
    if not shares:
        return None, None
    return mean_of(list(shares.values())), shares.get(ctx.seq_len // 16)


def exp5(ctx: Context, directory: Path) -> list[str] | None:
    rows = read_rows(directory / "pareto.csv")
    if not rows:
        return None
    quality = _quality(rows, directory)
    at = dict(selection="random", temperature=ctx.temperature)
    models = {m: by(rows, "ndisc", model=m, **at) for m in ("mdlm", "ladiff", "diladiff")}
    ndiscs = sorted({n for d in models.values() for n in d})

    def col(m: str, n: int, key: str) -> str:
        return fmt((models[m].get(n) or {}).get(key))

    lines = table(
        "Ndisc | tokens/fwd | MDLM MAUVE / GenPPL | LaDiff MAUVE / GenPPL "
        "| DiLaDiff MAUVE / GenPPL | s/sample MDLM / LaDiff / DiLaDiff "
        "| latent share LaDiff / DiLaDiff",
        [
            [
                str(n),
                fmt(next(d[n] for d in models.values() if n in d)["tokens_per_forward"]),
                *(pair(models[m].get(n)) for m in models),
                " / ".join(col(m, n, "seconds_per_sample") for m in models),
                " / ".join(
                    pct((models[m].get(n) or {}).get("latent_share"))
                    for m in ("ladiff", "diladiff")
                ),
            ]
            for n in ndiscs
        ],
    )
    lines += ["", *_oracle_table(match(rows, **at)), *_links(ctx, directory)]
    teacher, student = models["ladiff"], models["diladiff"]
    front = verdict(
        f"at every Ndisc DiLaDiff's {quality.name} not worse than LaDiff's by more than the "
        f"margin ({quality.better} is better; {quality.margin_text}; {NOISE_RULE}; "
        "DiLaDiff - LaDiff, worse way positive, below)",
        [
            (f"Ndisc {n}", not_worse(s, t, margin=quality.margin, better=quality.better))
            for n in ndiscs
            if (s := Estimate.of(student.get(n), quality.column)) is not None
            and (t := Estimate.of(teacher.get(n), quality.column)) is not None
        ],
    )
    mean, _ = latent_shares(ctx, rows)
    rule = (
        f"DiLaDiff's mean latent share at Ncont = 5 below {pct(LATENT_SHARE_MAX)} by more "
        f"than {K:g} SE; above it by more: not supported"
    )
    if mean is None:
        share = Verdict("inconclusive", rule, "no latent share")
    else:
        bound = not_worse(mean, Estimate(0.0, 0.0), margin=LATENT_SHARE_MAX, better="lower")
        se = "" if mean.se is None else f" ± {pct(mean.se)}"
        share = Verdict(bound.outcome, rule, f"{pct(mean.mean)}{se}", one_seed=bound.one_seed)
    speed = speed_verdict(match(rows, **at), "diladiff", quality)
    return lines + [
        ctx.verdict(
            5, [("frontier", front), ("latent share", share), ("speed-up over MDLM", speed)]
        )
    ]


def exp6(ctx: Context, directory: Path) -> list[str] | None:
    rows = read_rows(directory / "pareto.csv")
    if not rows:
        return None
    quality = _quality(rows, directory)
    rows = match(rows, selection="random", temperature=ctx.temperature)
    ndisc = usual(rows, "ndisc")
    teacher = by(rows, "ncont", model="ladiff", ndisc=ndisc)
    labels = sorted({r["distill"] for r in rows if r["model"] == "diladiff"})
    students = {s: by(rows, "ncont", model="diladiff", distill=s, ndisc=ndisc) for s in labels}
    nconts = sorted(set(teacher) | {n for d in students.values() for n in d})
    lines = [f"MAUVE / GenPPL per cell, Ndisc = {ndisc}.", ""]
    lines += table(
        " | ".join(["Ncont", "teacher (LaDiff ODE)", *labels]),
        [
            [str(n), pair(teacher.get(n)), *(pair(students[s].get(n)) for s in labels)]
            for n in nconts
        ],
    )
    lines += ["", *_oracle_table(match(rows, ndisc=ndisc)), *_links(ctx, directory)]

    def est(cells: dict[Any, dict[str, Any]], n: int) -> Estimate | None:
        return Estimate.of(cells.get(n), quality.column)

    same = []  # MeanFlow against TVM, per schedule and Ncont
    for label in labels:
        if not label.startswith("meanflow"):
            continue
        other = students.get("tvm" + label[len("meanflow") :], {})
        for n in sorted(students[label]):
            mf, tvm = est(students[label], n), est(other, n)
            if mf is not None and tvm is not None:
                schedule = label[len("meanflow-") :]
                same.append((f"{schedule}@{n}", equivalent(mf, tvm, margin=quality.margin)))
    agree = verdict(
        f"at every schedule and Ncont MeanFlow's and TVM's {quality.name} differ by less than "
        f"the margin ({quality.margin_text}; {NOISE_RULE}; MeanFlow - TVM below)",
        same,
    )
    beats = [
        (f"{s}@{n}", difference(st, te, claim=quality.better, margin=quality.margin))
        for s in labels
        for n in sorted(students[s])
        if n <= SMALL_NCONT
        and (st := est(students[s], n)) is not None
        and (te := est(teacher, n)) is not None
    ]
    beat = verdict(
        f"every student's {quality.name} better than the teacher's ({quality.better} is "
        f"better) at every Ncont <= {SMALL_NCONT}; {NOISE_RULE} (student - teacher below)",
        beats,
    )
    return lines + [ctx.verdict(6, [("objectives agree", agree), ("beat the teacher", beat)])]


SECTIONS: dict[int, Callable[[Context, Path], list[str] | None]] = {
    1: exp1,
    2: exp2,
    3: exp3,
    4: exp4,
    5: exp5,
    6: exp6,
}

STAGE_OF = {
    1: "latent-analysis",
    2: "pareto-exp2",
    3: "pareto-exp3",
    4: "pareto-exp4",
    5: "pareto-exp5",
    6: "pareto-exp6",
}


# ----------------------------------------------------------------------------- the report


def minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def pipeline_wall(entries: Iterable[dict[str, Any]]) -> float:
    """The pipeline's wall time from its stages' entries in ``timings.json``: the length of
    the union of their intervals (``started`` to ``started + seconds``), so that two stages
    that ran side by side count once; a stage recorded without ``started`` adds its
    seconds. One stage after another, it is the sum of their seconds."""
    spans, wall = [], 0.0
    for e in entries:
        seconds = float(e.get("seconds") or 0.0)
        if isinstance(e.get("started"), int | float):
            spans.append((float(e["started"]), float(e["started"]) + seconds))
        else:
            wall += seconds
    end = -math.inf
    for lo, hi in sorted(spans):
        wall += max(0.0, hi - max(lo, end))
        end = max(end, hi)
    return wall


def timings_section(ctx: Context, timings: dict[str, Any] | None) -> list[str]:
    lines = ["## Stage wall times", ""]
    if not timings or not timings.get("stages"):
        return lines + ["Not run: no `timings.json` (run `python scripts/reproduce.py`)."]
    rows, total, partial, beside = [], 0.0, False, False
    entries = {n: e for n, e in timings["stages"].items() if n != "report"}  # report: writing
    for name, e in entries.items():
        rc = e.get("returncode", 0)
        if rc != 0:
            status = "interrupted" if rc == 130 else f"failed (exit {rc})"
        elif e.get("skipped"):
            status = "skipped: up to date (the time of the run that did it)"
        elif e.get("partial"):
            status = f"done, {e['partial']} (the time of the redone part only)"
            partial = True
        else:
            status = "done"
        if e.get("threads"):
            status += f"; beside another stage, {e['threads']} thread{'s' * (e['threads'] != 1)}"
            beside = True
        total += float(e.get("seconds") or 0.0)
        rows.append([name, minutes(float(e.get("seconds") or 0.0)), status, str(e.get("when"))])
    wall = pipeline_wall(entries.values())
    if beside:
        rows.append(["**sum of the stages**", f"**{minutes(total)}**", "", ""])
        rows.append(["**total (wall)**", f"**{minutes(wall)}**", "", ""])
    else:
        rows.append(["**total**", f"**{minutes(total)}**", "", ""])
    lines += table("stage | wall time | status | when", rows) + [""]
    if beside:
        lines.append(
            'Stages marked "beside another stage" ran two at a time (`--jobs 2`), each on '
            "its share of the threads; the wall time counts the time they overlapped once."
        )
    if ctx.scale in CPU_SCALES:
        within = wall <= CPU_BUDGET_S
        lines.append(
            f"Budget: <= {CPU_BUDGET_S // 60} min on 2 CPU cores for the {ctx.scale} scale; this "
            f"pipeline's stages took {wall / 60:.1f} min of wall time: "
            + ("within the budget." if within else f"over the {CPU_BUDGET_S // 60}-min budget.")
        )
    elif ctx.scale in GPU_TARGET_S:
        target = GPU_TARGET_S[ctx.scale] // 60
        lines.append(
            f"Target: about {target} min on one GPU for the {ctx.scale} scale (an estimate "
            f"made before any run, {base_recipe(ctx.scale)}); this pipeline's stages "
            f"took {wall / 60:.1f} min of wall time."
        )
    else:
        lines.append(
            "No wall-time budget at the paper scale: the GPU-hour estimates are in "
            "the headers of recipes/paper/*.yaml."
        )
    lines.append(
        "A skipped stage counts the run that did its work, so the total is the whole "
        "pipeline's cost; every command is in timings.json."
        if not partial
        else "A skipped stage counts the run that did its work, but a stage that found part "
        "of its work cached counts only the part it redid: this total understates the "
        "whole pipeline's cost. Every command is in timings.json."
    )
    return lines


def headline_section(ctx: Context) -> list[str]:
    directory = ctx.results / EXPERIMENTS[HEADLINE_SWEEP]
    rows = read_rows(directory / "pareto.csv")
    lines = [f"## Headline (experiment {HEADLINE_SWEEP})", ""]
    if not rows:
        return lines + [
            f"Not run: no `{EXPERIMENTS[HEADLINE_SWEEP]}/pareto.csv` "
            f"(stage pareto-exp{HEADLINE_SWEEP})."
        ]
    for model, name in (("diladiff", "DiLaDiff"), ("ladiff", "LaDiff")):
        if not match(rows, model=model):
            lines.append(f"- {name} vs MDLM: no {name} cells.")
            continue
        lines.append(
            f"- {name} vs MDLM, seconds per sample: "
            + "; ".join(speedups(rows, model, ctx.temperature))
            + "."
        )
    mean, at_l16 = latent_shares(ctx, rows)
    lines.append(
        f"- DiLaDiff's latent share of the wall time at Ncont = 5: "
        f"{pct(mean.mean if mean else None)} on average over its Ndisc, "
        f"{pct(at_l16.mean if at_l16 else None)} at Ndisc = L/16 = {ctx.seq_len // 16} "
        "(paper: ~5 %)."
    )
    lines += reference_rows(ctx, rows)
    lines += [
        "",
        "Speed-ups are geometric means of the cost ratio along the two frontiers over "
        "the quality range they share (`diladiff_cli.frontier.headline`; at equal oracle NLL "
        "`diladiff_cli.analysis.verdicts.speedup_interval`, whose interval shifts every "
        f"cell's quality and seconds per sample by ±{K:g} standard errors; the cells are "
        "sampled seed by seed, so the machine's drift in speed shows in the seconds' "
        "standard errors, `diladiff_cli.pareto.sampling_order`).",
    ]
    return lines


def reference_rows(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    """The autoregressive baseline's quality and cost beside the diffusion models, and the
    share of the MDLM-to-bound gap (the decoder given the true topic) that LaDiff and
    DiLaDiff close at each Ndisc: the two rows that say what the numbers mean."""
    if not is_oracle(rows):
        return []
    lines = []
    ar = match(rows, model="ar")
    if ar:
        nll, sec = Estimate.of(ar[0], ORACLE_NLL.column), Estimate.of(ar[0], "seconds_per_sample")
        best = {
            m: min(match(rows, model=m), key=lambda r: float(r[ORACLE_NLL.column]), default=None)
            for m in ("mdlm", "ladiff", "diladiff")
        }
        beside = "; ".join(
            f"{name} at its best Ndisc = {r['ndisc']}: oracle NLL "
            f"{Estimate.of(r, ORACLE_NLL.column)}, {Estimate.of(r, 'seconds_per_sample')} s"
            for name, r in (
                ("MDLM", best["mdlm"]),
                ("LaDiff", best["ladiff"]),
                ("DiLaDiff", best["diladiff"]),
            )  # fmt: skip
            if r is not None
        )
        lines.append(
            f"- Autoregressive baseline (a causal LM of the MDLM's size, KV cache, one token per "
            f"forward pass): oracle NLL {nll} nats/token at {sec} s per sample"
            + (f" ({beside})." if beside else ".")
        )
    lines += regime_line(rows)
    bound = by(rows, "ndisc", model="bound")
    if not bound:
        return lines
    mdlm = by(rows, "ndisc", model="mdlm")
    models = {m: by(rows, "ndisc", model=m) for m in ("ladiff", "diladiff")}
    parts = []
    for ndisc in sorted(set(bound) & set(mdlm)):  # most tokens per pass first
        base = Estimate.of(mdlm[ndisc], ORACLE_NLL.column)
        ceiling = Estimate.of(bound[ndisc], ORACLE_NLL.column)
        shares = [
            (NAMES[m], gap_closed(base, Estimate.of(cells[ndisc], ORACLE_NLL.column), ceiling))
            for m, cells in models.items()
            if ndisc in cells
        ]
        if not shares:
            continue
        if shares[0][1] is None:  # the gap is the same for every model
            text = f"no gap to close (bound {ceiling} vs MDLM {base}: not better beyond {K:g} SE)"
        else:
            text = ", ".join(
                f"{name} {share.mean:.0%}" + ("" if share.se is None else f" ± {share.se:.0%}")
                for name, share in shares
            )
        parts.append(f"at {ctx.seq_len // ndisc} tokens/pass {text}")
    if parts:
        lines.append(
            "- Share of the MDLM-to-bound gap in oracle NLL closed (the bound: the same "
            "decoder given the true topic; ± 1 SE): " + "; ".join(parts) + "."
        )
    return lines


def regime_line(rows: list[dict[str, Any]]) -> list[str]:
    """Has the base MDLM learnt to infer the document's topic? The topic purity of its
    samples at its best Ndisc beside the autoregressive baseline's: what decides, on the
    oracle corpus, whether a latent has anything to add (docs/oracle.md)."""
    mdlm = max(match(rows, model="mdlm"), key=lambda r: int(r["ndisc"]), default=None)
    ar = match(rows, model="ar")
    if mdlm is None or not mdlm.get("oracle_purity"):
        return []
    reference = f", against {Estimate.of(ar[0], 'oracle_purity')} for the AR baseline" if ar else ""
    return [
        f"- Has the MDLM learnt to infer the document's topic? The topic purity of its samples "
        f"at Ndisc = {mdlm['ndisc']}: {Estimate.of(mdlm, 'oracle_purity')}{reference} (a "
        "held-out document: about 1). The less of the topic the MDLM has learnt, the more "
        "a latent has to add. When it learns it depends on the training seed "
        "(results/oracle/mdlm_transition): this, not the sampling, is what separated two "
        "trainings' verdicts when the default's MDLM trained fewer steps (docs/oracle.md)."
    ]


def other_trainings(results: Path) -> list[Path]:
    """The results of the other seeds of the whole pipeline beside this one
    (``results/<scale>`` and its ``pipeline_seed<N>/``, as ``reproduce.py --seed`` writes
    them) that have a ``verdicts.json``."""
    if results.name.startswith("pipeline_seed"):
        candidates = [results.parent, *sorted(results.parent.glob("pipeline_seed*"))]
    else:
        candidates = sorted(results.glob("pipeline_seed*"))
    return [c for c in candidates if c != results and (c / "verdicts.json").is_file()]


def run_name(ctx: Context, other: Path) -> str:
    """How the report names another pipeline seed's results: its folder, or "seed 0" for
    the ``results/<scale>`` that holds this run's folder."""
    return "seed 0" if other == ctx.results.parent else other.name


def trainings_section(ctx: Context, others: list[Path]) -> list[str]:
    """This run's verdicts beside those of the other pipeline seeds (``others``, from
    :func:`other_trainings`): which claims stand across trainings, which the training
    decides."""
    runs = [{f"exp{i}": v for i, v in ctx.verdicts.items()}]
    runs += [read_json(o / "verdicts.json") or {} for o in others]
    rows = agreement(runs)
    names = ["this run"]
    for o in others:
        rel = Path(os.path.relpath(o / "REPORT.md", ctx.results)).as_posix()
        names.append(f"[{run_name(ctx, o)}]({rel})")
    same = sum(r.agree for r in rows)
    return [
        "## Across trainings",
        "",
        f"The verdicts of this run beside those of {len(others)} other seed(s) of the whole "
        "pipeline (`make reproduce SEED=N`, every training and sampling seed changed). A part "
        "on which they differ is decided by the training, not by this run's sampling noise: "
        f"read it as *depends on the training*. {same} of {len(rows)} parts agree.",
        "",
        *table(
            "experiment | part | " + " | ".join(names) + " | agree",
            [[r.experiment, r.part, *r.outcomes, "yes" if r.agree else "**no**"] for r in rows],
        ),
        *pooled_speedups(ctx, others),
    ]


def timing_machine(results: Path, rows: list[dict[str, Any]]) -> str:
    """What a run's headline seconds were measured on: the device of its experiment-5
    sweep (``rows``, its ``pareto.csv``: the GPU's name, or the CPU with its thread count)
    and, on a CPU, the CPU model ``reproduce.py`` records in ``timings.json``."""
    device = "; ".join(sorted({r["device"] for r in rows})) or "unknown device"
    if not device.startswith("cpu"):
        return device
    cpu = ((read_json(results / "timings.json") or {}).get("conditions") or {}).get("cpu")
    return f"{cpu or 'unknown CPU'}, {device}"


def pooled_speedups(ctx: Context, others: list[Path]) -> list[str]:
    """The headline speed-ups at equal oracle NLL of this run and those of ``others``
    timed on the same machine (:func:`timing_machine`), taken together
    (:func:`~diladiff_cli.analysis.verdicts.speedup_across_trainings`): a verdict on the
    recipe whose noise includes the training's. A speed-up in seconds belongs to the
    machine as well as to the models (two CPU types' runs of the oracle default differ by
    2.5 SE in it, docs/oracle.md), so runs timed elsewhere are named and left out. Nothing
    off oracle corpora or when a run has no experiment-5 sweep."""
    sweep = EXPERIMENTS[HEADLINE_SWEEP]
    tables = {r: read_rows(r / sweep / "pareto.csv") or [] for r in (ctx.results, *others)}
    if not all(is_oracle(t) for t in tables.values()):
        return []
    machines = {r: timing_machine(r, t) for r, t in tables.items()}
    machine = machines[ctx.results]
    elsewhere = [o for o in others if machines[o] != machine]
    lines = [
        "",
        "The headline across these trainings. Rule: the geometric mean of the runs' speed-ups "
        "over MDLM at equal oracle NLL (each run's headline factor), its interval "
        f"±{K:g} standard errors of the mean log factor over the trainings, which covers "
        "what changes between trainings as each run's own interval does not; above 1x: "
        "supported, below: not supported. With a handful of trainings the standard error is "
        "itself rough (±2 SE over 4 runs, for example, is about an 86 % interval). Only runs "
        f"timed on this run's machine ({machine}) are pooled: a speed-up in seconds belongs "
        "to the machine as well as to the models.",
        "",
    ]
    for other in elsewhere:
        lines.append(
            f"- Left out: {run_name(ctx, other)}, timed on "
            f"{machines[other]} (its verdicts are in the table above)."
        )
    pooled_tables = [t for r, t in tables.items() if machines[r] == machine]
    for model in ("diladiff", "ladiff"):
        found = [nll_speedup(match(t, temperature=ctx.temperature), model) for t in pooled_tables]
        missing = sum(f.factor is None for f in found)
        if missing:
            lines.append(
                f"- {NAMES[model]}: *inconclusive*: {missing} of {len(found)} runs share no "
                "quality range with MDLM."
            )
            continue
        pooled = speedup_across_trainings([f.factor for f in found if f.factor is not None])
        lines.append(f"- {NAMES[model]}: {pooled.measured}: *{pooled.outcome}*.")
    return lines


def floor_section(ctx: Context) -> list[str]:
    lines = ["## The judge and the real-text floor", ""]
    candidates = [ctx.results / EXPERIMENTS[i] for i in range(2, 7)] + [ctx.results]
    for directory in candidates:
        floor = _floor(directory)
        if floor is None:
            continue
        rows = [
            [
                fmt(floor.get("scorer_valid_ppl"), 4),
                fmt(floor["genppl"], 4),
                fmt(floor["entropy"], 4),
                fmt(floor.get("mauve_real")),
                str(floor["num_references"]),
            ]
        ]
        lines += table(
            "judge's own validation perplexity | real-text GenPPL (floor) | real-text entropy "
            "| MAUVE real vs real | references",
            rows,
        )
        source = directory / "floor.json"
        return lines + [
            "",
            f"From {link(ctx.results, source)}; the same judge and references score every sweep.",
        ]
    return lines + ["Not run: no floor.json (the pareto stages write it)."]


def prior_section(ctx: Context) -> list[str]:
    lines = ["## Prior quality (latent samples vs held-out latents)", ""]
    record = read_json(ctx.results / "prior_quality.json")
    if record is None:
        return lines + ["Not run: no `prior_quality.json` (stage prior-quality)."]
    lines += table(
        "sampler | method | Ncont | forward passes | FD (PCA) | MMD² | s / 1k samples",
        [
            [
                r["model"],
                r["method"],
                str(r["ncont"]),
                str(r["forward_passes"]),
                f"{fmt(r['fd_mean'])} ± {fmt(r['fd_std'], 2)}",
                f"{fmt(r['mmd2_mean'])} ± {fmt(r['mmd2_std'], 2)}",
                fmt(r["seconds_per_1k"]),
            ]
            for r in record["rows"]
        ],
    )
    fd = [c for c in record.get("checks", []) if c.get("metric") == "fd"]
    if fd:
        lines += [
            "",
            "Frechet distance of each student at Ncont = 5 against the teacher "
            "(Heun) at 200 steps:",
            "",
        ]
        lines += [
            f"- {c['student']}: {fmt(c['student_5'])} vs {fmt(c['teacher_heun_200'])}, "
            f"within the seed noise: {'yes' if c['within_noise_of_teacher_200'] else 'no'}"
            for c in fd
        ]
    md = ctx.results / "prior_quality.md"
    if md.is_file():
        lines += ["", f"Files: {link(ctx.results, md)}."]
    return lines


def conditions_section(ctx: Context, timings: dict[str, Any] | None) -> list[str]:
    run = (timings or {}).get("conditions", {})
    devices = set()
    for i in range(2, 7):
        for r in read_rows(ctx.results / EXPERIMENTS[i] / "pareto.csv") or []:
            devices.add(r["device"])
    threads = (
        f"OMP_NUM_THREADS={run.get('omp_num_threads') or 'unset'}, "
        f"{run.get('cpu_count')} CPU cores visible"
        if run
        else "unknown (no timings.json)"
    )
    return [
        "## Conditions",
        "",
        f"- Device: {', '.join(sorted(devices)) or 'unknown (no sweep ran)'}",
        f"- Threads: {threads}",
        f"- Date: report {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"run started {run.get('started', 'unknown')}",
        f"- Git commit: {git_commit(ROOT)} (the run: {run.get('git_commit', 'unknown')})",
        f"- Platform: {run.get('platform', 'unknown')}, Python {run.get('python', '?')}",
    ]


def build_report(ctx: Context) -> str:
    timings = read_json(ctx.results / "timings.json")
    lines = [
        f"# DiLaDiff reproduction report ({ctx.scale} scale)",
        "",
        f"Written by `scripts/report.py` from `{ctx.results.name}/`. Each experiment states "
        "the paper's claim, the numbers of this run, and a verdict computed from them by the "
        "rule it states (`diladiff_cli.analysis.verdicts`). Every sweep cell is a mean over "
        "sampling seeds with its standard error (SE; the oracle NLL's over the samples' texts, "
        f"the other measures' over the seeds); a difference is real only beyond "
        f"k·sqrt(SE_a² + SE_b²) with k = {K:g}: a difference within that noise is not a "
        "difference, and a verdict on cells without a standard error (one seed) is "
        f"inconclusive. On an oracle corpus (`oracle_nll` in pareto.csv) the quality is the "
        "exact NLL per token of the samples; otherwise MAUVE, whose not-worse margin is "
        "ε = 1 - MAUVE of real text against other real text (floor.json).",
        "",
        "**What the standard errors do not cover.** They are over the samples of one "
        "trained pipeline, not over trainings: the verdicts are about the models this run "
        "trained. At the CPU scales the models are far from converged and two trainings of "
        "the same recipe can differ more than any sampling noise; `make reproduce SEED=1` "
        "(in a fresh clone) trains a second seed of the whole pipeline and "
        "`scripts/compare_verdicts.py` sets the two runs' verdicts side by side.",
        *(
            [
                "",
                "**Which MDLM this run trained.** On the oracle corpus the MDLM learns to "
                "infer the document's topic abruptly, at a step that depends on the training "
                "seed (results/oracle/mdlm_transition), and goes on improving for hundreds of "
                "steps after; shorter trainings left some seeds before it or just past it "
                "and some well past it. Past it, what the latent adds at many tokens per pass "
                "depends on how well the autoencoder's decoder, trained on that MDLM, takes "
                "the topic from z, and that differs between trainings (experiment 1's topic "
                "kept at t = 0 gives this run's; with local latents and 200 autoencoder steps "
                "some seeds' decoders barely used z, and the verdicts about the latent "
                "followed). The headline states this run's MDLM (the topic purity of its "
                'samples); docs/oracle.md compares seeds, and "Across trainings", where '
                "other seeds' runs are present, sets them side by side.",
            ]
            if ctx.scale == "oracle"
            else []
        ),
        "",
        *headline_section(ctx),
        "",
        *timings_section(ctx, timings),
        "",
        *floor_section(ctx),
    ]
    for i, name in EXPERIMENTS.items():
        lines += ["", f"## Experiment {i}: {TITLES[i]}", "", f"Paper: {CLAIMS[i]}", ""]
        body = SECTIONS[i](ctx, ctx.results / name)
        if body is None:
            lines.append(f"Not run: no results in `{name}/` (stage {STAGE_OF[i]}).")
        else:
            lines += body
    others = other_trainings(ctx.results)
    lines += ["", *trainings_section(ctx, others)] if others else []
    lines += ["", *prior_section(ctx), "", *conditions_section(ctx, timings)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=SCALES, default="oracle")
    p.add_argument("--results", default=None, help="results directory (default results/<scale>)")
    p.add_argument("--out", default=None, help="default: <results>/REPORT.md")
    args = p.parse_args(argv)
    results = Path(args.results or f"results/{args.scale}")
    results = results if results.is_absolute() else ROOT / results
    headline_recipe = load_recipe(ROOT / experiment_recipe(args.scale, HEADLINE_SWEEP))
    ctx = Context(
        results=results,
        scale=args.scale,
        seq_len=load_recipe(ROOT / base_recipe(args.scale)).data.seq_len,
        temperature=headline_recipe.pareto.frontier_temperature,
    )
    out = Path(args.out) if args.out else results / "REPORT.md"
    atomic_write_text(out, build_report(ctx))
    # The outcomes alone, for comparing runs (scripts/compare_verdicts.py).
    verdicts = {f"exp{i}": ctx.verdicts[i] for i in sorted(ctx.verdicts)}
    atomic_write_json(out.with_name("verdicts.json"), verdicts)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
