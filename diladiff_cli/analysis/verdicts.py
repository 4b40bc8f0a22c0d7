"""Verdict rules that respect the sampling noise: a claim of the paper checked against
means over sampling seeds and their standard errors.

A sweep row (one cell of a ``pareto.csv``) carries, for each numeric measure ``m``, the
mean over sampling seeds in column ``m``, its standard error in ``m_se`` (over the
seeds, std ddof 1 / sqrt(n); the exact NLL's over the seeds' texts, see
:func:`diladiff_cli.pareto.aggregate`) and the number of seeds in ``seeds``;
:meth:`Estimate.of` reads one measure of a row. Each rule states the direction it tests
and returns a three-way outcome with the numbers behind it:

* ``supported``: the numbers show the claim beyond the noise;
* ``not supported``: they show the opposite (or a breach of the stated margin) beyond it;
* ``inconclusive``: they sit inside the noise, or carry no standard error (one seed).

A difference is real only when it exceeds k standard errors of the difference,
k * sqrt(se_a^2 + se_b^2), with k = 2 (:data:`K`).

The rules: :func:`difference` (A lower, or higher, than B), :func:`not_worse` (A not worse
than B by more than a margin; one-sided, so a better A is never penalised),
:func:`equivalent` (A and B the same within a margin: both one-sided tests),
:func:`monotone` (an ordered series moves one way), :func:`speedup_interval` (how many
times cheaper a model is than a baseline at equal quality, with an interval from the
qualities' standard errors) and :func:`speedup_lower_bound` (a lower bound on it when the
model's cheapest cell is already better than the baseline's best);
:func:`speedup_across_trainings` pools the factors of several trainings. :func:`all_of`, :func:`any_of` and :func:`dominates` combine
the outcomes of several parts. Torch- and numpy-free: ``scripts/report.py`` renders these.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Outcome = Literal["supported", "not supported", "inconclusive"]
Direction = Literal["lower", "higher"]  # which way the claim (or a measure) goes
K = 2.0  # standard errors a difference must exceed to count
ONE_SEED = "one seed: no standard error"

# pareto.csv columns that are not floats
_INTS = ("ncont", "ndisc", "num_samples", "seeds")
_STRINGS = ("model", "selection", "distill", "device", "cell")


# ----------------------------------------------------------------------------- rows


def read_rows(path: Path) -> list[dict[str, Any]] | None:
    """A ``pareto.csv`` with typed values (empty cells are None); None when absent."""
    if not path.is_file():
        return None
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key in _STRINGS:
                    row[key] = value or ""
                elif value in ("", None):
                    row[key] = None
                else:
                    row[key] = int(float(value)) if key in _INTS else float(value)
            rows.append(row)
    return rows


def valid(value: Any) -> bool:
    """A number that is there and finite."""
    return value is not None and math.isfinite(float(value))


def match(rows: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    """The rows whose columns equal ``want`` (floats compared with a tolerance)."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(b, float) and a is not None:
            return math.isclose(float(a), b)
        return a == b

    return [r for r in rows if all(same(r.get(k), v) for k, v in want.items())]


def by(rows: list[dict[str, Any]], key: str, **want: Any) -> dict[Any, dict[str, Any]]:
    """The rows matching ``want``, keyed by their value of ``key``."""
    return {r[key]: r for r in match(rows, **want)}


def usual(rows: list[dict[str, Any]], key: str) -> Any:
    """The most frequent value of a column (the Ndisc a sweep at fixed Ndisc ran at), or
    None without rows."""
    common = Counter(r[key] for r in rows).most_common(1)
    return common[0][0] if common else None


def is_oracle(rows: list[dict[str, Any]]) -> bool:
    """Whether a sweep ran on an oracle corpus (its rows carry the exact NLL)."""
    return any(valid(r.get("oracle_nll")) for r in rows)


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """A measured mean and its standard error.

    Attributes:
        mean: the mean over seeds.
        se: its standard error; None when there is none (one seed).
    """

    mean: float
    se: float | None = None

    @classmethod
    def of(cls, row: dict[str, Any] | None, measure: str) -> Estimate | None:
        """Column ``measure`` of a row with its ``<measure>_se``: None without a mean; no
        standard error when the row has no finite ``_se`` or fewer than two ``seeds``."""
        if row is None or not valid(row.get(measure)):
            return None
        se = row.get(f"{measure}_se")
        seeds = row.get("seeds")
        if not valid(se) or (seeds is not None and int(seeds) < 2):
            se = None
        return cls(float(row[measure]), None if se is None else float(se))

    def __sub__(self, other: Estimate) -> Estimate:
        """The difference of two independent estimates (standard errors in quadrature)."""
        return Estimate(self.mean - other.mean, _quadrature(self.se, other.se))

    def __str__(self) -> str:
        return f"{self.mean:.4g}" + ("" if self.se is None else f" ± {self.se:.2g}")


def _quadrature(*ses: float | None) -> float | None:
    if any(se is None for se in ses):
        return None
    return math.sqrt(sum(se**2 for se in ses))  # type: ignore[operator]


def mean_of(estimates: Sequence[Estimate]) -> Estimate:
    """The mean of independent estimates, its standard error sqrt(sum se^2) / n."""
    n = len(estimates)
    se = _quadrature(*(e.se for e in estimates))
    return Estimate(sum(e.mean for e in estimates) / n, None if se is None else se / n)


def gap_closed(
    baseline: Estimate, model: Estimate, bound: Estimate, *, k: float = K
) -> Estimate | None:
    """The share of the baseline-to-bound gap a model closes (lower is better):
    ``(baseline - model) / (baseline - bound)``; 1 = as good as the bound, 0 = no better
    than the baseline, < 0 = worse than it.

    Its standard error is the delta method's over the two differences, taken as
    independent (the baseline's noise enters both, so it is a little pessimistic). None
    when the bound is not better than the baseline by more than ``k`` standard errors: the
    share of a gap that is not there is not defined.
    """
    gap, gain = baseline - bound, baseline - model
    if gap.mean <= 0 or (gap.se is not None and gap.mean <= k * gap.se):
        return None
    share = gain.mean / gap.mean
    if gap.se is None or gain.se is None:
        return Estimate(share)
    # var(a / b) ~ (var a + (a / b)^2 var b) / b^2
    return Estimate(share, math.sqrt(gain.se**2 + share**2 * gap.se**2) / gap.mean)


# ----------------------------------------------------------------------------- rules


class _Noisy:
    """What every check with a ``noise`` (None without standard errors) shares."""

    noise: float | None

    @property
    def one_seed(self) -> bool:
        return self.noise is None


def _with_noise(text: str, noise: float | None) -> str:
    """``text``, then its noise in brackets when there is one."""
    return text + ("" if noise is None else f" (noise {noise:.2g})")


@dataclass(frozen=True)
class Difference(_Noisy):
    """What :func:`difference` found.

    Attributes:
        outcome: whether ``a`` is ``claim`` than ``b`` beyond the noise.
        claim: the direction tested, ``"lower"`` (a lower than b) or ``"higher"``.
        diff: a - b.
        noise: k * sqrt(se_a^2 + se_b^2); None without standard errors.
    """

    outcome: Outcome
    claim: Direction
    diff: float
    noise: float | None

    @property
    def measured(self) -> str:
        return _with_noise(f"{self.diff:+.3g}", self.noise)


def difference(
    a: Estimate, b: Estimate, *, claim: Direction, k: float = K, margin: float = 0.0
) -> Difference:
    """Tests the claim "``a`` is ``claim`` than ``b``" (directional).

    With d = a - b and the noise n = k * sqrt(se_a^2 + se_b^2), for ``claim="lower"``:
    supported when d < -(n + margin); not supported when d > n + margin (clearly the
    other way); inconclusive otherwise or when either side has no standard error.
    ``"higher"`` mirrors it. ``margin`` is the smallest effect that counts: the sampling
    noise over seeds does not include the noise of training (two runs of the same recipe
    train different models), so a difference smaller than the margin is no claim either
    way, however small its standard error.

    Args:
        a: the estimate the claim is about.
        b: the one it is compared with.
        claim: ``"lower"`` or ``"higher"``.
        k: standard errors a difference must exceed to be real.
        margin: the smallest difference that counts, in the measure's units.

    Returns:
        A :class:`Difference`.
    """
    d = a.mean - b.mean
    se = _quadrature(a.se, b.se)
    if se is None:
        return Difference("inconclusive", claim, d, None)
    noise = k * se
    toward = -d if claim == "lower" else d  # > 0: the claimed way
    bar = noise + margin
    outcome: Outcome = (
        "supported" if toward > bar else "not supported" if toward < -bar else "inconclusive"
    )
    return Difference(outcome, claim, d, noise)


@dataclass(frozen=True)
class NotWorse(_Noisy):
    """What :func:`not_worse` found.

    Attributes:
        outcome: whether the candidate is not worse than the reference by more than
            ``margin``, beyond the noise.
        excess: how much worse the candidate is (negative: better), in the measure's units.
        margin: the tolerated excess.
        noise: k * sqrt(se_c^2 + se_r^2); None without standard errors.
    """

    outcome: Outcome
    excess: float
    margin: float
    noise: float | None

    @property
    def measured(self) -> str:
        return _with_noise(f"excess {self.excess:+.3g}", self.noise)


def not_worse(
    candidate: Estimate, reference: Estimate, *, margin: float, better: Direction, k: float = K
) -> NotWorse:
    """Tests "``candidate`` is not worse than ``reference`` by more than ``margin``"
    (one-sided: a candidate that is better is supported, never penalised).

    The excess e is how much worse the candidate is: candidate - reference when lower is
    better, reference - candidate when higher is; n = k * sqrt(se_c^2 + se_r^2).
    Supported when e + n < margin; not supported when e - n > margin; inconclusive
    otherwise, and when either side has no standard error. Two calls with the sides
    swapped test equivalence within the margin (two one-sided tests).

    Args:
        candidate: e.g. the distilled student.
        reference: e.g. its teacher.
        margin: the excess still counted as "not worse", in the measure's units (>= 0).
        better: which way the measure improves, ``"lower"`` (NLL) or ``"higher"`` (MAUVE).
        k: standard errors a difference must exceed to be real.

    Returns:
        A :class:`NotWorse`.
    """
    excess = candidate.mean - reference.mean
    if better == "higher":
        excess = -excess
    se = _quadrature(candidate.se, reference.se)
    if se is None:
        return NotWorse("inconclusive", excess, margin, None)
    noise = k * se
    outcome: Outcome = (
        "supported"
        if excess + noise < margin
        else "not supported"
        if excess - noise > margin
        else "inconclusive"
    )
    return NotWorse(outcome, excess, margin, noise)


@dataclass(frozen=True)
class Equivalence(_Noisy):
    """What :func:`equivalent` found.

    Attributes:
        outcome: whether ``a`` and ``b`` differ by less than ``margin``, beyond the noise.
        diff: a - b.
        margin: the largest difference still counted as "the same".
        noise: k * sqrt(se_a^2 + se_b^2); None without standard errors.
    """

    outcome: Outcome
    diff: float
    margin: float
    noise: float | None

    @property
    def measured(self) -> str:
        return _with_noise(f"{self.diff:+.3g}", self.noise)


def equivalent(a: Estimate, b: Estimate, *, margin: float, k: float = K) -> Equivalence:
    """Tests "``a`` and ``b`` are the same within ``margin``": :func:`not_worse` both ways
    (two one-sided tests). Supported when |a - b| + n < margin; not supported when
    |a - b| - n > margin; inconclusive otherwise and without standard errors.

    Args:
        a: one estimate.
        b: the other.
        margin: the largest difference still counted as "the same" (>= 0).
        k: standard errors a difference must exceed to be real.

    Returns:
        An :class:`Equivalence`.
    """
    one_way = not_worse(a, b, margin=margin, better="lower", k=k)
    other_way = not_worse(b, a, margin=margin, better="lower", k=k)
    outcome = all_of([one_way.outcome, other_way.outcome])
    return Equivalence(outcome, a.mean - b.mean, margin, one_way.noise)


@dataclass(frozen=True)
class Trend(_Noisy):
    """What :func:`monotone` found.

    Attributes:
        outcome: whether the series moves the claimed way beyond the noise, with no step
            the other way beyond it.
        claim: ``"falls"`` or ``"rises"``.
        change: last mean - first mean.
        noise: k * sqrt(se_first^2 + se_last^2); None without standard errors.
        reversal: the largest step against the claim (0 when none goes against it),
            as a positive number.
        reversal_noise: that step's noise, k * sqrt(se_i^2 + se_{i+1}^2).
        reversal_at: the index i of that step (points i -> i + 1); None when none.
    """

    outcome: Outcome
    claim: Literal["falls", "rises"]
    change: float
    noise: float | None
    reversal: float = 0.0
    reversal_noise: float | None = None
    reversal_at: int | None = None

    @property
    def measured(self) -> str:
        text = _with_noise(f"change {self.change:+.3g}", self.noise)
        if self.reversal_at is not None:
            text += f", largest reversal {self.reversal:.2g} at step {self.reversal_at + 1}"
            if self.reversal_noise is not None:
                text += f" (noise {self.reversal_noise:.2g})"
        return text


def monotone(
    points: Sequence[Estimate], *, claim: Literal["falls", "rises"], k: float = K
) -> Trend:
    """Tests that an ordered series (e.g. quality against noise level, or against tokens
    per step) ``claim``: falls (or rises) from its first point to its last.

    Supported when the end-to-end change is real by the k-SE rule and the claimed way,
    and no step i -> i + 1 goes the other way by more than k * sqrt(se_i^2 + se_{i+1}^2);
    not supported when some step does, or when the end-to-end change is real the other
    way; inconclusive otherwise (a series flat within the noise), with fewer than two
    points, and when a point has no standard error.

    Args:
        points: the series, in order.
        claim: ``"falls"`` or ``"rises"``.
        k: standard errors a difference must exceed to be real.

    Returns:
        A :class:`Trend`.
    """
    if len(points) < 2:
        return Trend("inconclusive", claim, 0.0, None)
    sign = -1.0 if claim == "falls" else 1.0  # sign * step > 0: the claimed way
    change = points[-1].mean - points[0].mean
    worst, worst_noise, worst_at = 0.0, None, None
    for i, (p, q) in enumerate(zip(points[:-1], points[1:], strict=True)):
        against = -sign * (q.mean - p.mean)
        if against > worst:
            worst, worst_at = against, i
            se = _quadrature(p.se, q.se)
            worst_noise = None if se is None else k * se
    if any(p.se is None for p in points):
        return Trend("inconclusive", claim, change, None, worst, None, worst_at)
    noise = k * _quadrature(points[0].se, points[-1].se)  # type: ignore[operator]
    steps_back = any(
        -sign * (q.mean - p.mean) > k * _quadrature(p.se, q.se)  # type: ignore[operator]
        for p, q in zip(points[:-1], points[1:], strict=True)
    )
    if steps_back or -sign * change > noise:
        outcome: Outcome = "not supported"
    elif sign * change > noise:
        outcome = "supported"
    else:
        outcome = "inconclusive"
    return Trend(outcome, claim, change, noise, worst, worst_noise, worst_at)


@dataclass(frozen=True)
class FrontierPoint:
    """One cell of a speed-quality sweep.

    Attributes:
        cost: seconds per sample (any cost, lower being better).
        quality: the quality measured there, with its standard error.
        cost_se: the cost's standard error over seeds; None when there is none.
    """

    cost: float
    quality: Estimate
    cost_se: float | None = None


@dataclass(frozen=True)
class SpeedUpInterval:
    """What :func:`speedup_interval` found.

    Attributes:
        outcome: whether the model is more than ``at_least`` times cheaper than the
            baseline at equal quality, over the whole interval.
        factor: geometric mean of baseline cost / model cost over the shared quality
            levels; None when the two frontiers share no quality level.
        low: the factor with every quality and cost shifted by k SE against the model
            (the model's worse, the baseline's better); None without standard errors
            of the qualities or when the shifted frontiers share no level.
        high: the factor with the qualities and costs shifted by k SE for the model.
        at_least: the speed-up the outcome tests.
        levels: the shared quality levels, in the measure's units.
        ratios: baseline cost / model cost at each level.
        note: why there is no factor, when there is none.
        one_seed: a point has no standard error, so there is no interval.
    """

    outcome: Outcome
    factor: float | None
    low: float | None
    high: float | None
    at_least: float
    levels: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()
    note: str = ""
    one_seed: bool = False

    @property
    def measured(self) -> str:
        if self.factor is None:
            return f"no shared quality range ({self.note})"

        def x(v: float | None) -> str:
            return "?" if v is None else f"{v:.2f}x"  # ?: the shifted frontiers share no quality

        lo, hi = min(self.levels), max(self.levels)
        interval = f"no interval ({ONE_SEED})" if self.one_seed else f"{x(self.low)}-{x(self.high)}"
        return (
            f"{self.factor:.2f}x ({min(self.ratios):.2f}-{max(self.ratios):.2f}x over quality "
            f"{lo:.4g}-{hi:.4g}), interval {interval}"
        )


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of (cost, quality) points, lower cost and higher quality
    being better: sorted by cost, each point better in quality than every cheaper one."""
    out: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or quality > out[-1][1]:
            out.append((cost, quality))
    return out


def _log_cost_at(front: list[tuple[float, float]], q: float) -> float:
    """log cost of a frontier at quality ``q`` (inside its range), linear in
    (quality, log cost) between its points."""
    for (c0, q0), (c1, q1) in zip(front[:-1], front[1:], strict=True):
        if q0 <= q <= q1:
            w = (q - q0) / (q1 - q0)
            return (1 - w) * math.log(c0) + w * math.log(c1)
    return math.log(front[-1][0] if q >= front[-1][1] else front[0][0])


def equal_quality_ratios(
    baseline: list[tuple[float, float]], model: list[tuple[float, float]], levels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The shared quality levels of two point sets' frontiers (``levels`` of them, evenly
    spaced from the lower end of the shared range to its upper end, exactly) and the cost
    ratio baseline / model at each, linear in (quality, log cost) between frontier
    points; None when the frontiers share none."""
    fa, fb = pareto_frontier(baseline), pareto_frontier(model)
    lo, hi = max(fa[0][1], fb[0][1]), min(fa[-1][1], fb[-1][1])
    if lo > hi:
        return None
    qs = [lo + (hi - lo) * i / (levels - 1) for i in range(levels - 1)] + [hi] if hi > lo else [lo]
    ratios = [math.exp(_log_cost_at(fa, q) - _log_cost_at(fb, q)) for q in qs]
    return tuple(qs), tuple(ratios)


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speedup_interval(
    baseline: Sequence[FrontierPoint],
    model: Sequence[FrontierPoint],
    *,
    better: Direction,
    at_least: float = 1.0,
    k: float = K,
    levels: int = 41,
) -> SpeedUpInterval:
    """How many times cheaper ``model`` is than ``baseline`` at equal quality, with an
    interval; tests the claim "more than ``at_least`` times cheaper".

    Each side's Pareto frontier (lower cost, better quality) is interpolated linearly in
    (quality, log cost) and the ratio baseline cost / model cost is taken at ``levels``
    quality levels spanning the range both frontiers cover; the factor is its geometric
    mean, as in :func:`diladiff_cli.frontier.speedup_at_equal_quality` (which reads it
    through :func:`equal_quality_ratios`). The interval recomputes the factor with every
    quality and every cost shifted by k standard errors against the model (low: the
    model's quality worse and its cost higher, the baseline's better and lower) and for it
    (high). A cost without a standard error stays put; the cost's is the spread of the
    timing over the sampling seeds, which holds the machine's drift when the cells are
    timed interleaved (:func:`diladiff_cli.pareto.sampling_order`).

    Supported when low > ``at_least``; not supported when high < ``at_least``;
    inconclusive otherwise, when a point has no standard error, and when the frontiers
    share no quality level.

    Args:
        baseline: the baseline's cells (e.g. MDLM's).
        model: the candidate's cells.
        better: which way the quality improves (``"lower"`` for the oracle NLL).
        at_least: the speed-up the outcome tests.
        k: standard errors each quality is shifted by for the interval.
        levels: quality levels sampled in the shared range.

    Returns:
        A :class:`SpeedUpInterval`, its levels in the quality's own units.
    """
    sign = 1.0 if better == "higher" else -1.0  # the frontier wants higher = better

    def points(cells: Sequence[FrontierPoint], shift: float) -> list[tuple[float, float]]:
        # shift > 0 moves every quality and cost k SE the better way; a missing SE stays
        # put; a cost is kept above zero (log cost) however wide its SE
        return [
            (
                max(c.cost - shift * k * (c.cost_se or 0.0), c.cost * 1e-3),
                sign * c.quality.mean + shift * k * (c.quality.se or 0.0),
            )
            for c in cells
        ]

    if not baseline or not model:
        return SpeedUpInterval("inconclusive", None, None, None, at_least, note="no cells")
    one_seed = any(c.quality.se is None for c in (*baseline, *model))
    central = equal_quality_ratios(points(baseline, 0.0), points(model, 0.0), levels)
    if central is None:
        fa, fb = pareto_frontier(points(baseline, 0.0)), pareto_frontier(points(model, 0.0))
        note = (
            "the model's cheapest frontier point is better than the baseline's best"
            if fb[0][1] > fa[-1][1]
            else "the model's best frontier point is worse than the baseline's cheapest"
        )
        return SpeedUpInterval(
            "inconclusive", None, None, None, at_least, note=note, one_seed=one_seed
        )
    qs, ratios = central
    factor = geomean(ratios)
    levels_out = tuple(sign * q for q in qs)
    if one_seed:
        return SpeedUpInterval(
            "inconclusive", factor, None, None, at_least, levels_out, ratios, one_seed=True
        )
    bounds = []
    for towards_model in (-1.0, 1.0):
        shifted = equal_quality_ratios(
            points(baseline, -towards_model), points(model, towards_model), levels
        )
        bounds.append(None if shifted is None else geomean(shifted[1]))
    low, high = bounds
    outcome: Outcome = (
        "supported"
        if low is not None and low > at_least
        else "not supported"
        if high is not None and high < at_least
        else "inconclusive"
    )
    return SpeedUpInterval(outcome, factor, low, high, at_least, levels_out, ratios)


@dataclass(frozen=True)
class AcrossTrainings:
    """What :func:`speedup_across_trainings` found.

    Attributes:
        outcome: whether the recipe makes the model more than ``at_least`` times cheaper
            than the baseline, over the interval across trainings.
        factor: the geometric mean of the runs' factors; None without any.
        low: exp(mean log factor - k SE over the runs); None with fewer than two runs.
        high: exp(mean log factor + k SE over the runs).
        factors: each run's factor, in the order given.
        at_least: the speed-up the outcome tests.
    """

    outcome: Outcome
    factor: float | None
    low: float | None
    high: float | None
    factors: tuple[float, ...]
    at_least: float = 1.0

    @property
    def measured(self) -> str:
        if self.factor is None:
            return "no run has a factor"
        runs = ", ".join(f"{f:.2f}x" for f in self.factors)
        interval = (
            "no interval (fewer than two runs)"
            if self.low is None or self.high is None
            else f"{self.low:.2f}x-{self.high:.2f}x"
        )
        return (
            f"{self.factor:.2f}x over {len(self.factors)} trainings ({runs}), interval {interval}"
        )


def mean_and_se(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """The mean of the measured values (None skipped) and its standard error: the
    standard deviation over them (ddof 1) / sqrt(their number); no standard error from
    fewer than two values or from a non-finite one. Over a sweep cell's sampling seeds
    (``pareto.csv``) and over trainings (:func:`speedup_across_trainings`)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    mean = math.fsum(present) / len(present)
    if len(present) < 2 or not all(math.isfinite(v) for v in present):
        return mean, None
    return mean, statistics.stdev(present) / math.sqrt(len(present))


def speedup_across_trainings(
    factors: Sequence[float], *, at_least: float = 1.0, k: float = K
) -> AcrossTrainings:
    """Several trainings of one recipe taken together: the geometric mean of each run's
    :func:`speedup_interval` factor, with an interval of k standard errors (ddof 1) of the
    mean log factor over the runs. One run's interval covers its sampling seeds only; this
    one covers what changes between trainings too, so it tests the recipe, not one model.

    Supported when low > ``at_least``; not supported when high < ``at_least``; inconclusive
    otherwise and with fewer than two runs. With a handful of runs the standard error is
    itself rough: k = 2 over 4 runs is about an 86 % interval (Student t, 3 degrees of
    freedom), as over the 3 sampling seeds of a sweep cell it is about 82 %.

    Args:
        factors: one factor per training (each > 0).
        at_least: the speed-up the outcome tests.
        k: standard errors of the mean log factor the interval spans each way.

    Returns:
        An :class:`AcrossTrainings`.
    """
    runs = tuple(float(f) for f in factors)
    mean, se = mean_and_se(math.log(f) for f in runs)
    if mean is None:  # no run
        return AcrossTrainings("inconclusive", None, None, None, runs, at_least)
    if se is None:  # one run
        return AcrossTrainings("inconclusive", math.exp(mean), None, None, runs, at_least)
    low, high = math.exp(mean - k * se), math.exp(mean + k * se)
    outcome: Outcome = (
        "supported" if low > at_least else "not supported" if high < at_least else "inconclusive"
    )
    return AcrossTrainings(outcome, math.exp(mean), low, high, runs, at_least)


@dataclass(frozen=True)
class SpeedUpBound:
    """What :func:`speedup_lower_bound` found.

    Attributes:
        outcome: whether the bound exceeds ``at_least`` beyond the costs' noise.
        factor: the lower bound, the baseline's cost at its best quality over the model's
            cost at its cheapest point that is better than that beyond the noise; None
            when no model point is.
        baseline: the baseline's best-quality point.
        model: the model's point the bound uses.
        at_least: the speed-up the outcome tests.
        note: why there is no bound, when there is none.
        one_seed: a point has no standard error (of its quality or its cost).
    """

    outcome: Outcome
    factor: float | None
    baseline: FrontierPoint | None
    model: FrontierPoint | None
    at_least: float
    note: str = ""
    one_seed: bool = False

    @property
    def measured(self) -> str:
        if self.factor is None or self.baseline is None or self.model is None:
            return f"no lower bound ({self.note})"

        def cost(p: FrontierPoint) -> str:
            return str(Estimate(p.cost, p.cost_se))

        return (
            f">= {self.factor:.2f}x (the baseline's best quality {self.baseline.quality} at "
            f"{cost(self.baseline)} s; the model's cheapest point better than it "
            f"{self.model.quality} at {cost(self.model)} s)"
        )


def speedup_lower_bound(
    baseline: Sequence[FrontierPoint],
    model: Sequence[FrontierPoint],
    *,
    better: Direction,
    at_least: float = 1.0,
    k: float = K,
) -> SpeedUpBound:
    """A lower bound on how many times cheaper ``model`` is than ``baseline`` at equal
    quality, for when the model's frontier starts beyond the baseline's best quality
    (where :func:`speedup_interval` finds no shared quality range).

    The baseline never reaches the quality of the model's cheapest point that is better
    than the baseline's best (by :func:`difference`, beyond k SE): to reach it the
    baseline would need at least the cost of its best cell, assuming (as the frontier's
    interpolation does) that no cheaper setting of the baseline beats its measured best.
    So the speed-up there is at least baseline best cost / that point's cost.

    Supported when that bound exceeds ``at_least`` beyond the costs' noise (baseline cost
    - at_least * model cost > k * sqrt(se_b^2 + at_least^2 se_m^2)); inconclusive
    otherwise: a bound at or below ``at_least`` says nothing against the model. Also
    inconclusive (no bound) when no model point is better beyond the noise, and when a
    quality or a cost has no standard error.

    Args:
        baseline: the baseline's cells (e.g. MDLM's).
        model: the candidate's cells.
        better: which way the quality improves (``"lower"`` for the oracle NLL).
        at_least: the speed-up the outcome tests.
        k: standard errors a difference must exceed to be real.

    Returns:
        A :class:`SpeedUpBound`.
    """
    if not baseline or not model:
        return SpeedUpBound("inconclusive", None, None, None, at_least, note="no cells")
    sign = 1.0 if better == "higher" else -1.0
    # the best quality; among equals, the cheapest
    best = max(baseline, key=lambda c: (sign * c.quality.mean, -c.cost))
    if any(c.quality.se is None for c in (best, *model)):
        note = f"{ONE_SEED}: 'better beyond the noise' is undecidable"
        return SpeedUpBound("inconclusive", None, best, None, at_least, note=note, one_seed=True)
    clearly = [
        c
        for c in model
        if difference(c.quality, best.quality, claim=better, k=k).outcome == "supported"
    ]
    if not clearly:
        note = f"no model point better than the baseline's best by more than {k:g} SE"
        return SpeedUpBound("inconclusive", None, best, None, at_least, note=note)
    point = min(clearly, key=lambda c: c.cost)
    factor = best.cost / point.cost
    se = _quadrature(best.cost_se, None if point.cost_se is None else at_least * point.cost_se)
    if se is None:
        return SpeedUpBound("inconclusive", factor, best, point, at_least, one_seed=True)
    beyond = best.cost - at_least * point.cost > k * se
    outcome: Outcome = "supported" if beyond else "inconclusive"
    return SpeedUpBound(outcome, factor, best, point, at_least)


# ----------------------------------------------------------------------------- combining


def all_of(outcomes: Iterable[Outcome]) -> Outcome:
    """Every part holds: not supported when any part is not, supported when all are,
    inconclusive otherwise (and with no parts)."""
    seen = set(outcomes)
    if "not supported" in seen:
        return "not supported"
    return "supported" if seen == {"supported"} else "inconclusive"


def any_of(outcomes: Iterable[Outcome]) -> Outcome:
    """One part or more holds: supported when any part is, not supported when all are
    not, inconclusive otherwise (and with no parts)."""
    seen = set(outcomes)
    if "supported" in seen:
        return "supported"
    return "not supported" if seen == {"not supported"} else "inconclusive"


def dominates(outcomes: Iterable[Outcome]) -> Outcome:
    """Better somewhere, worse nowhere (a Pareto comparison, part by part): not supported
    when any part is not supported, supported when one or more is and none is
    contradicted, inconclusive otherwise (and with no parts)."""
    seen = set(outcomes)
    if "not supported" in seen:
        return "not supported"
    return "supported" if "supported" in seen else "inconclusive"


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """One claim checked against the numbers.

    Attributes:
        outcome: ``supported``, ``not supported`` or ``inconclusive``.
        rule: the rule, stated before the numbers.
        measured: the numbers the rule was applied to.
        one_seed: the numbers carry no standard error (an inconclusive outcome says so).
    """

    outcome: Outcome
    rule: str
    measured: str
    one_seed: bool = False

    @property
    def label(self) -> str:
        """The outcome in words: ``inconclusive (one seed: no standard error)`` when that
        is why."""
        if self.outcome == "inconclusive" and self.one_seed:
            return f"inconclusive ({ONE_SEED})"
        return self.outcome


class Check(Protocol):
    """What every rule returns: an outcome and the numbers behind it."""

    @property
    def outcome(self) -> Outcome: ...

    @property
    def measured(self) -> str: ...

    @property
    def one_seed(self) -> bool: ...


def verdict(
    rule: str, parts: Sequence[tuple[str, Check]], *, combine: Callable[..., Outcome] = all_of
) -> Verdict:
    """A verdict from the checks of its parts (each labelled, e.g. ``"Ndisc 16"``),
    their outcomes combined by ``combine``; inconclusive with no parts.

    Args:
        rule: the rule, in words.
        parts: (label, check) pairs.
        combine: :func:`all_of`, :func:`any_of` or :func:`dominates`.

    Returns:
        A :class:`Verdict` listing every part's numbers.
    """
    if not parts:
        return Verdict("inconclusive", rule, "no cells to compare")
    return Verdict(
        combine(c.outcome for _, c in parts),
        rule,
        "; ".join(f"{label}: {c.measured}" for label, c in parts),
        one_seed=any(c.one_seed for _, c in parts),
    )


def frontier_points(rows: list[dict[str, Any]], *, model: str, column: str) -> list[FrontierPoint]:
    """(seconds per sample with its standard error, quality ``column``) of ``model``'s rows
    that have both."""
    points = []
    for r in rows:
        quality, cost = Estimate.of(r, column), Estimate.of(r, "seconds_per_sample")
        if r["model"] == model and quality is not None and cost is not None:
            points.append(FrontierPoint(cost.mean, quality, cost.se))
    return points


@dataclass(frozen=True)
class Measure:
    """A quality measure and how a report judges it.

    Attributes:
        column: its ``pareto.csv`` column (the standard error in ``<column>_se``).
        name: its name in the report.
        better: which way it improves.
        margin: the difference still counted as "not worse" (and as "nearly identical").
        margin_text: where the margin comes from, for the rule's statement.
    """

    column: str
    name: str
    better: Direction
    margin: float
    margin_text: str

    @property
    def worse(self) -> Direction:
        return "higher" if self.better == "lower" else "lower"


# Half the NLL lost by going from 1 to 2 tokens per forward pass (+0.11 nats/token for the
# 1500-step oracle MDLM, docs/oracle.md), about 2.6 % of the oracle's entropy rate (1.89).
NLL_MARGIN = 0.05
ORACLE_NLL = Measure(
    "oracle_nll",
    "oracle NLL",
    "lower",
    NLL_MARGIN,
    f"margin {NLL_MARGIN} nats/token",
)


def mauve_measure(mauve_real: float | None) -> Measure:
    """MAUVE, its margin the shortfall of a perfect sampler at this sample size:
    ε = 1 - MAUVE of real text against other real text (0 when unknown)."""
    if not valid(mauve_real):
        return Measure("mauve", "MAUVE", "higher", 0.0, "margin ε = 0 (no MAUVE(real, real))")
    eps = max(0.0, 1.0 - float(mauve_real))  # type: ignore[arg-type]
    return Measure("mauve", "MAUVE", "higher", eps, f"margin ε = 1 - MAUVE(real, real) = {eps:.3f}")


def quality_measure(rows: list[dict[str, Any]], *, mauve_real: float | None) -> Measure:
    """The primary quality of a sweep: the exact NLL on an oracle corpus, else MAUVE."""
    return ORACLE_NLL if is_oracle(rows) else mauve_measure(mauve_real)


# ----------------------------------------------------------------------------- trainings


@dataclass(frozen=True)
class Agreement:
    """One verdict part across runs of the pipeline (``verdicts.json`` of each).

    Attributes:
        experiment: ``exp1`` ... ``exp6``.
        part: the part of the experiment's verdict (``noise curve``, ...).
        outcomes: its outcome in each run, in the runs' order (``missing`` where absent).
    """

    experiment: str
    part: str
    outcomes: tuple[str, ...]

    @property
    def agree(self) -> bool:
        return len(set(self.outcomes)) == 1


def agreement(runs: Sequence[dict[str, Any]]) -> list[Agreement]:
    """Every verdict part of the runs (``verdicts.json`` records, as ``scripts/report.py``
    writes them) with its outcome in each run: a claim stands across trainings only where
    every run reaches the same outcome."""
    rows = []
    for exp in sorted({e for run in runs for e in run}):
        parts = sorted({p for run in runs for p in run.get(exp, {}).get("parts", {})})
        for part in parts:
            outcomes = tuple(run.get(exp, {}).get("parts", {}).get(part, "missing") for run in runs)
            rows.append(Agreement(exp, part, outcomes))
    return rows
