"""Experiment logging: TensorBoard and W&B beside the JSONL log, read back and compared."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from _train_driver import LEN, VOCAB, RandomTokens

from diladiff_cli.checkpoint import CheckpointMeta
from diladiff_cli.config import (
    DiTConfig,
    LoggingConfig,
    TensorBoardConfig,
    TrainConfig,
    WandbConfig,
    load_recipe,
)
from diladiff_cli.diffusion.masked import LogLinearSchedule, MaskedDiffusionLoss
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError, RecipeError
from diladiff_cli.models.dit import DiT
from diladiff_cli.structs import to_dict
from diladiff_cli.tracking import metrics_path, open_metric_log, wandb_id_path
from diladiff_cli.train import config_fingerprint, seed_everything, train

DRIVER = Path(__file__).with_name("_train_driver.py")
TENSORBOARD = LoggingConfig(tensorboard=TensorBoardConfig(enabled=True))


class Stop(Exception):
    """Stands in for a kill right after a checkpoint."""


def tiny_run(out: Path, *, logging: LoggingConfig = LoggingConfig(), on_checkpoint=None):
    """8 steps of a tiny MDLM, every step logged, validated at steps 4 and 8."""
    model_cfg = DiTConfig(
        vocab_size=VOCAB, hidden=32, depth=2, heads=2, cond_dim=16, max_len=LEN, dropout=0.1
    )
    cfg = TrainConfig(
        steps=8,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        log_every=1,
        eval_every=4,
        eval_batches=1,
        ckpt_every=2,
        seed=3,
        logging=logging,
    )
    seed_everything(cfg.seed)
    return train(
        model=DiT.from_config(model_cfg),
        objective=MaskedDiffusionLoss(schedule=LogLinearSchedule(), mask_id=VOCAB - 1),
        train_data=RandomTokens(64, 0),
        valid_data=RandomTokens(16, 1),
        cfg=cfg,
        out=out,
        meta=CheckpointMeta(
            stage="mdlm", step=0, config={"model": to_dict(model_cfg), "train": to_dict(cfg)}
        ),
        runtime=init_runtime("cpu"),
        on_checkpoint=on_checkpoint,
    )


def jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_path(out).read_text().splitlines()]


def by_tag(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """JSONL records as ``{"train/loss": [(step, value), ...]}``, in log order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for name, value in r.items():
            if name not in ("step", "split"):
                series.setdefault(f"{r['split']}/{name}", []).append((r["step"], value))
    return series


def test_tensorboard_events_equal_the_jsonl_log_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = tmp_path / "plain.pt"
    tiny_run(plain)
    out = tmp_path / "m.pt"
    state, at_4 = Path(f"{out}.state"), tmp_path / "state-at-4"

    def keep_step_4(step: int) -> None:
        if step == 4:
            shutil.copytree(state, at_4)

    tiny_run(out, logging=TENSORBOARD, on_checkpoint=keep_step_4)
    # as if the run had been killed after step 8's log but before its checkpoint: resume
    # from step 4 over a log directory that already holds steps 5..8
    out.unlink()
    shutil.rmtree(state)
    shutil.copytree(at_4, state)
    assert tiny_run(out, logging=TENSORBOARD).resumed_from == 4

    # logging changes nothing in the run: same log, same weights as without it
    assert metrics_path(out).read_bytes() == metrics_path(plain).read_bytes()
    a, b = safetensors.torch.load_file(str(out)), safetensors.torch.load_file(str(plain))
    assert all(torch.equal(a[name], b[name]) for name in a)
    tb_dir = tmp_path / "m.tb"
    assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 2  # appended, not replaced
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    expected = by_tag(jsonl(out))
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    assert {"train/loss", "train/lr", "train/grad_norm", "valid/loss"} <= set(expected)
    for tag, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        # each step once (the purge hid the first run's 5..8); TensorBoard keeps float32
        assert logged == [(s, float(np.float32(v))) for s, v in points], tag
    assert [s for s, _ in expected["valid/loss"]] == [4, 8]


def read_wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """The history rows of an offline run's ``run-<id>.wandb`` (a LevelDB-style log of
    protobuf records: 32 KiB blocks, 7-byte headers ``crc, length, type``)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, payload, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        assert pos + 7 + length <= len(data), f"{path}: a record runs past the end of the file"
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(payload)
            payload = b""
    rows = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            rows[record.history.step.num] = {
                k: v for k, v in items.items() if not k.startswith("_")
            }
    return rows


def test_wandb_offline_run_holds_the_metrics_and_resumes_by_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    out = tmp_path / "m.pt"
    logging = LoggingConfig(
        wandb=WandbConfig(mode="offline", project="tiny", dir=str(tmp_path / "wb"))
    )

    def stop_at_4(step: int) -> None:
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        tiny_run(out, logging=logging, on_checkpoint=stop_at_4)
    run_id = json.loads(wandb_id_path(out).read_text())["id"]
    assert tiny_run(out, logging=logging).resumed_from == 4
    assert json.loads(wandb_id_path(out).read_text())["id"] == run_id  # the same run

    # W&B writes the run files from a service process: wait for it to close them. (Once in a
    # full suite under load a file was read with a corrupt record; not reproduced since.)
    import wandb

    wandb.teardown()
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    # two offline runs of one id (`wandb sync` uploads them into one run)
    assert [p.name for r in runs for p in r.glob("run-*.wandb")] == [f"run-{run_id}.wandb"] * 2
    history = {}
    for run in runs:
        history.update(read_wandb_history(run))
    expected: dict[int, dict[str, float]] = {}
    for r in jsonl(out):
        row = expected.setdefault(r["step"], {})
        row.update({f"{r['split']}/{k}": v for k, v in r.items() if k not in ("step", "split")})
    assert history == expected  # float64 values, exactly


def test_only_the_main_process_writes_tensorboard(tmp_path):
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(DRIVER), str(out), "2", "--tensorboard"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # two writers would leave two event files (one per process) in the directory
    assert len(list((tmp_path / "m.tb").glob("events.out.tfevents.*"))) == 1
    assert [r["step"] for r in jsonl(out) if r["split"] == "train"] == [1, 2]


def test_logging_off_imports_neither_tensorboard_nor_wandb(tmp_path):
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['driver', {str(tmp_path / 'm.pt')!r}, '2']\n"
        f"runpy.run_path({str(DRIVER)!r}, run_name='__main__')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorboard', 'tensorboardX', 'wandb') or m.startswith('torch.utils.tensorboard'))))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert metrics_path(tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("logging", "package"),
    [(TENSORBOARD, "tensorboard"), (LoggingConfig(wandb=WandbConfig(mode="offline")), "wandb")],
)
def test_missing_package_is_one_line_naming_it(tmp_path, monkeypatch, logging, package):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(DiladiffError, match=f"pip install {package}") as err:
        open_metric_log(cfg=logging, out=tmp_path / "m.pt", start=0, stage="mdlm", config={})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mdlm.train.logging.wandb.mode=offlin", "mdlm.train.logging.wandb.mode"),
        (
            "mdlm.train.logging.tensorboard.enabled=sometimes",
            "mdlm.train.logging.tensorboard.enabled",
        ),
        ("mdlm.train.logging.tensorbord.enabled=true", "mdlm.train.logging.tensorbord"),
        ("ae.train.logging.wandb.project=''", "ae.train.logging.wandb.project"),
        ("mdlm.train.logging.tensorboard.dir=3", "mdlm.train.logging.tensorboard.dir"),
    ],
)
def test_bad_logging_settings_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        load_recipe(None, overrides=[override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_recipe_logging_defaults_off_and_outside_the_fingerprint():
    recipe = load_recipe(None, overrides=["prior.train.logging.tensorboard.dir=runs/tb"])
    assert recipe.mdlm.train.logging == LoggingConfig()
    assert recipe.prior.train.logging.tensorboard == TensorBoardConfig(dir="runs/tb")
    cfg = TrainConfig()
    old = to_dict(cfg)
    del old["logging"]  # a checkpoint written before the key existed
    on = replace(cfg, logging=LoggingConfig(wandb=WandbConfig(mode="online")))
    fingerprints = {config_fingerprint({"train": c}) for c in (old, to_dict(cfg), to_dict(on))}
    assert len(fingerprints) == 1  # still resumable, with any logging
