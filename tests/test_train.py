"""The one training loop: exact resume after SIGKILL, DDP equivalence, NaN guard, LR schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from diladiff_cli.config import TrainConfig
from diladiff_cli.train import metrics_path

DRIVER = Path(__file__).with_name("_train_driver.py")


def run_driver(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            str(DRIVER),
            *args,
        ]
    else:
        cmd = [sys.executable, str(DRIVER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    full = tmp_path / "full.pt"
    killed = tmp_path / "killed.pt"
    last_json(run_driver(str(full), "8"))
    proc = run_driver(str(killed), "8", "--kill-at", "4")
    assert proc.returncode == -9, "the driver should have been SIGKILLed"
    assert (tmp_path / "killed.pt.state" / "state.json").exists()
    out = last_json(run_driver(str(killed), "8"))
    assert out["resumed_from"] == 4
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-identical, dropout and EMA included
    # the metrics log has each step exactly once after the resume
    steps = [
        json.loads(x)["step"]
        for x in metrics_path(killed).read_text().splitlines()
        if json.loads(x)["split"] == "train"
    ]
    assert steps == list(range(1, 9))


def test_two_process_gloo_matches_one_process(tmp_path):
    one = last_json(run_driver(str(tmp_path / "one.pt"), "3", "--dropout", "0"))
    two = last_json(run_driver(str(tmp_path / "two.pt"), "3", "--dropout", "0", torchrun=2))
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    a, b = weights(tmp_path / "one.pt"), weights(tmp_path / "two.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_accumulation_matches_full_batch(tmp_path):
    full = last_json(run_driver(str(tmp_path / "a.pt"), "2", "--dropout", "0"))
    accum = last_json(run_driver(str(tmp_path / "b.pt"), "2", "--dropout", "0", "--micro", "2"))
    assert full["loss"] == pytest.approx(accum["loss"], rel=1e-5)


class ToyData:
    """Eight examples whose batches the toy objectives ignore."""

    def __len__(self):
        return 8

    def batch(self, indices):
        return self

    def to(self, device):
        return self


def train_linear(out, cfg, objective, reporter=None, model=None):
    """The loop on a 2 -> 1 linear model (or ``model``) and ``ToyData``: the toy
    objectives ignore the batch. Returns the written weights."""
    from diladiff_cli.checkpoint import CheckpointMeta
    from diladiff_cli.distributed import init_runtime
    from diladiff_cli.train import train

    torch.manual_seed(0)
    train(
        model=model if model is not None else torch.nn.Linear(2, 1),
        objective=objective,
        train_data=ToyData(),
        valid_data=None,
        cfg=cfg,
        out=out,
        meta=CheckpointMeta(stage="toy", step=0, config={}),
        runtime=init_runtime("cpu"),
        reporter=reporter,
    )
    return weights(out)


def test_completed_run_is_skipped(tmp_path):
    out = tmp_path / "m.pt"
    last_json(run_driver(str(out), "2"))
    mtime = out.stat().st_mtime_ns
    assert last_json(run_driver(str(out), "2"))["skipped"]
    assert out.stat().st_mtime_ns == mtime


def test_a_finished_run_of_another_model_layout_is_refused_not_skipped(tmp_path):
    """Same config, finished, but written by another layout (code that changed a module):
    skipping would leave weights nothing loads, so the run says what to remove."""
    from diladiff_cli.errors import CheckpointError
    from diladiff_cli.objective import LossOutput

    def objective(net, batch, ctx):
        return LossOutput(loss=net(torch.ones(2, 2)).pow(2).mean())

    out, cfg = tmp_path / "m.pt", TrainConfig(steps=2, batch_size=2, log_every=1)
    first = train_linear(out, cfg, objective)
    mtime = out.stat().st_mtime_ns
    train_linear(out, cfg, objective)  # the same layout: skipped
    with pytest.raises(CheckpointError, match="another model layout.*remove it"):
        train_linear(out, cfg, objective, model=torch.nn.Sequential(torch.nn.Linear(2, 1)))
    assert out.stat().st_mtime_ns == mtime and set(weights(out)) == set(first)


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(99) == pytest.approx(0.1, abs=1e-3)
    assert TrainConfig(lr=2.0).lr_at(500) == 2.0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    import numpy as np

    from diladiff_cli.checkpoint import read_meta
    from diladiff_cli.errors import TrainingDiverged
    from diladiff_cli.objective import LossOutput

    calls = {"n": 0}

    def objective(net, batch, ctx):
        calls["n"] += 1
        loss = net(torch.ones(2, 2)).pow(2).mean()
        if calls["n"] > 4:
            loss = loss * float("nan")
        return LossOutput(loss=loss)

    out = tmp_path / "x.pt"
    with pytest.raises(TrainingDiverged, match="step"):
        train_linear(out, TrainConfig(steps=10, batch_size=2, ckpt_every=2, log_every=1), objective)
    assert read_meta(out).step == 4
    assert np.isfinite(weights(out)["weight"].numpy()).all()


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_algorithms_hold_during_the_run_and_are_restored(tmp_path, deterministic):
    """`train.deterministic` turns torch's deterministic algorithms on for the run only:
    the objective sees the setting, and the process's own setting is back afterwards."""
    from diladiff_cli.objective import LossOutput

    seen = []

    def objective(net, batch, ctx):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return LossOutput(loss=net(torch.ones(2, 2)).pow(2).mean())

    assert not torch.are_deterministic_algorithms_enabled()
    cfg = TrainConfig(steps=2, batch_size=2, log_every=1, deterministic=deterministic)
    train_linear(tmp_path / "x.pt", cfg, objective)
    assert seen == [deterministic, deterministic]
    assert not torch.are_deterministic_algorithms_enabled()


def test_compile_without_a_working_compiler_falls_back_to_eager(tmp_path):
    """`train.compile` on a machine where Inductor finds no C++ compiler: the run says so
    once and trains eagerly, to the very weights of `compile: false`, instead of failing
    at the first backward (where a lazily compiled graph would first need the compiler)."""
    import torch._inductor.config as inductor_config

    from diladiff_cli.objective import LossOutput
    from diladiff_cli.train import NullReporter

    class Log(NullReporter):
        def __init__(self):
            self.lines = []

        def log(self, message):
            self.lines.append(message)

    def objective(net, batch, ctx):
        return LossOutput(loss=net(torch.ones(2, 2)).pow(2).mean())

    log = Log()
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-c++"))}):
        cfg = TrainConfig(steps=2, batch_size=2, log_every=1, compile=True)
        compiled = train_linear(tmp_path / "c.pt", cfg, objective, reporter=log)
    assert [
        line
        for line in log.lines
        if "torch.compile unavailable" in line and "running eager" in line
    ]
    eager = train_linear(
        tmp_path / "e.pt", TrainConfig(steps=2, batch_size=2, log_every=1), objective
    )
    assert all(torch.equal(compiled[k], eager[k]) for k in eager)
