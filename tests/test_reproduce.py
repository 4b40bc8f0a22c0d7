"""scripts/reproduce.py (the whole pipeline, make-style, timed) and scripts/report.py
(REPORT.md from the results): the stage plans of both scales against the recipes, the
skip rules, timings that keep the run that did the work, and a report on synthetic
results whose verdicts follow from the numbers."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from _clikit import documented_commands

from diladiff_cli.config import load_recipe
from diladiff_cli.frontier import CSV_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reproduce = _load("reproduce")
report = _load("report")

# experiment 5 first: its sweep times every cell the headline compares
TINY_ORDER = [
    "prepare", "train-mdlm", "train-judge", "train-ae", "encode", "train-prior", "distill",
    "distill-meanflow-ln12", "distill-meanflow-ln11", "distill-tvm-ln11", "distill-tvm-ln12",
    "latent-analysis",
    "prior-quality", "pareto-exp5", "pareto-exp2", "pareto-exp3", "pareto-exp4", "pareto-exp6",
    "report",
]  # fmt: skip
ORACLE_ORDER = [*TINY_ORDER[:4], "train-bound", *TINY_ORDER[4:]]  # + the perfect-latent bound
PAPER_ORDER = [
    "prepare", "train-mdlm", "train-ae", "encode", "encode-train-sample", "train-prior",
    "distill", "distill-meanflow-ln11", "distill-tvm-ln11", "distill-tvm-ln12",
    "latent-analysis", "prior-quality", "pareto-exp5", "pareto-exp2", "pareto-exp3",
    "pareto-exp4", "pareto-exp6", "report",
]  # fmt: skip


def _dry_run(*args: str) -> list[tuple[str, str]]:
    proc = subprocess.run(
        [sys.executable, "scripts/reproduce.py", "--dry-run", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def _after_module(argv: tuple[str, ...]) -> list[str]:
    """A CLI stage's arguments from the subcommand on."""
    return list(argv[argv.index("diladiff_cli") + 1 :])


# ----------------------------------------------------------------------------- the plans


@pytest.mark.parametrize(("scale", "args"), [("oracle", ()), ("tiny", ("--scale", "tiny"))])
def test_dry_run_cpu_scales_list_every_stage_in_order(scale, args):
    plan = _dry_run(*args)  # the oracle scale is the default
    assert [name for name, _ in plan] == (ORACLE_ORDER if scale == "oracle" else TINY_ORDER)
    commands = dict(plan)
    for name in ("prepare", "train-mdlm", "train-judge", "train-ae", "encode", "train-prior"):
        assert commands[name].endswith(f"-m diladiff_cli {name} recipes/{scale}/default.yaml")
    assert commands["distill"].endswith(f"-m diladiff_cli distill recipes/{scale}/default.yaml")
    assert "torchrun" not in " ".join(commands.values())
    for i, exp in enumerate(reproduce.SWEEPS, 2):
        assert commands[f"pareto-exp{i}"].endswith(
            f"pareto recipes/{scale}/{exp}.yaml --out results/{scale}/{exp}"
        )
    assert commands["latent-analysis"].endswith(
        f"scripts/ae_report.py --recipe recipes/{scale}/exp1_latent_analysis.yaml "
        f"--out-md results/{scale}/exp1_latent_analysis/analysis.md "
        f"--out-json results/{scale}/exp1_latent_analysis/analysis.json "
        f"--blocks 16 --nelbo-batches 4 --analysis-blocks {64 if scale == 'oracle' else 12} "
        "--bench-steps 0"
    )
    assert commands["report"].endswith(
        f"scripts/report.py --scale {scale} --results results/{scale}"
    )


def test_dry_run_paper_uses_torchrun_and_drops_the_judge():
    plan = _dry_run("--scale", "paper", "--nproc", "8", "--results", "out/p")
    assert [name for name, _ in plan] == PAPER_ORDER
    commands = dict(plan)
    assert commands["prepare"].endswith("-m diladiff_cli prepare recipes/paper/pipeline.yaml")
    for name in ("train-mdlm", "train-ae", "encode", "train-prior", "distill"):
        assert "torchrun --nproc_per_node=8 -m diladiff_cli" in commands[name]
        assert f"{name} recipes/paper/pipeline.yaml --precision bf16" in commands[name]
    assert commands["pareto-exp5"].endswith(
        "pareto recipes/paper/exp5_diladiff_frontier.yaml --out out/p/exp5_diladiff_frontier "
        "--device cuda --precision bf16"
    )
    assert "--json out/p/prior_quality.json" in commands["prior-quality"]
    assert commands["latent-analysis"].endswith("--bench-steps 0 --device cuda")  # not CPU-hours


def test_dry_run_oracle_gpu_runs_every_stage_on_one_gpu():
    """The GPU scale: the oracle plan on recipes/oracle-gpu, one process (no torchrun),
    bf16 trainings, and the sweeps and both script stages on CUDA."""
    plan = _dry_run("--scale", "oracle-gpu")
    assert [name for name, _ in plan] == ORACLE_ORDER
    commands = dict(plan)
    assert "torchrun" not in " ".join(commands.values())
    for name in ("train-mdlm", "train-judge", "train-ae", "encode", "train-prior", "distill"):
        assert commands[name].endswith(
            f"{name} recipes/oracle-gpu/default.yaml --precision bf16 --device cuda"
        )
    for i, exp in enumerate(reproduce.SWEEPS, 2):
        assert commands[f"pareto-exp{i}"].endswith(
            f"pareto recipes/oracle-gpu/{exp}.yaml --out results/oracle-gpu/{exp} "
            "--device cuda --precision bf16"
        )
    assert commands["latent-analysis"].endswith(
        "--analysis-blocks 256 --bench-steps 0 --device cuda"
    )
    assert commands["prior-quality"].endswith("--device cuda")
    assert commands["report"].endswith("scripts/report.py --scale oracle-gpu --results "
                                       "results/oracle-gpu")  # fmt: skip


def test_oracle_gpu_takes_one_process(capsys):
    assert reproduce.main(["--scale", "oracle-gpu", "--nproc", "2", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: --nproc must be 1 at the oracle-gpu scale")


@pytest.mark.parametrize("scale", ["oracle", "tiny", "paper", "oracle-gpu"])
def test_commands_are_the_ones_the_recipe_headers_document(scale):
    stages, _ = reproduce.build_plan(scale=scale, nproc=8)
    cli = {s.name: _after_module(s.argv) for s in stages if "diladiff_cli" in s.argv}
    exp6 = ROOT / "recipes" / scale / "exp6_meanflow_vs_tvm.yaml"
    students = [c for c in documented_commands(exp6) if c[0] == "distill"]
    mine = [cli[f"distill-{label}"] for label, _, _ in reproduce.STUDENTS[scale]]
    assert sorted(map(tuple, mine)) == sorted(set(map(tuple, students)))
    if scale == "paper":  # pipeline.yaml's header runs every training stage so
        documented = documented_commands(ROOT / "recipes/paper/pipeline.yaml")
        for name in ("prepare", "train-mdlm", "train-ae", "encode", "train-prior", "distill"):
            assert cli[name] in documented, name


@pytest.mark.parametrize("scale", ["oracle", "tiny", "paper", "oracle-gpu"])
def test_the_script_stages_read_what_the_recipes_write(scale):
    stages = {s.name: s for s in reproduce.build_plan(scale=scale)[0]}
    base = ROOT / "recipes" / scale / ("pipeline.yaml" if scale == "paper" else "default.yaml")
    r = load_recipe(base)
    exp6 = load_recipe(ROOT / "recipes" / scale / "exp6_meanflow_vs_tvm.yaml").pareto
    students = {exp6.checkpoints[k] for k in exp6.checkpoints if k.startswith("diladiff/")}
    assert set(stages["latent-analysis"].inputs) == {r.ae.out, r.mdlm.out}
    quality = {r.prior.out, r.encode.out, r.distill.out, *students}
    assert set(stages["prior-quality"].inputs) == quality  # the default student and exp6's
    assert (r.distill.out in students) == (scale == "paper")  # tiny: tuned apart, see exp6


def test_only_selects_and_rejects_unknown_names():
    stages, _ = reproduce.build_plan(scale="tiny")
    names = [s.name for s in reproduce.select(stages, "pareto,report,train-ae")]
    assert names == ["train-ae", "pareto-exp5", "pareto-exp2", "pareto-exp3", "pareto-exp4",
                     "pareto-exp6", "report"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        reproduce.select(stages, "train")


def test_stages_are_left_out_by_the_loaded_recipe():
    """The loader decides (extends followed): the paper pipeline scores GenPPL with
    gpt2-large, so it trains no judge; a recipe without `prior` has no prior or student."""
    tiny = load_recipe(ROOT / "recipes/tiny/default.yaml")
    paper = load_recipe(ROOT / "recipes/paper/exp6_meanflow_vs_tvm.yaml")  # extends pipeline
    for needs in (["data"], ["judge"], ["ae"], ["prior"], ["distill"], ["pareto"]):
        assert reproduce.missing_section(tiny, needs) is None, needs
    assert "gpt2-large" in reproduce.missing_section(paper, ["judge"])
    assert reproduce.missing_section(paper, ["distill"]) is None
    bare = load_recipe(ROOT / "recipes/tiny/default.yaml", ["prior=null", "ae=null"])
    assert reproduce.missing_section(bare, ["ae"]) == "has no 'ae' section"
    assert reproduce.missing_section(bare, ["prior"]) == "has no 'prior' section"
    assert "prior" in reproduce.missing_section(bare, ["distill"])


# ----------------------------------------------------------------------------- skip rules


def test_script_stage_skip_rule_compares_mtimes(tmp_path):
    ckpt, latents, out = tmp_path / "ladiff.pt", tmp_path / "latents", tmp_path / "q.json"
    ckpt.write_text("w")
    (latents / "valid").mkdir(parents=True)
    (latents / "valid" / "index.json").write_text("{}")
    os.utime(ckpt, ns=(1_000_000_000, 1_000_000_000))
    os.utime(latents / "valid" / "index.json", ns=(2_000_000_000, 2_000_000_000))
    assert not reproduce.is_up_to_date(out, [ckpt, latents])  # no output yet
    out.write_text("{}")
    os.utime(out, ns=(3_000_000_000, 3_000_000_000))
    assert reproduce.is_up_to_date(out, [ckpt, latents])
    os.utime(latents / "valid" / "index.json", ns=(4_000_000_000, 4_000_000_000))
    assert not reproduce.is_up_to_date(out, [ckpt, latents])  # a newer file in the directory
    os.utime(out, ns=(5_000_000_000, 5_000_000_000))
    assert reproduce.is_up_to_date(out, [ckpt, latents])
    assert not reproduce.is_up_to_date(out, [ckpt, tmp_path / "missing.pt"])


def test_found_done_reads_each_commands_json():
    assert reproduce.found_done({"checkpoint": "a.pt", "step": 400, "skipped": True})
    assert not reproduce.found_done({"checkpoint": "a.pt", "step": 400, "skipped": False})
    assert reproduce.found_done({"reused": True, "out_dir": "d"})
    assert reproduce.found_done({"skipped_training": True})
    assert reproduce.found_done({"cells_run": 0, "cells_cached": 10})
    assert not reproduce.found_done({"cells_run": 2, "cells_cached": 8})
    assert reproduce.found_done({"latents": [{"encoded": 0}, {"encoded": 0}]})
    assert not reproduce.found_done({"latents": [{"encoded": 0}, {"encoded": 3}]})
    lines = ["noise\n", "{\n", '  "a": {\n', '    "skipped": true\n', "  },\n", '  "b": 1\n', "}\n"]
    assert reproduce.last_json(lines) == {"a": {"skipped": True}, "b": 1}


def _stage(name: str, code: str, **kw) -> object:
    return reproduce.Stage(name, (sys.executable, "-c", code), **kw)


def test_timings_keep_the_run_that_did_the_work(tmp_path, capsys):
    timings = tmp_path / "timings.json"
    out, ckpt = tmp_path / "record.json", tmp_path / "in.pt"
    ckpt.write_text("w")
    write = f"import pathlib, time; time.sleep(0.3); pathlib.Path({str(out)!r}).write_text('{{}}')"
    done = "import json; print(json.dumps({'skipped': True}, indent=2))"
    work = "import json; print(json.dumps({'skipped': False}, indent=2))"
    first = [
        _stage("script", write, kind="script", output=str(out), inputs=(str(ckpt),)),
        _stage("train", work),
    ]
    run = dict(timings_path=timings, run_conditions={"scale": "test"})
    assert reproduce.run_plan(first, **run) == 0
    t1 = json.loads(timings.read_text())["stages"]
    assert t1["script"]["skipped"] is False and t1["script"]["seconds"] >= 0.3
    assert t1["train"]["skipped"] is False and t1["train"]["returncode"] == 0

    second = [first[0], _stage("train", done)]  # the script's record is newer than its input
    assert reproduce.run_plan(second, **run) == 0
    t2 = json.loads(timings.read_text())
    for name in ("script", "train"):
        entry = t2["stages"][name]
        assert entry["skipped"] is True
        assert (entry["seconds"], entry["when"]) == (t1[name]["seconds"], t1[name]["when"])
        assert "checked" in entry
    assert t2["conditions"] == {"scale": "test"}
    assert "skipped (up to date)" in capsys.readouterr().out

    assert reproduce.run_plan(second, force=True, **run) == 0  # --force reruns the script
    assert json.loads(timings.read_text())["stages"]["script"]["skipped"] is False


def test_a_failing_stage_stops_the_run_with_its_code(tmp_path, capsys):
    timings = tmp_path / "timings.json"
    marker = tmp_path / "never"
    stages = [
        _stage("ok", "pass"),
        _stage("broken", "import sys; sys.exit(3)"),
        _stage("after", f"open({str(marker)!r}, 'w')"),
    ]
    code = reproduce.run_plan(stages, timings_path=timings, run_conditions={})
    assert code == 3 and not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: stage 'broken' failed (exit 3)")
    entries = json.loads(timings.read_text())["stages"]
    assert entries["broken"]["returncode"] == 3 and "after" not in entries


def test_forked_stages_run_as_a_fresh_interpreter_would(tmp_path, capsys):
    """A stage of this interpreter runs in a forked child: the script's argv, __name__,
    working directory, sys.path[0] and environment as `python script.py` would have them,
    its stdout echoed and read for its JSON, its exit status the stage's; `-m` too."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'name': __name__, 'cwd': os.getcwd(),\n"
        "                  'path0': sys.path[0], 'env': os.environ.get('STAGE_VAR'),\n"
        "                  'pid': os.getpid(), 'skipped': True}))\n"
        "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else None)\n"
    )
    timings = tmp_path / "timings.json"
    forked = reproduce.Stage("forked", (sys.executable, str(script), "a"))
    run = dict(timings_path=timings, run_conditions={}, env={**os.environ, "STAGE_VAR": "x"})
    assert reproduce._forkable(forked.argv) and not reproduce._forkable(_stage("c", "").argv)
    assert reproduce.run_plan([forked], fork=True, **run) == 0
    seen = json.loads(next(ln for ln in capsys.readouterr().out.splitlines() if ln[:1] == "{"))
    assert seen == {"argv": ["a"], "name": "__main__", "cwd": str(ROOT), "path0": str(tmp_path),
                    "env": "x", "pid": seen["pid"], "skipped": True}  # fmt: skip
    assert seen["pid"] != os.getpid() and os.environ.get("STAGE_VAR") is None
    assert json.loads(timings.read_text())["stages"]["forked"]["returncode"] == 0

    failing = reproduce.Stage("failing", (sys.executable, str(script), "a", "4"))
    assert reproduce.run_plan([failing], fork=True, **run) == 4
    module = reproduce.Stage("module", (sys.executable, "-m", "diladiff_cli", "--help"))
    assert reproduce.run_plan([module], fork=True, **run) == 0
    assert "train-mdlm" in capsys.readouterr().out


def _clock(log: Path, name: str, sleep: float = 0.4) -> str:
    """A stage that appends its name, start, end and OMP_NUM_THREADS to ``log``."""
    threads = "os.environ.get('OMP_NUM_THREADS')"
    return (
        f"import json, os, time; t = time.time(); time.sleep({sleep!r}); print('line of {name}'); "
        f"open({str(log)!r}, 'a').write(json.dumps([{name!r}, t, time.time(), {threads}]) + '\\n')"
    )


def test_two_stages_at_a_time_where_the_plan_allows(tmp_path, capsys):
    """--jobs 2: a stage starts once the stages it names are done; two that may, run side
    by side on the shared thread count, their lines marked with their names; a stage that
    must run alone has nothing beside it; the report counts the overlap once."""
    log, timings = tmp_path / "log.jsonl", tmp_path / "timings.json"
    stages = [
        _stage("first", _clock(log, "first", 0.1), alone=True),
        _stage("b", _clock(log, "b"), after=("first",)),
        _stage("c", _clock(log, "c"), after=("first",)),
        _stage("d", _clock(log, "d", 0.1), after=("b",)),
        _stage("sweep", _clock(log, "sweep", 0.1), alone=True),  # after every stage before it
    ]
    run = dict(timings_path=timings, run_conditions={}, env=dict(os.environ))
    assert reproduce.run_plan(stages, jobs=2, threads=1, **run) == 0
    seen = {r[0]: r[1:] for r in map(json.loads, log.read_text().splitlines())}

    def overlap(x: str, y: str) -> bool:
        return seen[x][0] < seen[y][1] and seen[y][0] < seen[x][1]

    assert overlap("b", "c")
    assert not any(overlap("first", n) or overlap("sweep", n) for n in "bcd")
    assert seen["d"][0] >= seen["b"][1] and seen["sweep"][0] >= max(seen[n][1] for n in "bcd")
    assert [seen[n][2] for n in ("b", "c", "d")] == ["1", "1", "1"]
    assert seen["first"][2] == seen["sweep"][2] == os.environ.get("OMP_NUM_THREADS")
    out = capsys.readouterr().out
    assert "b | line of b" in out and "c | line of c" in out
    entries = json.loads(timings.read_text())["stages"]
    assert list(entries) == [s.name for s in stages]
    assert [entries[n].get("threads") for n in entries] == [None, 1, 1, 1, None]
    wall = report.pipeline_wall(entries.values())
    assert wall < sum(e["seconds"] for e in entries.values()) - 0.2  # b and c overlapped

    # One at a time (--jobs 1), the same stages follow the plan's order on every thread.
    log.unlink()
    assert reproduce.run_plan(stages, force=True, **run) == 0
    seen = [json.loads(r) for r in log.read_text().splitlines()]
    assert [r[0] for r in seen] == ["first", "b", "c", "d", "sweep"]
    assert all(a[2] <= b[1] for a, b in zip(seen, seen[1:], strict=False))
    assert "threads" not in json.loads(timings.read_text())["stages"]["b"]


def test_beside_a_failure_the_running_stage_ends_and_nothing_starts(tmp_path, capsys):
    log, marker = tmp_path / "log.jsonl", tmp_path / "never"
    stages = [
        _stage("slow", _clock(log, "slow", 0.6), after=()),
        _stage("broken", "import sys; sys.exit(3)", after=()),
        _stage("later", f"open({str(marker)!r}, 'w')", after=()),
    ]
    timings = tmp_path / "timings.json"
    code = reproduce.run_plan(stages, timings_path=timings, run_conditions={}, jobs=2, threads=1)
    assert code == 3 and not marker.exists()
    entries = json.loads(timings.read_text())["stages"]
    assert entries["slow"]["returncode"] == 0 and log.read_text().startswith('["slow"')
    assert entries["broken"]["returncode"] == 3 and "later" not in entries
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: stage 'broken' failed (exit 3)")


def test_ctrl_c_beside_another_stage_records_both_as_interrupted_with_their_threads(
    tmp_path, monkeypatch
):
    class InterruptedSelector(reproduce.selectors.DefaultSelector):
        def select(self, timeout=None):  # Ctrl-C while both stages run
            raise KeyboardInterrupt

    monkeypatch.setattr(reproduce.selectors, "DefaultSelector", InterruptedSelector)
    stages = [_stage(n, "import time; time.sleep(0.2)", after=()) for n in ("a", "b")]
    timings = tmp_path / "timings.json"
    code = reproduce.run_plan(stages, timings_path=timings, run_conditions={}, jobs=2, threads=1)
    assert code == 130
    entries = json.loads(timings.read_text())["stages"]
    assert {n: (e["returncode"], e.get("threads")) for n, e in entries.items()} == {
        "a": (130, 1),
        "b": (130, 1),
    }


def test_a_forked_stage_beside_another_runs_on_its_share_of_the_threads(tmp_path, capsys):
    import torch

    script = tmp_path / "threads.py"
    script.write_text(
        "import json, os, sys, torch\n"
        "print(json.dumps({'torch': torch.get_num_threads(), 'tty': os.environ.get("
        "'TTY_INTERACTIVE'), 'forked': 'torch' in sys.modules}))\n"
    )
    stage = reproduce.Stage("shared", (sys.executable, str(script)), after=())
    run = dict(timings_path=tmp_path / "t.json", run_conditions={}, env=dict(os.environ))
    before = torch.get_num_threads()
    assert reproduce.run_plan([stage], fork=True, jobs=2, threads=1, **run) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "{" in ln)
    assert json.loads(line.split(" | ", 1)[1]) == {"torch": 1, "tty": "0", "forked": True}
    assert torch.get_num_threads() == before  # the parent's own count is left alone


@pytest.mark.parametrize("args", [("--jobs", "3"), ("--jobs", "2", "--scale", "paper")])
def test_jobs_beyond_what_the_scale_allows_is_refused(args, capsys):
    assert reproduce.main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: --jobs must be 1 or 2")


def test_pipeline_wall_counts_overlapping_stages_once():
    entries = [
        {"seconds": 10.0, "started": 100.0},
        {"seconds": 4.0, "started": 105.0},  # inside the first
        {"seconds": 6.0, "started": 108.0},  # overlaps its end by 2
        {"seconds": 3.0},  # no start recorded (an older run): added
        {"seconds": 1.0, "started": 200.0},
    ]
    assert report.pipeline_wall(entries) == pytest.approx(10 + 4 + 3 + 1)
    assert report.pipeline_wall([{"seconds": 2.0}, {"seconds": 3.0}]) == 5.0


def test_the_plan_runs_two_at_a_time_only_what_reads_nothing_unfinished():
    """Every stage waits for the stages whose outputs it reads, and for nothing after it;
    the stages that time what they do, or gain most from a second thread, run alone."""
    for scale in reproduce.SCALES:
        stages, _ = reproduce.build_plan(scale=scale)
        deps = reproduce.dependencies(stages)
        names = [s.name for s in stages]
        for i, stage in enumerate(stages):
            assert deps[stage.name] <= set(names[:i]), stage.name
        alone = {s.name for s in stages if s.alone}
        assert {"prepare", "train-mdlm", "report"} <= alone
        assert {n for n in names if n.startswith("pareto-")} <= alone
        byname = {s.name: s for s in stages}
        assert deps["train-ae"] == {"train-mdlm"} and deps["encode"] == {"train-ae"}
        students = {n for n in names if n.startswith("distill")}
        assert all(deps[n] == {"train-prior"} for n in students)
        assert students <= deps["prior-quality"]
        assert "train-ae" in deps["latent-analysis"]
        assert deps["pareto-exp5"] == set(names[: names.index("pareto-exp5")])
        assert byname["report"].after is None


def test_timing_entry_without_an_earlier_run():
    entry = reproduce.timing_entry(
        None, command="c", returncode=0, seconds=0.0, skipped=True, when="now"
    )
    assert entry["seconds"] == 0.0 and entry["note"] == "done before any timed run"


def test_a_partly_cached_stage_says_its_time_is_the_redone_part_only():
    assert reproduce.partly_cached({"cells_run": 2, "cells_cached": 8}) == "8 of 10 cells cached"
    for record in ({"cells_run": 0, "cells_cached": 8}, {"cells_run": 9, "cells_cached": 0},
                   {"skipped": True}, None):  # fmt: skip
        assert reproduce.partly_cached(record) is None
    entry = reproduce.timing_entry(
        None, command="c", returncode=0, seconds=21.0, skipped=False, when="now",
        partial="8 of 10 cells cached",
    )  # fmt: skip
    assert entry["seconds"] == 21.0 and entry["partial"] == "8 of 10 cells cached"
    stages = {
        "train-mdlm": {"returncode": 0, "seconds": 390.0, "when": "t0", "skipped": True},
        "pareto-exp2": {"returncode": 0, "seconds": 21.0, "when": "t1", "skipped": False},
    }
    whole = "\n".join(report.timings_section(SimpleNamespace(scale="oracle"), {"stages": stages}))
    assert "so the total is the whole pipeline's cost" in whole
    stages["pareto-exp2"] = entry
    part = "\n".join(report.timings_section(SimpleNamespace(scale="oracle"), {"stages": stages}))
    assert "| pareto-exp2 | 21.0 s | done, 8 of 10 cells cached (the time of the redone" in part
    assert "this total understates the whole pipeline's cost" in part


# ----------------------------------------------------------------------------- report


SE_OF = ("mauve", "genppl", "entropy", "seconds_per_sample", "latent_share")


def _row(model, ndisc, *, mauve, genppl, seconds, ncont=0, selection="random",
         temperature=1.0, distill="", entropy=4.0, latent_share=0.0, se=None,
         **extra):  # fmt: skip
    """A pareto.csv row; ``se``: the standard error over 3 seeds of every measure (a
    fraction of GenPPL and of the seconds), None: one seed (no _se columns)."""
    row = {k: "" for k in CSV_COLUMNS}
    row.update(model=model, ncont=ncont, ndisc=ndisc, selection=selection,
               temperature=temperature, distill=distill, num_samples=64, forward_passes=ndisc,
               forward_passes_latent=ncont, tokens_per_forward=128 / ndisc, genppl=genppl,
               mauve=mauve, entropy=entropy, seconds_per_sample=seconds,
               latent_share=latent_share, genppl_floor=170.0, judge_valid_ppl=150.0,
               reference_entropy=4.3, device="cpu (1 threads)",
               cell=f"{model}-nc{ncont}-nd{ndisc}")  # fmt: skip
    if se is not None:
        row["seeds"] = 3
        for m in SE_OF:
            row[f"{m}_se"] = se * (row[m] if m in ("genppl", "seconds_per_sample") else 1.0)
    row.update(extra)
    return row


def _write_sweep(directory: Path, rows: list[dict], *, mauve_real: float = 0.97) -> None:
    directory.mkdir(parents=True)
    extra = [k for r in rows for k in r if k not in CSV_COLUMNS]
    with (directory / "pareto.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, *dict.fromkeys(extra)])
        writer.writeheader()
        writer.writerows(rows)
    floor = {"genppl": 171.5, "entropy": 4.28, "num_references": 64, "mauve_real": mauve_real,
             "scorer_valid_ppl": 170.25}  # fmt: skip
    (directory / "floor.json").write_text(json.dumps({"key": "k", "floor": floor}))


def _synthetic_results(results: Path, *, se: float | None = 0.01) -> None:
    """Sweeps 2, 4 and 5 and the timings; ``se``: every measure's standard error over 3
    seeds (MAUVE, entropy and latent share in their units, GenPPL and seconds as a
    fraction), None: single-seed rows without standard errors."""
    # Experiment 5: at every quality level LaDiff costs half of MDLM's seconds, DiLaDiff a
    # quarter (same MAUVE and GenPPL per Ndisc, costs in ratio): speed-ups 2x and 4x exactly.
    ndiscs, mauves, ppls = (4, 8, 16, 32), (0.1, 0.2, 0.4, 0.8), (800.0, 400.0, 200.0, 100.0)
    shares = (0.10, 0.06, 0.03, 0.01)  # DiLaDiff: mean 5.0 %, 6.0 % at Ndisc = 128 / 16 = 8
    rows = []
    for i, (n, m, p) in enumerate(zip(ndiscs, mauves, ppls, strict=True)):
        cost = 2.0**i
        rows.append(_row("mdlm", n, mauve=m, genppl=p, seconds=cost, se=se))
        rows.append(_row("ladiff", n, mauve=m, genppl=p, seconds=cost / 2, ncont=200,
                         latent_share=0.5, se=se))  # fmt: skip
        rows.append(_row("diladiff", n, mauve=m, genppl=p, seconds=cost / 4, ncont=5,
                         latent_share=shares[i], se=se))  # fmt: skip
    _write_sweep(results / "exp5_diladiff_frontier", rows)
    # Experiment 2: LaDiff's MAUVE 0.1 above MDLM's at Ndisc 8, 0.2 below at Ndisc 16.
    rows = [_row("mdlm", n, mauve=0.5, genppl=300.0, seconds=1.0, se=se) for n in (8, 16)]
    rows += [_row("ladiff", 8, mauve=0.6, genppl=250.0, seconds=1.0, ncont=200, se=se),
             _row("ladiff", 16, mauve=0.3, genppl=250.0, seconds=1.0, ncont=200,
                  se=se)]  # fmt: skip
    _write_sweep(results / "exp2_ladiff_vs_mdlm", rows)
    # Experiment 4: every confidence - random gap +0.01, inside the noise 2 sqrt(2) 0.01.
    rows = [
        _row(model, n, mauve=0.5 + (0.01 if sel == "confidence" else 0.0), genppl=300.0,
             seconds=1.0, selection=sel, ncont=0 if model == "mdlm" else 200, se=se)
        for model in ("mdlm", "ladiff") for n in (8, 16) for sel in ("random", "confidence")
    ]  # fmt: skip
    _write_sweep(results / "exp4_token_selection", rows)
    stages = {
        "prepare": {"command": "c", "returncode": 0, "seconds": 100.0, "when": "t0",
                    "skipped": False},
        "train-mdlm": {"command": "c", "returncode": 0, "seconds": 1300.0, "when": "t0",
                       "skipped": True, "checked": {"when": "t1", "seconds": 2.0}},
        "report": {"command": "c", "returncode": 0, "seconds": 5.0, "when": "t0",
                   "skipped": False},
    }  # fmt: skip
    timings = {"conditions": {"omp_num_threads": "1", "cpu_count": 2}, "stages": stages}
    (results / "timings.json").write_text(json.dumps(timings))


def test_report_at_the_gpu_scale_states_its_target_not_the_cpu_budget(tmp_path):
    results = tmp_path / "results"
    _synthetic_results(results)
    assert report.main(["--scale", "oracle-gpu", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    assert "# DiLaDiff reproduction report (oracle-gpu scale)" in text
    assert (
        "Target: about 10 min on one GPU for the oracle-gpu scale (an estimate made before "
        "any run, recipes/oracle-gpu/default.yaml); this pipeline's stages took 23.3 min"
    ) in text
    assert "Budget: <=" not in text


def _sections(text: str) -> dict[int, str]:
    parts = text.split("\n## Experiment ")[1:]
    return {int(p[0]): p.split("\n## ")[0] for p in parts}


def test_report_on_synthetic_results(tmp_path):
    results = tmp_path / "results"
    _synthetic_results(results)
    assert report.main(["--scale", "tiny", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    head = text.split("## Stage wall times")[0]
    assert "DiLaDiff vs MDLM, seconds per sample: at equal MAUVE **4.00x**" in head
    assert "at equal GenPPL **4.00x**" in head
    assert "LaDiff vs MDLM, seconds per sample: at equal MAUVE **2.00x**" in head
    assert "5.0 % on average over its Ndisc, 6.0 % at Ndisc = L/16 = 8" in head
    assert "| **total** | **1400 s (23.3 min)** |" in text  # the report's own line left out
    assert "over the 20-min budget" in text
    assert "| 170.2 | 171.5 | 4.28 | 0.97 | 64 |" in text  # judge, floor, entropy, MAUVE

    sections = _sections(text)
    assert sorted(sections) == [1, 2, 3, 4, 5, 6]
    for i, body in sections.items():
        verdicts = [line for line in body.splitlines() if line.startswith("**Verdict")]
        assert len(verdicts) == (0 if i in (1, 3, 6) else 1), (i, body)
        if i in (1, 3, 6):
            assert "Not run:" in body
    verdict = {i: next(x for x in s.splitlines() if x.startswith("**Verdict")) for i, s in
               sections.items() if i in (2, 4, 5)}  # fmt: skip
    # MAUVE 0.2 below MDLM's at Ndisc 16, beyond the noise 2 sqrt(2) 0.01 = 0.028
    assert verdict[2].startswith("**Verdict: mixed.**")
    assert "Equal throughput: *not supported*" in verdict[2]
    assert "MAUVE at Ndisc 16: -0.2 (noise 0.028)" in verdict[2]
    assert "MAUVE at Ndisc 8: +0.1 (noise 0.028)" in verdict[2]
    assert "Equal quality: *inconclusive*" in verdict[2]  # the frontiers share no MAUVE
    # +0.01 between the selections: inside the noise, so nothing either way for MDLM
    assert verdict[4].startswith("**Verdict: mixed.**")
    assert "MDLM collapses: *inconclusive*" in verdict[4]
    assert "LaDiff matches random: *supported*" in verdict[4]  # better is not penalised
    assert "margin ε = 1 - MAUVE(real, real) = 0.030" in verdict[4]
    assert (
        verdict[5].startswith("**Verdict: supported.**")
        and "Measured: 5.0 % ± 0.5 %." in (verdict[5])
    )
    assert "Not run: no `prior_quality.json`" in text
    assert "Exact measures" not in text  # not an oracle corpus


def test_report_on_one_seed_results(tmp_path):
    # rows without standard errors (the single-seed CSVs of earlier runs) still render, and
    # no verdict pretends to a yes or a no
    results = tmp_path / "results"
    _synthetic_results(results, se=None)
    assert report.main(["--scale", "tiny", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    assert "DiLaDiff vs MDLM, seconds per sample: at equal MAUVE **4.00x**" in text
    sections = _sections(text)
    for i in (2, 4, 5):
        line = next(x for x in sections[i].splitlines() if x.startswith("**Verdict"))
        assert line.startswith("**Verdict: inconclusive (one seed: no standard error).**"), line
        assert "supported*" not in line
    assert "MAUVE at Ndisc 16: -0.2;" in sections[2]  # the numbers, without a noise


def test_report_on_an_oracle_corpus(tmp_path):
    # Experiment 5 on an oracle corpus, 3 seeds per cell: the exact NLL decides. LaDiff
    # costs half of MDLM's seconds at every NLL, DiLaDiff a quarter; DiLaDiff's NLL is
    # LaDiff's to within 0.01 with standard errors of 0.005 (noise 0.014; margin 0.05).
    results = tmp_path / "results"
    nlls, rows = (4.0, 3.5, 3.0, 2.5), []
    for i, (n, q) in enumerate(zip((4, 8, 16, 32), nlls, strict=True)):
        cost = 2.0**i
        exact = dict(oracle_nll_se=0.005, oracle_nll_floor=1.89, oracle_purity=0.9,
                     oracle_purity_se=0.01)  # fmt: skip
        rows += [
            _row("mdlm", n, mauve=0.5, genppl=300.0, seconds=cost, se=0.01, oracle_nll=q,
                 **exact),
            _row("ladiff", n, mauve=0.5, genppl=300.0, seconds=cost / 2, ncont=200, se=0.01,
                 latent_share=0.5, oracle_nll=q, **exact),
            _row("diladiff", n, mauve=0.5, genppl=300.0, seconds=cost / 4, ncont=5, se=0.01,
                 latent_share=0.05, oracle_nll=q + 0.01, **exact),
        ]  # fmt: skip
    _write_sweep(results / "exp5_diladiff_frontier", rows)
    # Experiment 2 on the same corpus: LaDiff's NLL 0.02 below MDLM's (noise 2 sqrt(2)
    # 0.02 = 0.057) at equal Ndisc, and half the seconds.
    rows = []
    for n, q in ((8, 3.0), (16, 3.5)):
        rows += [
            _row("mdlm", n, mauve=0.5, genppl=300.0, seconds=16 / n, se=0.01, oracle_nll=q,
                 oracle_nll_se=0.02),
            _row("ladiff", n, mauve=0.5, genppl=300.0, seconds=8 / n, se=0.01, ncont=200,
                 oracle_nll=q - 0.02, oracle_nll_se=0.02),
        ]  # fmt: skip
    _write_sweep(results / "exp2_ladiff_vs_mdlm", rows)
    # Experiment 3: from T = 1 to 0.5 MDLM's samples crowd onto few topics (topic KL +0.5)
    # and lose 1 nat of entropy, LaDiff's move by 0.01 and 0.05 (standard errors 0.02).
    rows = [
        _row(model, 16, mauve=0.5, genppl=200.0, seconds=1.0, temperature=temp, se=0.02,
             entropy=entropy, ncont=0 if model == "mdlm" else 200, oracle_nll=3.0,
             oracle_nll_se=0.02, oracle_topic_kl=kl, oracle_topic_kl_se=0.02)
        for model, temp, kl, entropy in (("mdlm", 1.0, 0.05, 4.0), ("mdlm", 0.5, 0.55, 3.0),
                                         ("ladiff", 1.0, 0.05, 4.0),
                                         ("ladiff", 0.5, 0.06, 3.95))
    ]  # fmt: skip
    _write_sweep(results / "exp3_temperature", rows)

    assert report.main(["--scale", "tiny", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    head = text.split("## Stage wall times")[0]
    assert "DiLaDiff vs MDLM, seconds per sample: at equal oracle NLL **3.9" in head
    assert "LaDiff vs MDLM, seconds per sample: at equal oracle NLL **2.00x**" in head
    assert "with the qualities and costs shifted by ±2 SE" in head
    sections = _sections(text)
    five = sections[5]
    assert "Exact measures (oracle corpus" in five and "the floor: 1.89 nats/token" in five
    assert "| 2.51 ± 0.005 | - | 0.9 ± 0.01 |" in five  # DiLaDiff at Ndisc 32
    line = next(x for x in five.splitlines() if x.startswith("**Verdict"))
    assert line.startswith("**Verdict: supported.**"), line
    assert "DiLaDiff's oracle NLL not worse than LaDiff's" in line
    assert "Ndisc 4: excess +0.01 (noise 0.014)" in line
    line = next(x for x in sections[2].splitlines() if x.startswith("**Verdict"))
    # 0.02 lower at equal Ndisc is inside the noise; at equal NLL LaDiff is faster
    assert "Equal throughput: *inconclusive*" in line, line
    assert "oracle NLL at Ndisc 8: -0.02 (noise 0.057)" in line
    assert "Equal quality: *supported*" in line, line
    line = next(x for x in sections[3].splitlines() if x.startswith("**Verdict"))
    assert line.startswith("**Verdict: supported.** Topic KL: *supported*"), line
    assert "change MDLM +0.5 ± 0.028, LaDiff +0.01 ± 0.028; LaDiff - MDLM: -0.49" in line


def test_report_with_nothing_run(tmp_path):
    results = tmp_path / "empty"
    results.mkdir()
    assert report.main(["--scale", "paper", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    assert text.count("Not run") == 10  # headline, timings, floor, 6 experiments, prior
    assert "Verdict" not in text


def test_report_latent_temperature_and_distillation_sections(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "exp1_latent_analysis").mkdir()
    # BERTScore means with their standard errors ("<key>_se"); vs ground truth rises by
    # 0.02 between t = 0.5 and 1, inside the noise 2 sqrt(2) 0.01
    curve = [{"t": t, "vs_t0_decode": a, "vs_ground_truth": b, "vs_t0_decode_se": 0.01,
              "vs_ground_truth_se": 0.01}
             for t, a, b in ((0.0, 0.9, 0.6), (0.5, 0.7, 0.5), (1.0, 0.5, 0.52))]  # fmt: skip
    analysis = {
        "nelbo": {"z": 2.5, "null": 4.0, "mdlm": 4.1, "blocks": 64},
        "reconstruction": [
            {"ndisc": 8, "selection": "random", "model": m, "token_accuracy": acc,
             "bertscore_f1": f1}
            for m, acc, f1 in (("AE, encoder z", 0.8, 0.9), ("AE, null latent", 0.1, 0.3))
        ],
        "latent_analysis": {"blocks": 32, "ndisc": 8, "curve": curve, "intra_pool": 0.8,
                            "inter_pool": 0.5, "ground_truth_vs_other_block": 0.4,
                            "intra_pool_se": 0.02, "inter_pool_se": 0.02},
    }  # fmt: skip
    (results / "exp1_latent_analysis" / "analysis.json").write_text(json.dumps(analysis))
    # Experiment 3: from T = 1 to 0.5 MDLM loses 0.4 MAUVE and 1.3 nats, LaDiff 0.05 and 0.1.
    rows = []
    for model, top, low in (("mdlm", (0.5, 4.3), (0.1, 3.0)), ("ladiff", (0.6, 4.3), (0.55, 4.2))):
        for temp, (mauve, entropy) in ((1.0, top), (0.5, low)):
            rows.append(_row(model, 16, mauve=mauve, genppl=200.0, seconds=1.0, entropy=entropy,
                             temperature=temp, ncont=0 if model == "mdlm" else 200,
                             se=0.01))  # fmt: skip
    _write_sweep(results / "exp3_temperature", rows)
    # Experiment 6: every student beats the teacher by >= 0.15 at Ncont <= 5, but MeanFlow
    # and TVM differ by 0.1 (> ε) with LogitNormal(-1, 2) at Ncont = 5.
    # (standard errors 0.005: the noise 0.014 leaves equal MAUVEs within the margin ε 0.03)
    rows = [_row("ladiff", 16, mauve=m, genppl=200.0, seconds=1.0, ncont=n, se=0.005)
            for n, m in ((1, 0.1), (5, 0.3), (200, 0.6))]  # fmt: skip
    for label in ("meanflow-ln11", "meanflow-ln12", "tvm-ln11", "tvm-ln12"):
        for n, m in ((1, 0.5), (5, 0.45 if label == "tvm-ln12" else 0.55)):
            rows.append(_row("diladiff", 16, mauve=m, genppl=200.0, seconds=1.0, ncont=n,
                             distill=label, se=0.005))  # fmt: skip
    _write_sweep(results / "exp6_meanflow_vs_tvm", rows)
    # a prior_report.py record (the synthetic stand-in run of an earlier docs/prior.json)
    (results / "prior_quality.json").write_text(
        (ROOT / "tests" / "data" / "prior_quality.json").read_text()
    )

    assert report.main(["--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    sections = _sections(text)
    verdict = {i: [x for x in s.splitlines() if x.startswith("**Verdict")] for i, s in
               sections.items()}  # fmt: skip
    assert [len(verdict[i]) for i in range(1, 7)] == [1, 0, 1, 0, 0, 1]
    assert verdict[1][0].startswith("**Verdict: supported.**"), verdict[1][0]
    assert "intra - inter: +0.3 (noise 0.057)" in verdict[1][0]
    assert (
        "vs ground truth: change -0.08 (noise 0.028), largest reversal 0.02 at step 2"
        in (verdict[1][0])
    )
    assert verdict[3][0].startswith("**Verdict: supported.**"), verdict[3][0]
    assert "change MDLM -0.4 ± 0.014, LaDiff -0.05 ± 0.014; LaDiff - MDLM: +0.35" in verdict[3][0]
    assert "LaDiff - MDLM: +1.2 (noise 0.04)" in verdict[3][0]  # entropy
    assert verdict[6][0].startswith("**Verdict: mixed.**")
    assert "Objectives agree: *not supported*" in verdict[6][0]
    assert "ln12@5: +0.1 (noise 0.014)" in verdict[6][0] and "ln11@5: +0 (noise" in verdict[6][0]
    assert "Beat the teacher: *supported*" in verdict[6][0]
    assert "tvm-ln12@5: +0.15 (noise 0.014)" in verdict[6][0]
    assert "- student 1 (meanflow, diladiff.pt): 383 vs 329, within the seed noise: no" in text
    assert "Not run: no `exp5_diladiff_frontier/pareto.csv`" in text  # the headline


def _exp1_results(results: Path, *, se: float | None, topic_se: float | None = None) -> None:
    """An analysis.json whose curves fall (BERTScore 0.9 -> 0.7 -> 0.5 vs the t = 0 decode,
    0.7 -> 0.6 -> 0.5 vs the ground truth; topic kept 1 -> 0.6 -> 0.25), intra-pool 0.1
    above inter-pool in BERTScore and 0.6 in same-topic pairs; ``se``: the standard error
    of every BERTScore mean (None: a record written before them), ``topic_se``: of every
    topic share (None: not an oracle corpus, no topic columns)."""
    curve = []
    for t, a, b, kept in ((0.0, 0.9, 0.7, 1.0), (0.5, 0.7, 0.6, 0.6), (1.0, 0.5, 0.5, 0.25)):
        point = {"t": t, "vs_t0_decode": a, "vs_ground_truth": b}
        if se is not None:
            point |= {"vs_t0_decode_se": se, "vs_ground_truth_se": se}
        if topic_se is not None:
            point |= {"topic_kept": kept, "topic_kept_se": topic_se}
        curve.append(point)
    a = {"blocks": 32, "ndisc": 8, "curve": curve, "intra_pool": 0.6, "inter_pool": 0.5,
         "ground_truth_vs_other_block": 0.4}  # fmt: skip
    if se is not None:
        a |= {f"{k}_se": se for k in ("intra_pool", "inter_pool", "ground_truth_vs_other_block")}
    if topic_se is not None:
        for key, share in (("intra_pool_same_topic", 0.85), ("inter_pool_same_topic", 0.25),
                           ("ground_truth_same_topic", 0.25)):  # fmt: skip
            a |= {key: share, f"{key}_se": topic_se}
    analysis = {"nelbo": {"z": 2.5, "null": 4.0, "mdlm": 4.1, "blocks": 64},
                "reconstruction": [], "latent_analysis": a}  # fmt: skip
    (results / "exp1_latent_analysis").mkdir(parents=True)
    (results / "exp1_latent_analysis" / "analysis.json").write_text(json.dumps(analysis))


def _exp1_verdict(results: Path) -> tuple[str, str]:
    assert report.main(["--results", str(results)]) == 0
    body = _sections((results / "REPORT.md").read_text())[1]
    return body, next(x for x in body.splitlines() if x.startswith("**Verdict"))


def test_report_exp1_clearly_falling_with_topics_is_supported(tmp_path):
    # standard errors 0.01 (BERTScore) and 0.05 (topic shares): every fall is beyond 2 SE
    _exp1_results(tmp_path, se=0.01, topic_se=0.05)
    body, line = _exp1_verdict(tmp_path)
    assert line.startswith("**Verdict: supported.**"), line
    assert "| t | vs t = 0 decode | vs ground truth | topic kept |" in body
    assert "| 0.50 | 0.7 ± 0.01 | 0.6 ± 0.01 | 0.6 ± 0.05 |" in body
    assert "topic kept: change -0.75 (noise 0.14)" in line
    assert "BERTScore intra - inter: +0.1 (noise 0.028)" in line
    assert "same topic intra - inter: +0.6 (noise 0.14)" in line
    assert "same topic (exact): intra-pool 0.85 ± 0.05, inter-pool 0.25 ± 0.05" in body


def test_report_exp1_inside_the_noise_is_inconclusive(tmp_path):
    # standard errors 0.1: each BERTScore fall (0.2 at most) is inside 2 sqrt(2) 0.1 = 0.28,
    # and the topic shares' (0.3) too; no reversal either, so nothing either way
    _exp1_results(tmp_path, se=0.1, topic_se=0.3)
    _, line = _exp1_verdict(tmp_path)
    assert line.startswith("**Verdict: inconclusive.**"), line
    assert "one seed" not in line
    assert "vs ground truth: change -0.2 (noise 0.28)" in line


def test_report_exp1_without_standard_errors_or_topics(tmp_path):
    # a record written before the standard errors (and a corpus without an oracle)
    _exp1_results(tmp_path, se=None)
    body, line = _exp1_verdict(tmp_path)
    assert line.startswith("**Verdict: inconclusive (one seed: no standard error).**"), line
    assert "topic" not in line and "| t | vs t = 0 decode | vs ground truth |" in body
    assert "rerun the latent-analysis stage" in body


def test_headline_lower_bound_when_the_frontiers_share_no_quality(tmp_path):
    # Every DiLaDiff and LaDiff cell beats MDLM's best (NLL 6.5 at 0.04 s) by far more than
    # the noise: the frontiers share no NLL. DiLaDiff's cheapest cell costs 0.01 s, so at
    # its NLL the speed-up is at least 0.04 / 0.01 = 4x; LaDiff's cheapest costs 0.05 s: a
    # bound of 0.8x, which says nothing.
    results = tmp_path / "results"
    rows = []
    costs = {"mdlm": (0.01, 0.02, 0.04), "diladiff": (0.01, 0.02, 0.04),
             "ladiff": (0.05, 0.06, 0.08)}  # fmt: skip
    nlls = {"mdlm": (7.6, 7.0, 6.5), "diladiff": (6.2, 5.6, 5.1), "ladiff": (6.1, 5.5, 5.0)}
    mauves = {"mdlm": (0.1, 0.15, 0.2), "diladiff": (0.9, 0.92, 0.95), "ladiff": (0.9, 0.92, 0.95)}
    for model, ncont in (("mdlm", 0), ("ladiff", 200), ("diladiff", 5)):
        for i, n in enumerate((4, 8, 16)):
            rows.append(_row(model, n, mauve=mauves[model][i], genppl=1000.0 / (i + 1) /
                             (1 if model == "mdlm" else 4), seconds=costs[model][i], ncont=ncont,
                             se=0.01, latent_share=0.05, oracle_nll=nlls[model][i],
                             oracle_nll_se=0.03))  # fmt: skip
    _write_sweep(results / "exp5_diladiff_frontier", rows)
    assert report.main(["--scale", "oracle", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    head = text.split("## Stage wall times")[0]
    assert (
        "DiLaDiff vs MDLM, seconds per sample: at equal oracle NLL **≥ 4.00x** (MDLM never "
        "reaches DiLaDiff's quality at its cheapest point; its best cell costs 0.04 s, "
        "DiLaDiff's cheapest cell better than that beyond 2 SE 0.01 s)"
    ) in head
    assert "at equal MAUVE **≥ 4.00x**" in head and "at equal GenPPL **≥ 4.00x**" in head
    assert (
        "LaDiff vs MDLM, seconds per sample: at equal oracle NLL **≥ 0.80x** (MDLM never "
        "reaches LaDiff's quality at its cheapest point; its best cell costs 0.04 s, LaDiff's "
        "cheapest cell better than that beyond 2 SE 0.05 s; a bound at or below 1x says nothing)"
    ) in head
    line = next(x for x in _sections(text)[5].splitlines() if x.startswith("**Verdict"))
    assert "Speed-up over MDLM: *supported*" in line, line
    verdicts = json.loads((results / "verdicts.json").read_text())  # the outcomes alone
    assert verdicts["exp5"]["parts"]["speed-up over MDLM"] == "supported"
    assert verdicts["exp5"]["overall"] == "mixed"
    assert "Measured: >= 4.00x (the baseline's best quality 6.5 ± 0.03 at 0.04 ± 0.0004 s" in line


# ----------------------------------------------------------------------------- pipeline seeds


def test_dry_run_seed_seeds_every_training_stage_and_shifts_the_sampling_seeds():
    commands = dict(_dry_run("--seed", "2"))
    trains = ("train-mdlm", "train-judge", "train-ae", "train-bound", "train-prior", "distill")
    students = [name for name in commands if name.startswith("distill-")]
    for name in (*trains, *students):
        assert _after_module(tuple(commands[name].split()))[-2:] == ["--seed", "2"], name
    assert commands["encode"].endswith("encode recipes/oracle/default.yaml")  # deterministic
    assert commands["latent-analysis"].endswith("--bench-steps 0 --seed 2")
    # three sampling seeds per cell in the recipes: seed 2 samples with 6, 7, 8
    for i, exp in enumerate(reproduce.SWEEPS, 2):
        assert commands[f"pareto-exp{i}"].endswith(
            f"--out results/oracle/pipeline_seed2/{exp} --set 'pareto.seeds=[6, 7, 8]'"
        )
    assert commands["report"].endswith("--results results/oracle/pipeline_seed2")
    # seed 0 is the recipes as written: no --seed anywhere
    assert not any("--seed" in c.split() for c in dict(_dry_run()).values())


def test_a_runs_directory_holds_one_pipeline_seed(tmp_path):
    runs = tmp_path / "runs"
    assert reproduce.claim_seed(runs, 1) is None  # a fresh directory takes the seed
    assert json.loads((runs / "pipeline_seed.json").read_text()) == {"seed": 1}
    assert reproduce.claim_seed(runs, 1) is None  # the same seed resumes
    assert reproduce.claim_seed(runs, 0) == (
        f"{runs} holds the pipeline of seed 1: move it away (or use a fresh clone) to run seed 0"
    )
    old = tmp_path / "old"  # a run from before the marker is seed 0's
    old.mkdir()
    (old / "mdlm.pt").write_bytes(b"")
    assert reproduce.claim_seed(old, 0) is None
    assert "holds the pipeline of seed 0" in reproduce.claim_seed(old, 3)
    (runs / "pipeline_seed.json").write_text("{")
    assert "is damaged" in reproduce.claim_seed(runs, 1)


def test_compare_verdicts_table_and_exit_status(tmp_path, capsys):
    compare = _load("compare_verdicts")
    a, b = tmp_path / "a", tmp_path / "b"
    for d, pools in ((a, "supported"), (b, "inconclusive")):
        d.mkdir()
        record = {"exp1": {"overall": "x", "parts": {"noise curve": "supported", "pools": pools}}}
        (d / "verdicts.json").write_text(json.dumps(record))
    assert compare.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "| exp1 | pools | supported | inconclusive | **no** |" in out
    assert "| exp1 | noise curve | supported | supported | yes |" in out
    assert "1 of 2 verdicts agree." in out
    assert compare.main([str(a), str(a)]) == 0
    with pytest.raises(SystemExit, match="run scripts/report.py first"):
        compare.main([str(a), str(tmp_path / "missing")])


def test_headline_states_the_mdlm_regime_and_the_gap_to_the_bound(tmp_path):
    # Ndisc 2 (16 tokens per pass at the default's L = 32): MDLM 8.0, bound 7.0: LaDiff at 7.5
    # closes half the gap, DiLaDiff at 7.0 all of it. Ndisc 8: the bound (6.02) is no better.
    results = tmp_path / "results"
    nll = {"mdlm": (8.0, 6.0), "ladiff": (7.5, 5.9), "diladiff": (7.0, 5.95), "bound": (7.0, 6.02)}
    rows = [
        _row(model, n, mauve=0.5, genppl=100.0, seconds=0.01 * (i + 1), se=0.01,
             ncont={"ladiff": 200, "diladiff": 5}.get(model, 0), oracle_nll=nll[model][i],
             oracle_nll_se=0.01, oracle_purity=0.4, oracle_purity_se=0.01)
        for model in nll for i, n in enumerate((2, 8))
    ]  # fmt: skip
    rows.append(_row("ar", 32, mauve=0.9, genppl=10.0, seconds=0.005, se=0.01, oracle_nll=2.2,
                     oracle_nll_se=0.03, oracle_purity=0.97, oracle_purity_se=0.002))  # fmt: skip
    _write_sweep(results / "exp5_diladiff_frontier", rows)
    assert report.main(["--scale", "oracle", "--results", str(results)]) == 0
    head = (results / "REPORT.md").read_text().split("## Stage wall times")[0]
    assert (
        "- Has the MDLM learnt to infer the document's topic? The topic purity of its samples "
        "at Ndisc = 8: 0.4 ± 0.01, against 0.97 ± 0.002 for the AR baseline"
    ) in head
    assert (
        "closed (the bound: the same decoder given the true topic; ± 1 SE): at 16 tokens/pass "
        "LaDiff 50% ± 2%, DiLaDiff 100% ± 2%; at 4 tokens/pass no gap to close (bound "
        "6.02 ± 0.01 vs MDLM 6 ± 0.01: not better beyond 2 SE)."
    ) in head


def test_report_sets_its_verdicts_beside_the_other_pipeline_seeds(tmp_path):
    results = tmp_path / "results"
    _synthetic_results(results)
    assert report.main(["--scale", "tiny", "--results", str(results)]) == 0
    assert "## Across trainings" not in (results / "REPORT.md").read_text()  # no other seed
    mine = json.loads((results / "verdicts.json").read_text())
    other = json.loads(json.dumps(mine))
    part = next(iter(other["exp5"]["parts"]))
    flipped = "inconclusive" if mine["exp5"]["parts"][part] != "inconclusive" else "supported"
    other["exp5"]["parts"][part] = flipped
    (results / "pipeline_seed1").mkdir()
    (results / "pipeline_seed1" / "verdicts.json").write_text(json.dumps(other))
    assert report.main(["--scale", "tiny", "--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()
    section = text.split("## Across trainings")[1].split("\n## ")[0]
    n = sum(len(v["parts"]) for v in mine.values())
    assert f"{n - 1} of {n} parts agree." in section
    header = "| experiment | part | this run | [pipeline_seed1](pipeline_seed1/REPORT.md) | agree |"
    assert header in section
    assert f"| exp5 | {part} | {mine['exp5']['parts'][part]} | {flipped} | **no** |" in section


def test_report_pools_the_headline_speed_up_over_the_pipeline_seeds(tmp_path):
    # Each run: DiLaDiff at MDLM's oracle NLL for 1/f of its seconds (f = 2 and 2.2), LaDiff
    # at twice MDLM's seconds (0.5x): pooled 2.10x, 2 SE of the mean log factor each way.
    def run(directory: Path, factor: float) -> None:
        rows = [
            _row(model, n, mauve=0.5, genppl=100.0, seconds=0.01 * (i + 1) * scale, se=0.01,
                 ncont={"ladiff": 200, "diladiff": 5}.get(model, 0), oracle_nll=(8.0, 6.0)[i],
                 oracle_nll_se=0.01, oracle_purity=0.4, oracle_purity_se=0.01)
            for model, scale in (("mdlm", 1.0), ("ladiff", 2.0), ("diladiff", 1 / factor))
            for i, n in enumerate((4, 16))
        ]  # fmt: skip
        _write_sweep(directory / "exp5_diladiff_frontier", rows)
        assert report.main(["--scale", "oracle", "--results", str(directory)]) == 0

    results = tmp_path / "results"
    run(results / "pipeline_seed1", 2.2)
    run(results, 2.0)
    section = (results / "REPORT.md").read_text().split("## Across trainings")[1].split("\n## ")[0]
    logs = (math.log(2.0), math.log(2.2))
    mean, se = sum(logs) / 2, abs(logs[1] - logs[0]) / 2  # stdev of two / sqrt(2)
    low, high = math.exp(mean - 2 * se), math.exp(mean + 2 * se)
    assert (
        f"- DiLaDiff: {math.exp(mean):.2f}x over 2 trainings (2.00x, 2.20x), "
        f"interval {low:.2f}x-{high:.2f}x: *supported*."
    ) in section
    assert "- LaDiff: 0.50x over 2 trainings (0.50x, 0.50x), interval 0.50x-0.50x: " in section
    assert "*not supported*." in section.split("- LaDiff:")[1]
    # seed 1 timed on another CPU: named and left out of the pool, its verdicts still listed
    for directory, cpu in ((results, "CPU A (AVX-512)"), (results / "pipeline_seed1", "CPU B")):
        timings = {"stages": {}, "conditions": {"cpu": cpu}}
        (directory / "timings.json").write_text(json.dumps(timings))
    assert report.main(["--scale", "oracle", "--results", str(results)]) == 0
    section = (results / "REPORT.md").read_text().split("## Across trainings")[1].split("\n## ")[0]
    assert "this run's machine (CPU A (AVX-512), cpu (1 threads)) are pooled" in section
    assert "- Left out: pipeline_seed1, timed on CPU B, cpu (1 threads) (its verdicts" in section
    assert "| [pipeline_seed1](pipeline_seed1/REPORT.md) |" in section
    assert "- DiLaDiff: 2.00x over 1 training" in section and "no interval" in section


def test_preload_leaves_the_stages_forkable():
    """In a fresh interpreter, the preload imports start no Python thread, so that
    `make reproduce` forks its stages instead of quietly falling back to fresh ones."""
    code = "import reproduce; print(reproduce.preload())"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "scripts", env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == "True"
