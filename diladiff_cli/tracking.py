"""Where the training loop's metrics go: one sink interface, three sinks.

* JSONL, always: ``<out stem>.metrics.jsonl`` beside the weights, one record a line
  (``{"step": 10, "split": "train", "loss": ..., ...}``).
* TensorBoard, when ``train.logging.tensorboard.enabled``: one scalar per metric and
  step, tagged ``<split>/<metric>`` (``train/loss``, ``valid/nelbo``), in
  ``<out stem>.tb/`` or the configured directory.
* Weights & Biases, when ``train.logging.wandb.mode`` is ``offline`` or ``online``: the
  same keys as TensorBoard, logged at the same steps, with the stage config as the
  run's config.

Only the main process opens sinks. The packages of the optional ones are imported when
they are enabled and only then, so a run without them never loads tensorboard or wandb;
a missing one stops the run before its first step with one line naming the package.

Every sink resumes with the run from the step ``start`` of its resume state:

* the JSONL log drops the records written after that checkpoint (and a torn last line);
* TensorBoard keeps appending to the same directory, with ``purge_step = start + 1``:
  the viewer (and ``EventAccumulator``) hides the points the killed run logged after
  its checkpoint, so every step shows once, with the values of the resumed run;
* W&B continues the run whose id is kept in ``<out stem>.wandb.json``
  (``resume="allow"``). W&B cannot take back steps already logged: the points the
  killed run logged after its checkpoint stay, and the resumed run's points for those
  steps are dropped with a warning. An offline resume writes a second
  ``offline-run-*`` directory under the same id; ``wandb sync`` uploads both into one
  run.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from diladiff_cli.config.train import LoggingConfig, TensorBoardConfig, WandbConfig
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_json, atomic_write_text, read_jsonl, writing


class Sink(Protocol):
    """One destination of the metrics."""

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` of ``split`` (``train`` or ``valid``) at optimizer step ``step``."""
        ...

    def close(self, *, failed: bool) -> None:
        """Flush and release; ``failed``: the run stopped on an error."""
        ...


def metrics_path(weights_path: Path) -> Path:
    """The JSONL log beside a checkpoint (``mdlm.pt`` -> ``mdlm.metrics.jsonl``)."""
    return weights_path.with_name(weights_path.stem + ".metrics.jsonl")


def tensorboard_dir(cfg: TensorBoardConfig, weights_path: Path) -> Path:
    """The event directory: the configured one, else ``<out stem>.tb/`` beside the weights."""
    return Path(cfg.dir) if cfg.dir else weights_path.with_name(weights_path.stem + ".tb")


def wandb_id_path(weights_path: Path) -> Path:
    """Where the W&B run id of a checkpoint is kept (``mdlm.pt`` -> ``mdlm.wandb.json``)."""
    return weights_path.with_name(weights_path.stem + ".wandb.json")


class MetricLog:
    """The sinks of one run behind a single ``write`` (none on the other processes)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.write(step, split, metrics)

    def close(self, *, failed: bool) -> None:
        for sink in reversed(self.sinks):
            sink.close(failed=failed)


def open_metric_log(
    *,
    cfg: LoggingConfig,
    out: Path,
    start: int,
    stage: str,
    config: dict[str, Any],
) -> MetricLog:
    """Open the JSONL log and the sinks ``cfg`` enables, resumed at step ``start``.

    Args:
        cfg: the stage's ``train.logging``.
        out: the weights file of the run (the logs are named after it).
        start: the step the run starts at (0: a fresh run).
        stage: the stage's name (the W&B job type).
        config: the stage config (the W&B run config).

    Returns:
        The run's :class:`MetricLog`; close it when the run ends.

    Raises:
        DiladiffError: an enabled sink's package is missing or its run cannot start;
            the JSONL log is corrupt (not only torn at its end).
        OutputError: a log cannot be written.
    """
    sinks: list[Sink] = [JsonlSink(metrics_path(out), start=start)]
    try:
        if cfg.tensorboard.enabled:
            sinks.append(
                TensorBoardSink(log_dir=tensorboard_dir(cfg.tensorboard, out), start=start)
            )
        if cfg.wandb.mode != "disabled":
            sinks.append(WandbSink(cfg=cfg.wandb, out=out, start=start, stage=stage, config=config))
    except BaseException:
        MetricLog(sinks).close(failed=True)
        raise
    return MetricLog(sinks)


def _require(module: str, package: str, key: str) -> ModuleType:
    """Import an optional sink's package, or stop with one line naming it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DiladiffError(
            f"{key} needs the {package} package ({err}): pip install {package} "
            f"(or pip install 'diladiff[logging]')"
        ) from None


class JsonlSink:
    """``<out stem>.metrics.jsonl``: one JSON record a line, ``{"step", "split", **metrics}``.

    Opening it drops the records written after the resume step ``start`` (all of them
    for a fresh run) and a torn last line (a run stopped mid-write by a full disk or a
    kill).
    """

    def __init__(self, path: Path, *, start: int) -> None:
        self.path = path
        _truncate_log(path, start)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")

    def close(self, *, failed: bool) -> None:
        pass  # each record is written and closed at once


class TensorBoardSink:
    """Scalars ``<split>/<metric>`` at each logged step, in ``log_dir``.

    Appends to the directory of an earlier run: ``purge_step = start + 1`` hides the
    points it logged past the resume step (all of them for a fresh run). Flushed after
    every write, so that a kill loses nothing a resume keeps.
    """

    def __init__(self, *, log_dir: Path, start: int) -> None:
        tensorboard = _require(
            "torch.utils.tensorboard", "tensorboard", "train.logging.tensorboard"
        )
        with writing(log_dir):
            self.writer = tensorboard.SummaryWriter(log_dir=str(log_dir), purge_step=start + 1)
        self.log_dir = log_dir

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        with writing(self.log_dir):
            for name, value in metrics.items():
                self.writer.add_scalar(f"{split}/{name}", value, global_step=step)
            self.writer.flush()

    def close(self, *, failed: bool) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run: ``<split>/<metric>`` keys logged at each step.

    A fresh run (``start == 0``) gets a new id, kept in ``<out stem>.wandb.json``; a
    resumed one continues the run of that id.
    """

    def __init__(
        self, *, cfg: WandbConfig, out: Path, start: int, stage: str, config: dict[str, Any]
    ) -> None:
        wandb = _require("wandb", "wandb", "train.logging.wandb")
        id_file = wandb_id_path(out)
        run_id = _read_run_id(id_file) if start else None
        if run_id is None:
            run_id = uuid.uuid4().hex[:16]  # W&B ids: letters and digits
            atomic_write_json(id_file, {"id": run_id})
        if cfg.dir:
            with writing(cfg.dir):
                Path(cfg.dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                name=cfg.name or out.stem,
                job_type=stage,
                mode=cfg.mode,
                dir=cfg.dir,
                id=run_id,
                resume="allow",
                config=config,
            )
        except Exception as err:  # no login for online, an unreachable server, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DiladiffError(f"cannot start the W&B run ({cfg.mode}): {first}") from None

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self.run.log({f"{split}/{name}": value for name, value in metrics.items()}, step=step)

    def close(self, *, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _read_run_id(path: Path) -> str | None:
    """The W&B run id kept beside a checkpoint, or ``None`` (absent or unreadable:
    the resumed run then starts a new W&B run)."""
    try:
        run_id = json.loads(path.read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (written after the checkpoint a resume starts
    from) and a torn last line (a run stopped mid-write by a full disk or a kill).

    Raises:
        DiladiffError: a line before the last one is not a record: the log is corrupt,
            not torn, and is left for the user to look at.
    """
    if not path.exists():
        return
    if step == 0:
        with writing(path):
            path.unlink()
        return
    with writing(path):
        records = read_jsonl(path, corrupt_hint="; move it away to resume with a new one")
    keep = [json.dumps(r) + "\n" for r in records if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(keep))
