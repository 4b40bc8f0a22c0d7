"""Environment faults in training: a full disk, a killed run, two writers, bad outputs.

Each fault ends as one line (a DiladiffError the CLI prints) with the previous
checkpoint whole, and none blocks the next run of the same output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from diladiff_cli.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    load_train_state,
    read_meta,
    state_dir,
)
from diladiff_cli.config import TrainConfig
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.files import read_jsonl
from diladiff_cli.locks import lock_path, output_lock
from diladiff_cli.objective import LossOutput
from diladiff_cli.train import metrics_path, train

DRIVER = Path(__file__).with_name("_train_driver.py")


class Ones:
    """Eight examples; the objective below ignores them."""

    def __len__(self) -> int:
        return 8

    def batch(self, indices):
        return self

    def to(self, device):
        return self


class Stop(Exception):
    """Raised from ``on_checkpoint`` to end a run after a given checkpoint."""


def tiny_train(out: Path, *, stop_at: int = 0, on_checkpoint=None, steps_run=None):
    """A linear model trained in-process for 6 steps, a checkpoint every 2; the steps
    it runs are appended to ``steps_run``."""
    torch.manual_seed(0)
    calls = [] if steps_run is None else steps_run

    def objective(net, batch, ctx):
        calls.append(ctx.step)
        return LossOutput(loss=net(torch.ones(2, 2)).pow(2).mean())

    def hook(step: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(step)
        if step == stop_at:
            raise Stop

    result = train(
        model=torch.nn.Linear(2, 1),
        objective=objective,
        train_data=Ones(),
        valid_data=None,
        cfg=TrainConfig(steps=6, batch_size=2, ckpt_every=2, log_every=1, lr=0.1),
        out=out,
        meta=CheckpointMeta(stage="toy", step=0, config={}),
        runtime=init_runtime("cpu"),
        on_checkpoint=hook,
    )
    return result


def logged_steps(out: Path) -> list[int]:
    """The steps of the training records in the metrics log, in order."""
    records = [json.loads(line) for line in metrics_path(out).read_text().splitlines()]
    return [r["step"] for r in records if r["split"] == "train"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- class 3


def test_torn_last_metrics_line_is_dropped_and_the_run_resumes(tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(Stop):
        tiny_train(out, stop_at=4)
    with metrics_path(out).open("a") as fh:
        fh.write('{"step": 5, "split": "tr')  # the disk filled up mid-line
    result = tiny_train(out)
    assert result.resumed_from == 4
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]


def test_corrupt_metrics_line_before_the_last_is_one_line(tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(Stop):
        tiny_train(out, stop_at=4)
    lines = metrics_path(out).read_text().splitlines()
    lines[1] = "garbage"
    metrics_path(out).write_text("\n".join(lines) + "\n")
    before = metrics_path(out).read_bytes()
    with pytest.raises(DiladiffError) as err:
        tiny_train(out)
    assert "m.metrics.jsonl line 2" in one_line(err)
    assert metrics_path(out).read_bytes() == before  # left for the user to look at
    assert not lock_path(out).exists()


def test_readers_of_a_metrics_log_skip_a_torn_last_line(tmp_path):
    log = tmp_path / "m.metrics.jsonl"
    log.write_text(
        '{"step": 1, "split": "train"}\n\n{"step": 2, "split": "train"}\n{"step": 3, "sp'
    )
    assert [r["step"] for r in read_jsonl(log)] == [1, 2]
    log.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(DiladiffError) as err:
        read_jsonl(log)
    assert one_line(err) == f"{log} line 2 is not a JSON record: the file is corrupt"


@pytest.mark.parametrize("torn", [True, False], ids=["torn-last-line", "corrupt-middle-line"])
def test_ae_report_reads_a_damaged_metrics_log_in_one_line(tmp_path, torn):
    """scripts/ae_report.py reads the log first: a torn last line is skipped (the report
    goes on, to the missing checkpoint here), a corrupt line before it stops it."""
    out = tmp_path / "ae.pt"
    lines = ['{"step": 1, "split": "train"}', "garbage", '{"step": 3, "split": "train"}']
    metrics_path(out).write_text(
        '{"step": 1, "split": "train"}\n{"step": 2, "spl' if torn else "\n".join(lines) + "\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = Path(__file__).resolve().parents[1] / "scripts" / "ae_report.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    needle = f"checkpoint not found: {out}" if torn else "ae.metrics.jsonl line 2"
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_ae_report_refuses_a_cpu_step_timing_beside_another_device_in_one_line(tmp_path):
    """The step timing runs on the CPU: with --device cuda it must be turned off, and the
    script says so before it loads anything (here no checkpoint exists at all)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "ae_report.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cuda", "--checkpoint", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: --bench-steps times training steps on the CPU")


def _kill_in_replace(out: Path, *, target: str, steps: int) -> subprocess.CompletedProcess:
    """Run the driver and SIGKILL it inside the second rename onto ``target`` (the
    weights file, or the state directory after the old state was moved aside)."""
    code = f"""
import os, runpy, signal, sys
real, seen = os.replace, []
def replace(src, dst):
    if os.fspath(dst) == {str(target)!r}:
        seen.append(dst)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
sys.argv = [{str(DRIVER)!r}, {str(out)!r}, "{steps}"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def _driver(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("full") / "full.pt"
    _driver(str(out), "6")
    return safetensors.torch.load_file(str(out))


@pytest.mark.parametrize("target", ["weights", "state"])
def test_sigkill_mid_write_then_the_rerun_removes_the_orphans(tmp_path, target, uninterrupted):
    out = tmp_path / "k.pt"
    # another output's temporaries, which the rerun must leave alone
    foreign = [tmp_path / ".other.pt.abc123.tmp", tmp_path / ".k.pt.x.abc123.tmp"]
    for path in foreign:
        path.write_bytes(b"not ours")
    proc = _kill_in_replace(
        out, target=str(out if target == "weights" else state_dir(out)), steps=6
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    left = set(listing(tmp_path))
    assert lock_path(out).name in left  # the killed run still had its lock
    if target == "weights":
        assert any(
            n.startswith(".k.pt.") and n.endswith(".tmp") for n in left - {p.name for p in foreign}
        )
    else:
        assert "k.pt.state.old" in left and "k.pt.state" not in left
        assert any(n.startswith(".k.pt.state.") for n in left)

    result = _driver(str(out), "6")  # not refused: the kernel dropped the dead run's lock
    assert result["resumed_from"] == 2
    assert listing(tmp_path) == sorted(
        [*(p.name for p in foreign), "k.pt", "k.pt.state", "k.metrics.jsonl"]
    )
    resumed = safetensors.torch.load_file(str(out))
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, resumed[name]), name
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]  # each step once


# ----------------------------------------------------------------------------- class 4


@pytest.mark.parametrize("second", ["m.pt", "m.bin"], ids=["same-output", "same-metrics-log"])
def test_second_writer_is_refused_at_once(tmp_path, second):
    out = tmp_path / "m.pt"
    at_checkpoint, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def first() -> None:
        def pause(step: int) -> None:
            if step == 2:
                at_checkpoint.set()
                release.wait(60)

        outcome["result"] = tiny_train(out, on_checkpoint=pause)

    writer = threading.Thread(target=first)
    writer.start()
    try:
        assert at_checkpoint.wait(60)
        log_before = metrics_path(out).read_bytes()
        t0 = time.perf_counter()
        with pytest.raises(DiladiffError) as err:
            tiny_train(tmp_path / second)
        assert time.perf_counter() - t0 < 5
        assert one_line(err).startswith("another run is writing")
        assert metrics_path(out).read_bytes() == log_before
    finally:
        release.set()
        writer.join(60)
    assert outcome["result"].step == 6
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]
    assert listing(tmp_path) == ["m.metrics.jsonl", "m.pt", "m.pt.state"]  # locks removed


def test_lock_of_another_process_refuses_all_ranks_of_a_ddp_run(tmp_path):
    out = tmp_path / "m.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *(str(DRIVER), str(out), "4"),
    ]
    with output_lock(out):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "another run is writing" in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- class 5


@pytest.mark.parametrize("fail_at", [4, 5], ids=["weights", "state"])
def test_disk_full_stops_with_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, fail_at
):
    """fsync calls per checkpoint: weights, state tensors, state scalars; the 4th and 5th
    belong to the second checkpoint (step 4)."""
    out = tmp_path / "m.pt"
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointError) as err:
        tiny_train(out)
    message = one_line(err)
    assert message.startswith(f"cannot write {out}")
    assert "No space left on device" in message and "resume from step 2" in message
    assert listing(tmp_path) == ["m.metrics.jsonl", "m.pt", "m.pt.state"]  # no temporaries
    assert read_meta(out).step == (2 if fail_at == 4 else 4)
    assert load_train_state(out).step == 2
    load_checkpoint(out, stage="toy")  # whole

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    result = tiny_train(out)
    assert result.resumed_from == 2 and read_meta(out).step == 6


def test_a_real_full_disk_on_a_tiny_tmpfs(tmp_path):
    """The same on a 20 KiB tmpfs mounted in a private mount namespace (root only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_faults import listing, tiny_train
from diladiff_cli.checkpoint import load_train_state, read_meta
out = Path({str(tmp_path)!r}) / "m.pt"
try:
    tiny_train(out)
    print(json.dumps(None))
except Exception as err:
    print(json.dumps({{"error": str(err), "listing": listing(out.parent),
                      "weights": read_meta(out).step, "state": load_train_state(out).step}}))
"""
    script = 'mount -t tmpfs -o size=20k tmpfs "$2" || exit 77; exec "$0" -c "$1"'
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if proc.returncode == 77 or "unshare:" in proc.stderr:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if found is None:
        pytest.skip("the tmpfs did not fill up")
    assert "\n" not in found["error"] and "No space left on device" in found["error"]
    assert found["listing"] == ["m.metrics.jsonl", "m.pt", "m.pt.state"]  # no temporaries
    assert found["state"] in (2, 4) and found["weights"] in (found["state"], found["state"] + 2)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_is_refused_before_training(tmp_path, monkeypatch, code):
    out = tmp_path / "m.pt"
    real_open, steps_run = os.open, []

    def refusing_open(path, *args, **kwargs):
        if Path(path).parent == tmp_path:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(DiladiffError) as err:
        tiny_train(out, steps_run=steps_run)
    assert one_line(err) == f"cannot write {out}: {os.strerror(code)}"
    assert steps_run == []


def test_output_that_is_a_directory_is_refused_before_training(tmp_path):
    out, steps_run = tmp_path / "runs", []
    out.mkdir()
    with pytest.raises(DiladiffError) as err:
        tiny_train(out, steps_run=steps_run)
    assert "is a directory" in one_line(err)
    assert steps_run == [] and listing(tmp_path) == ["runs"] and listing(out) == []


def test_output_below_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "notes").write_text("a file")
    steps_run: list[int] = []
    with pytest.raises(DiladiffError) as err:
        tiny_train(tmp_path / "notes" / "run" / "m.pt", steps_run=steps_run)
    assert f"{tmp_path / 'notes'} is a file" in one_line(err)
    assert steps_run == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("{not json", "not valid JSON"), ('{"stage": "mdlm"}', "malformed"), ("[1]", "malformed")],
)
def test_corrupt_checkpoint_metadata_is_one_line(tmp_path, raw, reason):
    path = tmp_path / "m.pt"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata={"diladiff": raw})
    with pytest.raises(CheckpointError) as err:
        read_meta(path)
    message = one_line(err)
    assert str(path) in message and reason in message


def test_corrupt_resume_state_is_one_line(tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(Stop):
        tiny_train(out, stop_at=2)
    (state_dir(out) / "state.json").write_text('{"step": 2')
    with pytest.raises(CheckpointError) as err:
        tiny_train(out)
    assert str(state_dir(out)) in one_line(err)
    assert not lock_path(out).exists()


# ----------------------------------------------------------------------------- the CLI


def test_cli_prints_one_line_for_bad_outputs_and_corrupt_metadata(tmp_path):
    from _clikit import cli

    recipe = Path(__file__).parent / "recipes" / "micro.yaml"
    prepared = cli("prepare", str(recipe), cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    (tmp_path / "notes").write_text("a file")
    corrupt = tmp_path / "corrupt.pt"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(corrupt), metadata={"diladiff": "{"})
    cases = [
        (("train-mdlm", "--out", "runs"), "is a directory"),
        (("train-mdlm", "--out", "notes/m.pt"), "notes is a file"),
        (("sample", "--checkpoint", str(corrupt)), "not valid JSON"),
    ]
    (tmp_path / "runs").mkdir(exist_ok=True)
    for args, needle in cases:
        proc = cli(args[0], str(recipe), *args[1:], cwd=tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr
    assert not (tmp_path / "runs.metrics.jsonl").exists()  # refused before any step


# ----------------------------------------------------------------------------- prepare


def _oracle_data(tmp_path):
    from diladiff_cli.config import load_recipe

    root = Path(__file__).resolve().parent.parent
    return load_recipe(
        root / "recipes" / "oracle" / "default.yaml",
        [f"data.out={tmp_path / 'data'}", "data.corpus.oracle.num_documents=40"],
    ).data


def test_prepare_removes_what_a_killed_prepare_left_and_refuses_a_second_writer(tmp_path):
    from diladiff_cli.data import prepare

    cfg = _oracle_data(tmp_path)
    out = Path(cfg.out)
    orphan = out / ".staging-killed"
    (orphan / "tokenizer").mkdir(parents=True)
    (orphan / "train.npy").write_bytes(b"half")
    info = prepare(cfg)
    assert not orphan.exists() and not list(out.glob(".staging-*"))
    assert info.num_train_blocks + info.num_valid_blocks == 40
    assert not (tmp_path / "data.lock").exists()  # released
    (out / "meta.json").unlink()  # force a rebuild, while another run holds the directory
    with output_lock(out), pytest.raises(DiladiffError, match="another run is writing"):
        prepare(cfg)


# ----------------------------------------------------------------------------- other outputs


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["encode", "--split", "train", "--out", "lat"], "lat/train"),
        (["encode", "--text", "a text", "--save", "z.safetensors"], "z.safetensors"),
        (["sample", "--out", "s.jsonl"], "s.jsonl"),
        (["pareto", "--out", "sweep"], "sweep"),
    ],
    ids=["encode", "encode-save", "sample", "pareto"],
)
def test_second_writer_of_latents_samples_or_a_sweep_is_refused_at_once(
    tmp_path, monkeypatch, args, output
):
    """The lock is taken before any model or data loads (none exist here): a second run
    on the same output is refused at once, in one line, and writes nothing."""
    from typer.testing import CliRunner

    from diladiff_cli.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with output_lock(tmp_path / output):
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, [*args, "--device", "cpu"])
        assert time.perf_counter() - t0 < 5
        after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: another run is writing"), lines
    assert after == sorted([*before, str(lock_path(output))])  # only the holder's lock
    assert not lock_path(tmp_path / output).exists()  # released, and nothing left


def test_the_lock_of_a_killed_writer_does_not_refuse_the_next_one(tmp_path):
    """flock dies with its process: a lock file left by a SIGKILLed run is taken over."""
    out = tmp_path / "s.jsonl"
    code = (
        "import os, signal, sys\n"
        "from diladiff_cli.locks import output_lock\n"
        f"with output_lock({str(out)!r}):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9 and lock_path(out).exists()
    with output_lock(out):
        pass
    assert not lock_path(out).exists()
