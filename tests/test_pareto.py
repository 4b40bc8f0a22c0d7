"""Sweeps: cells, checkpoint checks, frontier interpolation, figures, and resuming an
interrupted sweep without redoing finished cells. CPU, offline, seconds."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from _evalkit import make_data, make_judge, make_mdlm

from diladiff_cli import pareto
from diladiff_cli.analysis.verdicts import mean_and_se, pareto_frontier
from diladiff_cli.config import EvalConfig, GridConfig, MauveConfig, ParetoConfig, ScorerConfig
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import ReferenceFloor
from diladiff_cli.frontier import (
    CSV_COLUMNS,
    MEASURES,
    SEED_CSV_COLUMNS,
    fmt_se,
    headline,
    speedup_at_equal_quality,
)
from diladiff_cli.pareto import (
    Cell,
    aggregate,
    expand_cells,
    resolve_checkpoints,
    run_sweep,
)
from diladiff_cli.plots import plot_distill, plot_selection, plot_temperature, write_plots

# ----------------------------------------------------------------------------- cells


def test_cells_are_the_union_of_grids_without_repeats():
    cfg = ParetoConfig(
        grids=(
            GridConfig(models=("mdlm", "diladiff"), ndisc=(8, 16), ncont=(5, 200),
                       selection=("random",), distill=("meanflow", "tvm")),
            GridConfig(name="temperature", models=("mdlm",), ndisc=(8,), selection=("random",),
                       temperature=(0.5, 1.0)),
        )
    )  # fmt: skip
    cells = expand_cells(cfg)
    mdlm = [c for c in cells if c.model == "mdlm"]
    assert {(c.ndisc, c.temperature) for c in mdlm} == {(8, 1.0), (16, 1.0), (8, 0.5)}
    assert len(mdlm) == 3 and all(c.ncont == 0 and c.distill == "" for c in mdlm)
    assert len([c for c in cells if c.model == "diladiff"]) == 2 * 2 * 2
    assert len({c.name for c in cells}) == len(cells)


def test_missing_or_unavailable_models_fail_before_anything_runs(tmp_path):
    ckpt = tmp_path / "ladiff.pt"
    cells = [Cell("ladiff", 200, 8, "random", 1.0)]
    with pytest.raises(DiladiffError, match="pareto.checkpoints.ladiff"):
        resolve_checkpoints(cells, ParetoConfig())
    with_path = ParetoConfig(checkpoints={"ladiff": str(ckpt)})
    with pytest.raises(DiladiffError, match=f"needs checkpoint {ckpt}, which does not exist"):
        resolve_checkpoints(cells, with_path)
    ckpt.write_bytes(b"x")
    with pytest.raises(DiladiffError, match="pareto.checkpoints.ae"):  # hybrids need the AE
        resolve_checkpoints(cells, with_path)
    ae = tmp_path / "ae.pt"
    ae.write_bytes(b"x")
    both = ParetoConfig(checkpoints={"ladiff": str(ckpt), "ae": str(ae)})
    assert resolve_checkpoints(cells, both) == {"ladiff": str(ckpt), "ae": str(ae)}
    distilled = [Cell("diladiff", 5, 8, "random", 1.0, "tvm")]
    with pytest.raises(DiladiffError, match="pareto.checkpoints.diladiff/tvm"):
        resolve_checkpoints(distilled, with_path)


# ----------------------------------------------------------------------------- headline


def test_frontier_drops_dominated_points():
    pts = [(1.0, 0.1), (2.0, 0.05), (2.0, 0.3), (4.0, 0.2), (8.0, 0.5)]
    assert pareto_frontier(pts) == [(1.0, 0.1), (2.0, 0.3), (8.0, 0.5)]


def test_speedup_of_a_curve_shifted_in_cost_is_the_shift():
    base = [(c, math.log(c)) for c in (1.0, 2.0, 4.0, 8.0, 16.0)]
    fast = [(c / 4, q) for c, q in base]
    factor, lo, hi, (qa, qb) = speedup_at_equal_quality(base, fast)
    assert factor == pytest.approx(4.0) and lo == pytest.approx(4.0) and hi == pytest.approx(4.0)
    assert (qa, qb) == pytest.approx((0.0, math.log(16.0)))  # the same qualities, cheaper
    assert speedup_at_equal_quality(base, [(1.0, 10.0)]) is None  # no common quality


def _row(model: str, ndisc: int, sps: float, mauve: float, genppl: float, **kw) -> dict:
    row = {
        "model": model, "ncont": 0, "ndisc": ndisc, "selection": "random", "temperature": 1.0,
        "distill": "", "num_samples": 64, "forward_passes": float(ndisc),
        "forward_passes_latent": 0.0, "tokens_per_forward": 128 / ndisc, "genppl": genppl,
        "mauve": mauve, "entropy": 4.0, "seconds_per_sample": sps, "latent_share": 0.0,
        "genppl_floor": 20.0, "judge_valid_ppl": 25.0, "reference_entropy": 4.2,
        "device": "cpu", "cell": f"{model}-{ndisc}",
    }  # fmt: skip
    return {**row, **kw}


def _synthetic_rows() -> list[dict]:
    rows = []
    for nd in (8, 16, 32, 64, 128):
        q = math.log2(nd)
        rows.append(_row("mdlm", nd, 0.01 * nd, 0.1 * q, 200 / q))
        rows.append(_row("mdlm", nd, 0.01 * nd, 0.05 * q, 300 / q, selection="confidence"))
        rows.append(_row("ladiff", nd, 0.0025 * nd + 0.01, 0.1 * q + 0.2, 150 / q, ncont=200,
                         latent_share=0.4))  # fmt: skip
        for distill, bonus in (("meanflow", 0.0), ("tvm", 0.02)):
            for nc in (5, 20, 200):
                rows.append(_row("diladiff", nd, 0.0025 * nd + 0.0001 * nc, 0.1 * q + 0.2 + bonus,
                                 150 / q, ncont=nc, distill=distill))  # fmt: skip
    for t in (0.6, 0.8):
        rows.append(_row("mdlm", 32, 0.32, 0.3 * t, 100 * t, temperature=t, entropy=4 * t))
    return rows


def test_headline_on_synthetic_frontiers():
    speedups = headline(_synthetic_rows(), baseline="mdlm")
    by = {(s.model, s.quality, s.cost): s for s in speedups}
    assert set(by) == {
        (m, q, c)
        for m in ("ladiff", "diladiff")
        for q in ("mauve", "genppl")
        for c in ("seconds_per_sample", "forward_passes")
    }
    # ladiff reaches MDLM's MAUVE with 4x fewer decoder passes (0.2 = two doublings of ndisc)
    assert by[("ladiff", "mauve", "forward_passes")].factor == pytest.approx(4.0)
    assert by[("diladiff", "mauve", "seconds_per_sample")].factor > 1.0
    lo, hi = by[("ladiff", "genppl", "forward_passes")].quality_range
    assert lo < hi  # reported in GenPPL units


def test_plots_are_written_and_non_empty(tmp_path):
    floor = ReferenceFloor(genppl=20.0, entropy=4.2, num_references=64, mauve_real=0.9,
                           scorer_valid_ppl=25.0)  # fmt: skip
    made, skipped = write_plots(_synthetic_rows(), floor=floor, temperature=1.0, out=tmp_path)
    assert set(made) == {"pareto", "selection", "temperature", "distill"} and not skipped
    for path in made.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    only_mdlm = [r for r in _synthetic_rows() if r["model"] == "mdlm" and r["temperature"] == 1.0]
    assert plot_temperature(only_mdlm, floor=floor, path=tmp_path / "t.png") is None
    assert plot_distill(only_mdlm, floor=floor, path=tmp_path / "d.png") is None


def test_plots_draw_error_bars_and_the_ar_baseline(tmp_path, monkeypatch):
    """Rows with standard errors get error bars (the title says how wide); ``ar`` rows
    are "AR (KV cache)" in its own colour, and their empty selection is not a second
    selection rule."""
    from diladiff_cli import plots

    ar = [{**_row("ar", 128, 0.4, 0.5, 60.0, selection="", tokens_per_forward=1.0,
                  temperature=t, cell=f"ar-T{t:g}"), "ndisc": 0} for t in (0.6, 0.8, 1.0)]  # fmt: skip
    rows = [
        {**r, "seeds": 3, **{f"{m}_se": 0.01 for m in ("mauve", "genppl", "entropy")}}
        for r in _synthetic_rows() + ar
    ]
    figures: dict[str, object] = {}
    real_save = plots._save
    monkeypatch.setattr(
        plots,
        "_save",
        lambda fig, path: figures.setdefault(path.name, fig) and real_save(fig, path),
    )
    made, skipped = write_plots(rows, floor=None, temperature=1.0, out=tmp_path)
    assert set(made) == {"pareto", "selection", "temperature", "distill"} and not skipped
    pareto_fig = figures["pareto.png"]
    assert "error bars: ±2 SE, 3 sampling seeds" in pareto_fig._suptitle.get_text()
    ax = pareto_fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "AR (KV cache)" in labels and not any(label.startswith("ar ") for label in labels)
    assert ax.containers and all(c.has_yerr for c in ax.containers)  # every curve: bars
    temperature_labels = figures["temperature.png"].axes[0].get_legend_handles_labels()[1]
    assert "AR (KV cache)" in temperature_labels
    selection_labels = figures["confidence_vs_random.png"].axes[0].get_legend_handles_labels()[1]
    assert "AR (KV cache)" not in selection_labels
    # random cells and AR only: one selection rule, no selection figure
    random_and_ar = [r for r in rows if r["selection"] in ("random", "")]
    assert (
        plot_selection(random_and_ar, floor=None, temperature=1.0, path=tmp_path / "s.png") is None
    )


# ----------------------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    data_dir = make_data(root)
    return {
        "root": root,
        "data": data_dir,
        "judge": make_judge(data_dir, root / "judge", n_positions=32),
        "mdlm": make_mdlm(data_dir, root / "mdlm.pt"),
    }


def _sweep_cfg(setup: dict, out: Path) -> tuple[ParetoConfig, EvalConfig]:
    cfg = ParetoConfig(
        out=str(out),
        work_dir=str(out / "work"),
        checkpoints={"mdlm": str(setup["mdlm"])},
        grids=(
            GridConfig(ndisc=(2, 4), selection=("random", "confidence")),
            GridConfig(name="temperature", ndisc=(4,), selection=("random",), temperature=(0.5,)),
        ),
        num_samples=12,
        batch_size=12,
    )
    eval_cfg = EvalConfig(
        scorer=ScorerConfig(name=str(setup["judge"])), mauve=MauveConfig(kmeans_redo=1)
    )
    return cfg, eval_cfg


def test_sweep_resumes_without_redoing_finished_cells(setup, tmp_path, monkeypatch):
    cfg, eval_cfg = _sweep_cfg(setup, tmp_path / "results")
    runtime = init_runtime("cpu")
    calls: list[str] = []
    kill_at = [3]  # the first sweep is interrupted while sampling its third cell
    real = pareto.sample_cell

    def counting(cell, **kw):
        calls.append(cell.name)
        if len(calls) == kill_at[0]:
            raise KeyboardInterrupt
        return real(cell, **kw)

    monkeypatch.setattr(pareto, "sample_cell", counting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert len(list((tmp_path / "results" / "cells").glob("*.json"))) == 2
    assert not (tmp_path / "results" / "pareto.csv").exists()

    kill_at[0] = 0
    calls.clear()
    result = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    cells = expand_cells(cfg)
    assert calls == [c.name for c in cells[2:]]  # only the unfinished cells were sampled
    assert (result.cells_cached, result.cells_run) == (2, 3)
    rows = list(csv.DictReader(result.csv.open()))
    assert [r["cell"] for r in rows] == [c.name for c in cells]
    assert list(rows[0]) == list(CSV_COLUMNS)
    for r in rows:
        assert 0 <= float(r["mauve"]) <= 1 and float(r["genppl"]) > 1
        assert float(r["judge_valid_ppl"]) == 42.0
        assert r["seeds"] == "1" and all(r[f"{m}_se"] == "" for m in MEASURES)  # one seed
    per_seed = list(csv.DictReader(result.seeds_csv.open()))
    assert [(r["cell"], r["seed"]) for r in per_seed] == [(c.name, "0") for c in cells]
    assert [r["genppl"] for r in per_seed] == [r["genppl"] for r in rows]
    assert float(rows[0]["tokens_per_forward"]) >= 16 / 2  # ndisc 2: at most 2 passes + fill
    assert result.floor.scorer_valid_ppl == 42.0 and result.floor.mauve_real is not None
    assert set(result.plots) == {"pareto", "selection", "temperature"}
    assert "GenPPL **" in result.table.read_text()

    calls.clear()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "cells").glob("*.json")}
    again = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert calls == [] and (again.cells_cached, again.cells_run) == (5, 0)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert again.rows == result.rows


def test_sampling_order_spreads_every_cells_seeds_over_the_sweep():
    order = pareto.sampling_order(9, (4, 5, 6))
    assert sorted(order) == sorted((n, s) for n in range(9) for s in (4, 5, 6))  # each once
    assert [s for _, s in order] == [4] * 9 + [5] * 9 + [6] * 9  # seed by seed
    positions = {n: [i for i, (m, _) in enumerate(order) if m == n] for n in range(9)}
    means = [sum(p) / 3 for p in positions.values()]
    assert max(means) - min(means) <= 9 / 3  # cell by cell it would be 24 apart
    assert pareto.sampling_order(2, (0,)) == [(0, 0), (1, 0)]


def test_mean_and_standard_error_over_seeds():
    assert mean_and_se([10.0, 12.0, 14.0]) == (12.0, pytest.approx(2 / math.sqrt(3)))
    assert mean_and_se([3.0]) == (3.0, None)  # one seed: no standard error
    assert mean_and_se([None, None]) == (None, None)  # not measured (MAUVE off, no oracle)
    assert mean_and_se([1.0, math.inf])[1] is None
    no_oracle = {k: None for k in SEED_CSV_COLUMNS if k.startswith("oracle")}
    seed_rows = [
        {**_row("mdlm", 8, 0.1 * s, None, 10.0 + 2 * s), **no_oracle, "seed": s,
         "device": "cuda" if s == 2 else "cpu"}
        for s in range(3)
    ]  # fmt: skip
    row = aggregate(seed_rows)
    assert list(row) == list(CSV_COLUMNS) and row["seeds"] == 3
    assert (row["genppl"], row["genppl_se"]) == (12.0, pytest.approx(2 / math.sqrt(3)))
    assert row["entropy"] == 4.0 and row["entropy_se"] == 0.0  # the same every seed
    assert row["mauve"] is row["mauve_se"] is None and row["oracle_nll_se"] is None
    assert row["genppl_floor"] == 20.0 and row["device"] == "cpu; cuda"
    assert fmt_se(row, "genppl") == "12 ± 1.2" and fmt_se(row, "mauve") == "-"
    assert fmt_se(aggregate(seed_rows[:1]), "genppl") == "10"


def test_the_oracle_nll_standard_error_combines_the_seeds_standard_errors_over_texts():
    """A seed's oracle NLL is a mean over its texts with their standard error: the cell's
    is sqrt(sum se_i^2) / n, not the spread of 3 seed means (2 degrees of freedom); a seed
    without one falls back on that spread, and one seed has none."""
    no_oracle = {k: None for k in SEED_CSV_COLUMNS if k.startswith("oracle")}
    seed_rows = [
        {**_row("mdlm", 8, 0.1, None, 10.0), **no_oracle, "seed": s, "oracle_nll": nll,
         "oracle_nll_se": se}
        for s, (nll, se) in enumerate([(2.0, 0.03), (2.1, 0.04), (2.3, 0.12)])
    ]  # fmt: skip
    row = aggregate(seed_rows)
    assert row["oracle_nll"] == pytest.approx(6.4 / 3)
    assert row["oracle_nll_se"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2 + 0.12**2) / 3)
    spread = mean_and_se([2.0, 2.1, 2.3])[1]
    assert abs(row["oracle_nll_se"] - spread) > 0.01  # not the seeds' spread
    seed_rows[1]["oracle_nll_se"] = None
    assert aggregate(seed_rows)["oracle_nll_se"] == pytest.approx(spread)
    assert aggregate(seed_rows[:1])["oracle_nll_se"] is None


def test_several_seeds_give_means_standard_errors_and_resume(setup, tmp_path, monkeypatch):
    """Each cell runs once per seed: pareto.csv holds the mean over the seeds' records and
    its standard error, pareto_seeds.csv the seeds' values; a rerun does nothing and an
    added seed runs only that seed."""
    cfg, eval_cfg = _sweep_cfg(setup, tmp_path / "results")
    cfg = dataclasses.replace(
        cfg, grids=(GridConfig(ndisc=(2, 4), selection=("random",)),), seeds=(0, 1)
    )
    runtime = init_runtime("cpu")
    result = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert (result.cells_cached, result.cells_run) == (0, 2)
    records: dict[str, dict[int, dict]] = {}  # cell -> seed -> its evaluation record's row
    for file in (tmp_path / "results" / "cells").glob("*.json"):
        payload = json.loads(file.read_text())
        assert payload["record"]["settings"]["seed"] == payload["seed"]
        records.setdefault(payload["row"]["cell"], {})[payload["seed"]] = payload["row"]
    rows = list(csv.DictReader(result.csv.open()))
    assert [r["cell"] for r in rows] == [c.name for c in expand_cells(cfg)]
    for r in rows:
        seeds = records[r["cell"]]
        assert sorted(seeds) == [0, 1] and r["seeds"] == "2"
        for m in MEASURES:
            values = [seeds[s][m] for s in (0, 1)]
            if values[0] is None:  # no oracle on this corpus
                assert r[m] == r[f"{m}_se"] == ""
                continue
            assert float(r[m]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            se = abs(values[0] - values[1]) / 2  # std (ddof 1) / sqrt(2) of two values
            assert float(r[f"{m}_se"]) == pytest.approx(se, rel=1e-9, abs=1e-15)
        assert float(r["genppl_se"]) > 0  # the seeds drew different samples
    per_seed = list(csv.DictReader(result.seeds_csv.open()))
    assert list(per_seed[0]) == list(SEED_CSV_COLUMNS)
    assert [(r["cell"], int(r["seed"])) for r in per_seed] == [
        (c.name, s) for c in expand_cells(cfg) for s in (0, 1)
    ]
    assert " ± " in result.table.read_text() and "seeds 0, 1" in result.table.read_text()

    calls: list[tuple[str, int]] = []
    real = pareto.sample_cell
    monkeypatch.setattr(
        pareto,
        "sample_cell",
        lambda cell, **kw: calls.append((cell.name, kw["seed"])) or real(cell, **kw),
    )
    again = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert calls == [] and (again.cells_cached, again.cells_run) == (2, 0)
    assert again.rows == result.rows and again.seed_rows == result.seed_rows
    more = dataclasses.replace(cfg, seeds=(0, 1, 2))
    third = run_sweep(cfg=more, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    cells = expand_cells(cfg)
    new = [(cells[n].name, s) for n, s in pareto.sampling_order(2, (0, 1, 2)) if s == 2]
    assert calls == new  # only the new seed is drawn, in the sweep's order
    assert third.seed_rows[:2] == result.seed_rows[:2] and third.rows[0]["seeds"] == 3


def test_sweeps_sharing_a_work_dir_score_each_shared_cell_once(setup, tmp_path, monkeypatch):
    """Two experiments over one work_dir: the second samples nothing and scores only the
    cells the first did not have; its shared rows and its floor equal the first's."""
    cfg, eval_cfg = _sweep_cfg(setup, tmp_path / "exp_a")
    cfg = dataclasses.replace(cfg, grids=(GridConfig(ndisc=(2, 4), selection=("random",)),))
    runtime = init_runtime("cpu")
    first = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    evaluated: list[str] = []
    real_evaluate = pareto.Evaluator.evaluate

    def counting(self, path):
        evaluated.append(Path(path).name)
        return real_evaluate(self, path)

    def no_floor(self, num):
        raise AssertionError("the floor was computed again")

    monkeypatch.setattr(pareto.Evaluator, "evaluate", counting)
    monkeypatch.setattr(pareto.Evaluator, "floor", no_floor)
    other = dataclasses.replace(
        cfg,
        out=str(tmp_path / "exp_b"),  # another experiment, same work_dir
        grids=(GridConfig(ndisc=(2, 8), selection=("random",)),),
    )
    second = run_sweep(cfg=other, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert len(evaluated) == 1 and evaluated[0].startswith("mdlm-nc0-nd8-")
    assert second.rows[0] == first.rows[0]  # the shared Ndisc 2 cell
    assert second.floor == first.floor
    assert (tmp_path / "exp_b" / "floor.json").read_text() == (
        tmp_path / "exp_a" / "floor.json"
    ).read_text()


def test_changed_evaluation_or_judge_reuses_the_samples(setup, tmp_path, monkeypatch):
    judge = tmp_path / "judge"
    shutil.copytree(setup["judge"], judge)
    cfg, _ = _sweep_cfg(setup, tmp_path / "r")
    cfg = dataclasses.replace(cfg, grids=(GridConfig(ndisc=(2,), selection=("random",)),))
    eval_cfg = EvalConfig(scorer=ScorerConfig(name=str(judge)), mauve=MauveConfig(enabled=False))
    runtime = init_runtime("cpu")
    run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    calls = []
    monkeypatch.setattr(pareto, "sample_cell", lambda cell, **kw: calls.append(cell))
    other = dataclasses.replace(eval_cfg, eos="truncate")
    result = run_sweep(cfg=cfg, eval_cfg=other, data_dir=setup["data"], runtime=runtime)
    assert calls == [] and result.cells_run == 1 and result.rows[0]["mauve"] is None
    record = json.loads((judge / "judge.json").read_text())
    (judge / "judge.json").write_text(json.dumps({**record, "valid_ppl": 7.0}))  # "retrained"
    result = run_sweep(cfg=cfg, eval_cfg=other, data_dir=setup["data"], runtime=runtime)
    assert calls == [] and result.cells_run == 1 and result.rows[0]["judge_valid_ppl"] == 7.0


def test_cli_pareto(setup, tmp_path):
    import yaml

    cfg, _ = _sweep_cfg(setup, tmp_path / "results")
    recipe = {
        "name": "paretotest",
        "data": {"out": str(setup["data"]), "seq_len": 16, "tokenizer": {"vocab_size": 300}},
        "mdlm": {"model": {"vocab_size": 300, "hidden": 16, "depth": 1, "heads": 2}, "train": {}},
        "eval": {"scorer": {"name": str(setup["judge"])}, "mauve": {"kmeans_redo": 1}},
        "pareto": {
            "out": cfg.out,
            "work_dir": cfg.work_dir,
            "checkpoints": {"mdlm": str(setup["mdlm"])},
            "grids": [{"ndisc": [2, 4], "selection": ["random"]}],
            "num_samples": 12,
            "batch_size": 12,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "diladiff_cli", "pareto", str(path), *args],
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip

    proc = cli("--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert out["cells_run"] == 2 and Path(out["plots"]["pareto"]).stat().st_size > 10_000
    assert out["headline"] == []  # only MDLM so far
    proc = cli(
        "--set", "pareto.grids=[{models: [ladiff]}]", "--set", "pareto.checkpoints.ladiff=no.pt"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: pareto: model 'ladiff' needs checkpoint no.pt, which does not exist "
        "(train it first, or drop 'ladiff' from the grids)"
    )
