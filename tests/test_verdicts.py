"""diladiff_cli.analysis.verdicts: the rules that turn means over sampling seeds and their
standard errors into supported / not supported / inconclusive, each in the direction it
states, on hand-made rows and CSVs with the sweep contract's columns (``m``, ``m_se``,
``seeds``)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from diladiff_cli.analysis.verdicts import (
    ONE_SEED,
    Estimate,
    FrontierPoint,
    agreement,
    all_of,
    any_of,
    difference,
    dominates,
    equivalent,
    frontier_points,
    gap_closed,
    monotone,
    not_worse,
    quality_measure,
    read_rows,
    speedup_across_trainings,
    speedup_interval,
    speedup_lower_bound,
    verdict,
)

COLUMNS = ["model", "ndisc", "temperature", "seconds_per_sample", "seeds", "oracle_nll",
           "oracle_nll_se", "mauve", "mauve_se", "cell"]  # fmt: skip


def _write(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    return path


def _cell(model, ndisc, nll, se, *, seconds=1.0, seeds=3):
    return dict(model=model, ndisc=ndisc, temperature=1.0, seconds_per_sample=seconds,
                seeds=seeds, oracle_nll=nll, oracle_nll_se=se, mauve=0.5, mauve_se="",
                cell=f"{model}-nd{ndisc}")  # fmt: skip


# ----------------------------------------------------------------------------- estimates


def test_estimates_read_from_a_csv(tmp_path):
    rows = read_rows(_write(tmp_path / "pareto.csv", [
        _cell("mdlm", 8, 3.0, 0.02),
        _cell("ladiff", 8, 2.5, 0.04, seeds=1),  # one seed: a standard error means nothing
    ]))  # fmt: skip
    assert rows[0]["seeds"] == 3 and rows[0]["ndisc"] == 8 and rows[0]["model"] == "mdlm"
    assert Estimate.of(rows[0], "oracle_nll") == Estimate(3.0, 0.02)
    assert Estimate.of(rows[1], "oracle_nll") == Estimate(2.5, None)
    assert Estimate.of(rows[0], "mauve") == Estimate(0.5, None)  # empty _se cell
    assert Estimate.of(rows[0], "genppl") is None  # no such column
    assert quality_measure(rows, mauve_real=0.9).column == "oracle_nll"
    assert read_rows(tmp_path / "absent.csv") is None


def test_a_csv_without_standard_errors_is_one_seed(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("model,ndisc,mauve,genppl\nmdlm,8,0.5,300\nladiff,8,0.9,100\n")
    mdlm, ladiff = (Estimate.of(r, "mauve") for r in read_rows(path))
    d = difference(ladiff, mdlm, claim="higher")  # 0.4 apart, but no noise to judge it by
    assert d.outcome == "inconclusive" and d.one_seed
    v = verdict("r", [("Ndisc 8", d)])
    assert v.label == f"inconclusive ({ONE_SEED})" and "Ndisc 8: +0.4" in v.measured
    assert quality_measure(read_rows(path), mauve_real=0.97).margin == pytest.approx(0.03)


def test_difference_and_se_arithmetic():
    a, b = Estimate(2.0, 0.3), Estimate(1.0, 0.4)
    assert (a - b) == Estimate(1.0, 0.5)  # standard errors in quadrature
    assert (a - Estimate(1.0)).se is None


# ----------------------------------------------------------------------------- difference


def test_difference_is_directional_and_respects_the_noise():
    a, b = Estimate(2.52, 0.03), Estimate(2.60, 0.04)  # noise 2 * 0.05 = 0.1
    inside = difference(a, b, claim="lower")
    assert inside.outcome == "inconclusive"  # |d| = 0.08 is inside the noise
    assert inside.diff == pytest.approx(-0.08) and inside.noise == pytest.approx(0.1)
    assert difference(Estimate(2.4, 0.03), b, claim="lower").outcome == "supported"
    # clearly the opposite way: not supported, not merely "not within noise"
    assert difference(Estimate(2.8, 0.03), b, claim="lower").outcome == "not supported"
    assert difference(Estimate(2.8, 0.03), b, claim="higher").outcome == "supported"
    assert difference(Estimate(2.8, 0.03), b, claim="higher", k=10).outcome == "inconclusive"


# ----------------------------------------------------------------------------- not worse


def test_not_worse_never_penalises_a_better_student():
    teacher = Estimate(3.00, 0.02)
    # a student far better than its teacher (lower NLL): supported
    better = not_worse(Estimate(2.50, 0.02), teacher, margin=0.05, better="lower")
    assert better.outcome == "supported" and better.excess == pytest.approx(-0.5)
    # clearly worse than the margin allows: excess 0.3, noise 0.057
    worse = not_worse(Estimate(3.30, 0.02), teacher, margin=0.05, better="lower")
    assert worse.outcome == "not supported"
    # the same but inside the noise: excess 0.01 + noise 0.057 straddles the margin
    same = not_worse(Estimate(3.01, 0.02), teacher, margin=0.05, better="lower")
    assert same.outcome == "inconclusive"
    # precise seeds decide it: excess 0.01 + 2 * sqrt(2) * 0.005 < 0.05
    tight = not_worse(Estimate(3.01, 0.005), Estimate(3.0, 0.005), margin=0.05, better="lower")
    assert tight.outcome == "supported"
    # higher is better (MAUVE): the excess is reference - candidate
    mauve = not_worse(Estimate(0.9, 0.01), Estimate(0.5, 0.01), margin=0.03, better="higher")
    assert mauve.outcome == "supported" and mauve.excess == pytest.approx(-0.4)
    assert not_worse(Estimate(0.3, 0.01), Estimate(0.5, 0.01), margin=0.03,
                     better="higher").outcome == "not supported"  # fmt: skip
    assert not_worse(Estimate(0.3), teacher, margin=0.05, better="lower").one_seed


def test_equivalent_is_both_one_sided_tests():
    assert equivalent(Estimate(0.50, 0.005), Estimate(0.51, 0.005), margin=0.03).outcome == (
        "supported"
    )
    assert equivalent(Estimate(0.60, 0.005), Estimate(0.50, 0.005), margin=0.03).outcome == (
        "not supported"
    )
    assert equivalent(Estimate(0.50, 0.005), Estimate(0.60, 0.005), margin=0.03).outcome == (
        "not supported"
    )
    assert equivalent(Estimate(0.50, 0.02), Estimate(0.51, 0.02), margin=0.03).outcome == (
        "inconclusive"
    )


# ----------------------------------------------------------------------------- trend


def test_monotone_tolerates_a_reversal_inside_the_noise_only():
    se = 0.02  # a step's noise: 2 * sqrt(2) * 0.02 = 0.057
    noisy = [Estimate(m, se) for m in (0.9, 0.7, 0.74, 0.5)]  # +0.04 back: inside
    t = monotone(noisy, claim="falls")
    assert t.outcome == "supported"
    assert t.change == pytest.approx(-0.4) and t.reversal_at == 1
    assert t.reversal == pytest.approx(0.04)
    beyond = [Estimate(m, se) for m in (0.9, 0.7, 0.8, 0.5)]  # +0.1 back: beyond
    assert monotone(beyond, claim="falls").outcome == "not supported"
    flat = [Estimate(m, se) for m in (0.9, 0.88, 0.87)]  # end to end 0.03 < 0.057
    assert monotone(flat, claim="falls").outcome == "inconclusive"
    assert monotone(flat[::-1], claim="rises").outcome == "inconclusive"
    rising = [Estimate(m, se) for m in (0.1, 0.3, 0.6)]
    assert monotone(rising, claim="rises").outcome == "supported"
    assert monotone(rising, claim="falls").outcome == "not supported"
    one_seed = monotone([Estimate(0.9), Estimate(0.1)], claim="falls")
    assert one_seed.outcome == "inconclusive" and one_seed.one_seed


# ----------------------------------------------------------------------------- speed-up


def _frontier(costs, nlls, se):
    return [FrontierPoint(c, Estimate(q, se)) for c, q in zip(costs, nlls, strict=True)]


def test_speedup_of_a_model_three_times_faster_at_every_quality():
    nlls = (4.0, 3.5, 3.0, 2.5)  # lower is better, costlier cells are better
    costs = (1.0, 2.0, 4.0, 8.0)
    base = _frontier(costs, nlls, 0.02)
    model = _frontier([c / 3 for c in costs], nlls, 0.02)
    s = speedup_interval(base, model, better="lower")
    assert s.factor == pytest.approx(3.0)
    assert all(r == pytest.approx(3.0) for r in s.ratios)
    assert min(s.levels) == pytest.approx(2.5) and max(s.levels) == pytest.approx(4.0)
    assert s.low < 3.0 < s.high  # the qualities' noise widens it
    assert s.outcome == "supported"
    # MAUVE-like (higher is better): the same answer
    up = speedup_interval(
        _frontier(costs, (0.1, 0.2, 0.4, 0.8), 0.01),
        _frontier([c / 3 for c in costs], (0.1, 0.2, 0.4, 0.8), 0.01),
        better="higher",
    )
    assert up.factor == pytest.approx(3.0) and up.low < 3.0 < up.high
    assert speedup_interval(base, model, better="lower", at_least=5.0).outcome == "not supported"


def test_speedup_interval_from_the_standard_errors():
    # log cost linear in NLL: cost = exp(-(nll - 4)), the model's cells 3x cheaper; a
    # shift of 2 SE = 0.1 in NLL moves each side's cost by e^0.1, the pair by e^0.2
    nlls = [4.0 - 0.25 * i for i in range(9)]
    base = _frontier([math.exp(4.0 - q) for q in nlls], nlls, 0.05)
    model = _frontier([math.exp(4.0 - q) / 3 for q in nlls], nlls, 0.05)
    s = speedup_interval(base, model, better="lower")
    assert s.factor == pytest.approx(3.0)
    assert s.low == pytest.approx(3.0 * math.exp(-0.2))
    assert s.high == pytest.approx(3.0 * math.exp(0.2))


def test_speedup_interval_counts_the_costs_standard_errors():
    # identical qualities known exactly; the model 3x cheaper, every cost known to 5 %:
    # against the model its cells cost 10 % more and the baseline's 10 % less
    nlls = (4.0, 3.0, 2.0)

    def cells(faster: float) -> list[FrontierPoint]:
        costs = (1.0 / faster, 2.0 / faster, 4.0 / faster)
        return [
            FrontierPoint(c, Estimate(q, 0.0), 0.05 * c) for c, q in zip(costs, nlls, strict=True)
        ]

    s = speedup_interval(cells(1.0), cells(3.0), better="lower")
    assert s.factor == pytest.approx(3.0)
    assert s.low == pytest.approx(3.0 * 0.9 / 1.1) and s.high == pytest.approx(3.0 * 1.1 / 0.9)
    # 1.1x faster with 5 % timing noise is inside it, though the qualities are exact
    assert speedup_interval(cells(1.0), cells(1.1), better="lower").outcome == "inconclusive"


def test_speedup_inside_the_noise_and_without_it():
    nlls, costs = (4.0, 3.0), (1.0, 2.0)
    base = _frontier(costs, nlls, 0.2)
    close = _frontier([c / 1.05 for c in costs], nlls, 0.2)  # 5 % faster, noisy qualities
    s = speedup_interval(base, close, better="lower")
    assert s.factor == pytest.approx(1.05) and s.low < 1.0 < s.high
    assert s.outcome == "inconclusive"
    one = speedup_interval(_frontier(costs, nlls, None), _frontier(costs, nlls, None),
                           better="lower")  # fmt: skip
    assert one.outcome == "inconclusive" and one.one_seed and one.factor == pytest.approx(1.0)
    apart = speedup_interval(base, _frontier(costs, (2.0, 1.0), 0.01), better="lower")
    assert apart.factor is None and "better than the baseline's best" in apart.note


def _costed(costs, nlls, se, cost_se):
    return [FrontierPoint(c, Estimate(q, se), cost_se) for c, q in zip(costs, nlls, strict=True)]


def test_speedup_lower_bound_when_the_frontiers_share_no_quality():
    # MDLM's best NLL is 3.0 at 4 s; the model's cheapest cell (NLL 2.95, 0.5 s) is within
    # the noise of it (2 sqrt(2) 0.02 = 0.057), its next (2.5 at 1 s) clearly better: the
    # speed-up at NLL 2.5 is at least 4 / 1 = 4x.
    base = _costed((1.0, 2.0, 4.0), (4.0, 3.5, 3.0), 0.02, 0.01)
    model = _costed((0.5, 1.0, 2.0), (2.95, 2.5, 2.0), 0.02, 0.01)
    assert speedup_interval(base, model, better="lower").factor is None
    b = speedup_lower_bound(base, model, better="lower")
    assert b.factor == pytest.approx(4.0) and b.outcome == "supported"
    assert b.baseline == base[2] and b.model == model[1]
    assert b.measured.startswith(">= 4.00x (the baseline's best quality 3 ± 0.02 at 4 ± 0.01 s")
    # MAUVE-like (higher is better): the same reading, mirrored
    up = speedup_lower_bound(
        _costed((1.0, 2.0), (0.1, 0.2), 0.01, 0.01),
        _costed((0.5, 1.0), (0.5, 0.6), 0.01, 0.01),
        better="higher",
    )
    assert up.factor == pytest.approx(4.0) and up.outcome == "supported"
    # a bound below 1x says nothing against the model, and costs within their noise
    slow = speedup_lower_bound(base, _costed((8.0,), (2.0,), 0.02, 0.01), better="lower")
    assert slow.factor == pytest.approx(0.5) and slow.outcome == "inconclusive"
    near = speedup_lower_bound(base, _costed((3.95,), (2.0,), 0.02, 0.1), better="lower")
    assert near.factor > 1.0 and near.outcome == "inconclusive"
    # no cell better beyond the noise, no standard errors: no bound
    none = speedup_lower_bound(base, model[:1], better="lower")
    assert none.factor is None and "by more than 2 SE" in none.note
    one = speedup_lower_bound(_costed((4.0,), (3.0,), None, None), model, better="lower")
    assert one.factor is None and one.one_seed and one.outcome == "inconclusive"
    no_cost_se = speedup_lower_bound(base, _costed((1.0,), (2.0,), 0.02, None), better="lower")
    assert no_cost_se.factor == pytest.approx(4.0) and no_cost_se.one_seed
    assert no_cost_se.outcome == "inconclusive"


def test_frontier_points_from_csv_rows(tmp_path):
    rows = read_rows(_write(tmp_path / "pareto.csv", [
        _cell("mdlm", 8, 3.0, 0.02, seconds=2.0),
        _cell("ladiff", 8, 3.0, 0.02, seconds=1.0),
        _cell("mdlm", 16, 4.0, 0.02, seconds=1.0),
        _cell("ladiff", 16, 4.0, 0.02, seconds=0.5),
    ]))  # fmt: skip
    mdlm = frontier_points(rows, model="mdlm", column="oracle_nll")
    assert mdlm == [
        FrontierPoint(2.0, Estimate(3.0, 0.02)),
        FrontierPoint(1.0, Estimate(4.0, 0.02)),
    ]
    ladiff = frontier_points(rows, model="ladiff", column="oracle_nll")
    assert speedup_interval(mdlm, ladiff, better="lower").factor == pytest.approx(2.0)


# ----------------------------------------------------------------------------- combining


def test_combining_parts():
    s, n, i = "supported", "not supported", "inconclusive"
    assert all_of([s, s]) == s and all_of([s, i]) == i and all_of([s, n, i]) == n
    assert any_of([n, s]) == s and any_of([n, n]) == n and any_of([n, i]) == i
    assert dominates([s, i]) == s and dominates([i, i]) == i and dominates([s, n]) == n
    assert all_of([]) == any_of([]) == dominates([]) == i
    inside = difference(Estimate(1.0, 0.1), Estimate(1.05, 0.1), claim="lower")
    v = verdict("r", [("a", inside)], combine=dominates)
    assert v.outcome == "inconclusive" and v.label == "inconclusive"  # noise, not one seed
    assert verdict("r", []).measured == "no cells to compare"


def test_verdicts_import_no_torch():
    code = (
        "import sys, diladiff_cli.analysis.verdicts; "
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gap_closed_is_the_share_of_the_gap_to_the_bound_with_its_noise():
    mdlm, bound = Estimate(3.0, 0.01), Estimate(2.0, 0.01)
    half = gap_closed(mdlm, Estimate(2.5, 0.01), bound)
    assert half is not None and half.mean == pytest.approx(0.5)
    assert 0 < half.se < 0.05
    assert gap_closed(mdlm, Estimate(3.2), bound).mean == pytest.approx(-0.2)  # worse: < 0
    assert gap_closed(mdlm, Estimate(2.5), Estimate(2.99, 0.01)) is None  # no gap beyond noise


def test_a_difference_below_the_margin_is_no_claim_either_way():
    # 0.055 apart with noise 2 * 0.0185 = 0.037: real without a margin, no claim with 0.1
    a, b = Estimate(-0.363, 0.014), Estimate(-0.308, 0.012)
    assert difference(a, b, claim="higher").outcome == "not supported"
    assert difference(a, b, claim="higher", margin=0.1).outcome == "inconclusive"
    assert difference(b, a, claim="higher", margin=0.1).outcome == "inconclusive"
    assert difference(Estimate(1.0, 0.01), b, claim="higher", margin=0.1).outcome == "supported"


def test_agreement_across_trainings_marks_a_missing_part():
    a = {"exp2": {"parts": {"equal quality": "supported", "equal throughput": "supported"}}}
    b = {"exp2": {"parts": {"equal quality": "supported"}}}
    rows = agreement([a, b])
    assert [(r.part, r.outcomes, r.agree) for r in rows] == [
        ("equal quality", ("supported", "supported"), True),
        ("equal throughput", ("supported", "missing"), False),
    ]


def test_speedup_across_trainings_pools_the_runs_factors_with_their_spread():
    close = speedup_across_trainings([1.2, 1.25, 1.3])  # every training a little faster
    assert close.outcome == "supported"
    assert close.factor == pytest.approx((1.2 * 1.25 * 1.3) ** (1 / 3))
    logs = [math.log(f) for f in (1.2, 1.25, 1.3)]
    mean = sum(logs) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
    assert close.low == pytest.approx(math.exp(mean - 2 * se))
    assert close.high == pytest.approx(math.exp(mean + 2 * se))
    assert "over 3 trainings (1.20x, 1.25x, 1.30x)" in close.measured
    # one training decides, the others sit near 1x: the spread makes it inconclusive
    assert speedup_across_trainings([1.4, 0.95, 1.05]).outcome == "inconclusive"
    assert speedup_across_trainings([0.8, 0.85, 0.9]).outcome == "not supported"
    assert speedup_across_trainings([1.2, 1.25, 1.3], at_least=1.5).outcome == "not supported"
    one = speedup_across_trainings([3.0])  # no spread from one training: no interval
    assert (one.outcome, one.factor, one.low) == ("inconclusive", pytest.approx(3.0), None)
    assert "no interval" in one.measured
    assert speedup_across_trainings([]).measured == "no run has a factor"
