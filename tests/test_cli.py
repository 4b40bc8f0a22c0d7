"""One CLI test per subcommand on a seconds-scale recipe, and bad input: one line, non-zero
exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _clikit import cli

RECIPE = Path(__file__).parent / "recipes" / "micro.yaml"


def ok_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def one_line_error(proc: subprocess.CompletedProcess, needle: str, code: int | None = None) -> None:
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr  # progress may precede it
    assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """prepare -> train-mdlm on the micro recipe, once for the module."""
    work = tmp_path_factory.mktemp("cli")
    info = ok_json(cli("prepare", str(RECIPE), cwd=work))
    assert info["vocab_size"] == 300 and info["num_train_blocks"] > 8
    result = ok_json(cli("train-mdlm", str(RECIPE), cwd=work))
    assert result["step"] == 4 and (work / "runs/micro/mdlm.pt").exists()
    return work


def test_help_lists_subcommands(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("prepare", "train-mdlm", "sample"):
        assert name in proc.stdout
    assert "torchrun" in cli("train-mdlm", "--help", cwd=tmp_path).stdout


def test_prepare_reuses_cache(pipeline):
    assert ok_json(cli("prepare", str(RECIPE), cwd=pipeline))["reused"] is True


def test_train_mdlm_skips_when_complete_and_resumes_longer(pipeline):
    assert ok_json(cli("train-mdlm", str(RECIPE), cwd=pipeline))["skipped"] is True
    longer = ok_json(cli("train-mdlm", str(RECIPE), "--steps", "6", cwd=pipeline))
    assert longer["resumed_from"] == 4 and longer["step"] == 6
    log = (pipeline / "runs/micro/mdlm.metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log if '"train"' in x] == [2, 4, 6]


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_sample_writes_jsonl_and_timing(pipeline, selection):
    out = pipeline / f"s_{selection}.jsonl"
    rec = ok_json(
        cli("sample", str(RECIPE), "--selection", selection, "--out", str(out), cwd=pipeline)
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["tokens"]) == 32 for r in rows)
    meta = json.loads((pipeline / f"s_{selection}.meta.json").read_text())
    assert meta["settings"]["selection"] == selection and meta["settings"]["ndisc"] == 8
    assert 0 < meta["timing"]["forward_passes_discrete"] <= 8 + 1
    assert rec["timing"]["tokens_per_forward"] == pytest.approx(
        32 / meta["timing"]["forward_passes_discrete"]
    )


def test_dry_run_prints_config_and_writes_nothing(tmp_path):
    proc = cli("train-mdlm", str(RECIPE), "--dry-run", "--set", "mdlm.model.depth=3", cwd=tmp_path)
    assert proc.returncode == 0 and "depth: 3" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t + "bogus: 1\n", "unknown key 'bogus'"),
        (lambda t: t.replace("depth: 2", "depth: two"), "mdlm.model.depth: expected int"),
        (lambda t: t.replace("name: micro", "name: [micro"), "malformed YAML"),
        (lambda t: t.replace("steps: 4", "stepz: 4"), "unknown key 'mdlm.train.stepz'"),
    ],
)
def test_malformed_recipe_is_one_line_exit_2(tmp_path, mutate, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(mutate(RECIPE.read_text()))
    one_line_error(cli("prepare", str(bad), cwd=tmp_path), needle, code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_and_empty_corpus(tmp_path):
    one_line_error(
        cli("prepare", str(RECIPE), "--set", "data.corpus.source=nope.txt", cwd=tmp_path),
        "nope.txt",
    )
    (tmp_path / "empty.txt").write_text("\n\n")
    one_line_error(
        cli("prepare", str(RECIPE), "--set", "data.corpus.source=empty.txt", cwd=tmp_path),
        "empty.txt",
    )
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_stage_and_missing(pipeline, tmp_path):
    from diladiff_cli.checkpoint import CheckpointMeta, load_checkpoint, save_weights

    ckpt = load_checkpoint(pipeline / "runs/micro/mdlm.pt", stage="mdlm")
    other = tmp_path / "prior.pt"
    save_weights(other, ckpt.tensors, CheckpointMeta(stage="prior", step=1, config={}))
    one_line_error(
        cli("sample", str(RECIPE), "--checkpoint", str(other), cwd=pipeline),
        "is a 'prior' checkpoint",
    )
    one_line_error(
        cli("sample", str(RECIPE), "--checkpoint", str(tmp_path / "x.pt"), cwd=pipeline),
        "not found",
    )
    one_line_error(cli("sample", str(RECIPE), "--ndisc", "0", cwd=pipeline), "--ndisc")


def test_wrong_vocab_and_unloadable_init(pipeline, tmp_path):
    one_line_error(
        cli(
            "train-mdlm",
            str(RECIPE),
            "--set",
            "mdlm.model.vocab_size=301",
            "--out",
            str(tmp_path / "a.pt"),
            cwd=pipeline,
        ),
        "vocab_size 301",
    )
    one_line_error(
        cli(
            "train-mdlm",
            str(RECIPE),
            "--init-from",
            "no-such-org/no-such-mdlm",
            "--out",
            str(tmp_path / "b.pt"),
            cwd=pipeline,
        ),
        "no-such-org/no-such-mdlm",
    )
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_other_config_refuses_to_resume(pipeline, tmp_path):
    out = tmp_path / "m.pt"
    ok_json(cli("train-mdlm", str(RECIPE), "--out", str(out), "--steps", "2", cwd=pipeline))
    shutil.copy(out, tmp_path / "backup.pt")
    one_line_error(
        cli(
            "train-mdlm",
            str(RECIPE),
            "--out",
            str(out),
            "--steps",
            "3",
            "--set",
            "mdlm.train.lr=0.1",
            cwd=pipeline,
        ),
        "another config",
    )
    assert out.read_bytes() == (tmp_path / "backup.pt").read_bytes()


def test_command_options_reach_the_config_as_typed_values(tmp_path):
    """A path option is never read as YAML: '#' would start a comment, '[...]' a list, and
    '123' an int that the str field refuses."""
    for out in ("runs/hash/run #2.pt", "runs/[a, b].pt", "123", "x: y.pt"):
        proc = cli("train-mdlm", str(RECIPE), "--dry-run", "--out", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"out: {out}" in proc.stdout or f"out: '{out}'" in proc.stdout, proc.stdout
    proc = cli("sample", str(RECIPE), "--dry-run", "--seed", "7", cwd=tmp_path)
    assert proc.returncode == 0 and "seed: 7" in proc.stdout, proc.stderr
    assert not (tmp_path / "runs").exists()
