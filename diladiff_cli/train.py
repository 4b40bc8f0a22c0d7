"""The one training loop, shared by every trainable stage.

A stage hands over a model and an objective (``objective(model, batch, ctx) ->
LossOutput``, see :mod:`diladiff_cli.objective`). The loop owns AdamW, warm-up,
clipping, gradient accumulation, EMA, autocast, ``torch.compile``, DDP, logging,
checkpoints, exact resume and the NaN guard. The metrics go to the sinks of
:mod:`diladiff_cli.tracking` (the JSONL log always; TensorBoard and W&B when
``cfg.logging`` enables them), written by the main process only.

Determinism: the examples of step ``s`` and the noise drawn for them are pure
functions of (seed, s), independent of the number of processes and of
accumulation; dropout draws from the torch RNG, whose state is saved with every
checkpoint. A run killed at any point and resumed therefore ends with the same
weights as an uninterrupted one (on the same device type and process count).

One writer per output: the main process holds ``<out>.lock`` for the whole run, so
a second run on the same output is refused before any work, and it removes what runs
killed mid-write left (temporary weights and state directories, a torn last line of
the metrics log). A full disk or a read-only output stops the run with one line; the
previous checkpoint stays whole.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diladiff_cli.checkpoint import (
    CheckpointMeta,
    TrainState,
    layout_difference,
    load_into,
    load_train_state,
    read_meta,
    remove_orphans,
    save_train_state,
    save_weights,
    state_dir,
    tensor_names,
)
from diladiff_cli.config.train import Precision, TrainConfig
from diladiff_cli.distributed import Runtime, all_reduce_mean, raise_together
from diladiff_cli.errors import CheckpointError, DiladiffError, TrainingDiverged
from diladiff_cli.files import OutputError, check_output, remove_temporaries
from diladiff_cli.locks import output_lock
from diladiff_cli.objective import Batch, Objective, StepContext
from diladiff_cli.tracking import MetricLog, metrics_path, open_metric_log, wandb_id_path

# Train-config keys that may change between a run and its resumption (`logging` too: the
# fingerprint of a checkpoint written before the key existed stays the same).
_RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "eval_every",
    "eval_batches",
    "ckpt_every",
    "compile",
    "logging",
    "deterministic",
)


def seed_everything(seed: int) -> None:
    """Seed the global torch RNG; stages call it before building their model so that
    the initial weights are a function of the seed."""
    torch.manual_seed(seed)


class ExampleSource(Protocol):
    """A split the loop can draw from: a length and a batch builder."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> Batch: ...


class Reporter(Protocol):
    """Progress and log sink (the CLI passes a rich one; the core never imports rich)."""

    def start(self, *, total: int, done: int, description: str) -> None: ...

    def update(self, *, step: int, metrics: dict[str, float]) -> None: ...

    def log(self, message: str) -> None: ...

    def stop(self) -> None: ...


class NullReporter:
    def start(self, *, total: int, done: int, description: str) -> None:
        pass

    def update(self, *, step: int, metrics: dict[str, float]) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class TrainResult:
    """Summary of a training run.

    Attributes:
        step: optimizer steps completed.
        resumed_from: the step the run resumed from (0 for a fresh run).
        skipped: True when the checkpoint was already complete and nothing ran.
        train_metrics: last logged training metrics.
        valid_metrics: final validation metrics (empty without a validation split).
        seconds: wall time of the steps run in this invocation.
        examples_per_second: throughput of this invocation.
    """

    step: int
    resumed_from: int
    skipped: bool
    train_metrics: dict[str, float] = field(default_factory=dict)
    valid_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    examples_per_second: float = 0.0


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of a stage config, ignoring the train keys a resumed run may change."""
    cfg = json.loads(json.dumps(config))
    if isinstance(cfg.get("train"), dict):
        for key in _RESUMABLE_KEYS:
            cfg["train"].pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Order:
    """Which examples form global batch ``step``: an epoch-wise permutation seeded by
    (seed, epoch), walked in order. Independent of world size and accumulation."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        if n == 0:
            raise DiladiffError("the training split is empty")
        self.n, self.batch, self.seed = n, batch, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.n))
        return self._perm[1]

    def indices(self, step: int) -> np.ndarray:
        pos = step * self.batch + np.arange(self.batch)
        out = np.empty(self.batch, dtype=np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._permutation(int(epoch))[pos[sel] % self.n]
        return out


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _mean_metrics(
    items: list[dict[str, float | torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Average metric dicts over micro-steps, then over processes."""
    keys = sorted({k for m in items for k in m})
    if not keys:
        return {}
    local = torch.tensor(
        [sum(float(m.get(k, 0.0)) for m in items) / len(items) for k in keys],
        dtype=torch.float64,
        device=device,
    )
    return dict(zip(keys, all_reduce_mean(local).tolist(), strict=True))


def evaluate(
    *,
    model: nn.Module,
    objective: Objective,
    data: ExampleSource,
    batch_size: int,
    batches: int,
    seed: int,
    runtime: Runtime,
    precision: Precision,
) -> dict[str, float]:
    """Mean objective metrics over the first ``batches`` global batches of ``data``
    (in order, fixed noise), split across processes."""
    was_training = model.training
    model.eval()
    n = min(batches * batch_size, len(data)) // batch_size * batch_size
    if n == 0:
        n = min(batch_size, len(data))
        batch_size = n
    per_rank = np.array_split(np.arange(n), runtime.world_size)[runtime.rank]
    results = []
    with torch.no_grad():
        for start in range(0, len(per_rank), batch_size):
            idx = per_rank[start : start + batch_size]
            global_pos = torch.as_tensor(idx % batch_size)
            ctx = StepContext(
                seed=seed + 7919,
                step=int(idx[0]) // batch_size,
                index=global_pos,
                global_batch=batch_size,
                device=runtime.device,
            )
            with autocast(runtime.device, precision):
                out = objective(model, data.batch(idx).to(runtime.device), ctx)
            results.append({"loss": out.loss, **out.metrics})
    model.train(was_training)
    return _mean_metrics(results or [{}], runtime.device)


def train(
    *,
    model: nn.Module,
    objective: Objective,
    train_data: ExampleSource,
    valid_data: ExampleSource | None,
    cfg: TrainConfig,
    out: str | Path,
    meta: CheckpointMeta,
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
    find_unused_parameters: bool = False,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` with ``objective`` and write ``out`` (weights) and its resume state.

    Args:
        model: built in fp32 on CPU or already on ``runtime.device``; parameters with
            ``requires_grad=False`` stay frozen.
        objective: the stage's loss.
        train_data: the training split.
        valid_data: evaluated at ``eval_every`` and at the end (optional).
        cfg: optimisation settings.
        out: the weights file to write (any suffix).
        meta: stage name, stage config and extra data stored in the checkpoint; its
            ``step`` is ignored.
        runtime: process topology and device.
        precision: autocast precision.
        resume: continue from ``out``'s resume state when one exists (same config).
        reporter: progress sink.
        find_unused_parameters: passed to DDP for stages that skip modules on some steps.
        on_checkpoint: called with the step after each checkpoint (tests use it).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: the loss became NaN/inf; the last good checkpoint is kept.
        CheckpointError: ``out`` holds a run of another config, or a checkpoint could
            not be written (the previous one is kept).
        DiladiffError: ``out`` is a directory or below a file, or another run is
            writing it (refused before any step).
    """
    out = Path(out)
    reporter = reporter or NullReporter()
    fingerprint = config_fingerprint(meta.config)
    micro, accum = _micro_batches(cfg, runtime.world_size)
    model.to(runtime.device)
    base = model
    if resume and _is_complete(out, meta.stage, fingerprint, cfg.steps, model=base):
        # only read, without the lock: a finished output on a read-only disk is still done
        reporter.log(f"{out} is complete ({cfg.steps} steps): nothing to do")
        return TrainResult(step=cfg.steps, resumed_from=cfg.steps, skipped=True)
    with (
        _claim(out, runtime, reporter),
        _deterministic(cfg.deterministic, runtime.device),
        _compile_fallback(cfg.compile),
        contextlib.ExitStack() as held,
    ):
        params = [p for p in base.parameters() if p.requires_grad]
        if not params:
            raise DiladiffError("the model has no trainable parameters")
        fused = runtime.device.type == "cuda"
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None
        )
        ema_model = copy.deepcopy(base).eval().requires_grad_(False) if cfg.ema > 0 else None

        state = load_train_state(out) if resume else None
        if state is not None:
            start = _restore(
                state, out, fingerprint, base, ema_model, optimizer, runtime, cfg.steps
            )
        else:
            start = 0
            torch.manual_seed(cfg.seed + runtime.rank)
        net = _wrap(base, cfg, runtime, reporter, find_unused_parameters)
        scaler = torch.amp.GradScaler(enabled=precision == "fp16" and runtime.device.type == "cuda")

        log = held.enter_context(_metric_log(cfg, out, start, meta, runtime))
        saved = start  # the step of the resume state on disk

        def checkpoint(step: int) -> None:
            nonlocal saved
            if runtime.is_main:
                try:
                    _save(out, meta, step, base, ema_model, optimizer, runtime, fingerprint)
                except OutputError as err:  # the writes are atomic: the previous one is whole
                    then = (
                        f"run it again to resume from step {saved}"
                        if saved
                        else "no checkpoint yet"
                    )
                    raise CheckpointError(f"{err}; stopped at step {step}, {then}") from err
            saved = step
            if on_checkpoint is not None:
                on_checkpoint(step)

        order = _Order(len(train_data), cfg.batch_size, cfg.seed)
        net.train()
        reporter.start(total=cfg.steps, done=start, description=f"train {meta.stage}")
        t0 = time.perf_counter()
        last: dict[str, float] = {}
        valid: dict[str, float] = {}
        try:
            for step in range(start, cfg.steps):
                lr = cfg.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order.indices(step)
                micro_metrics = [
                    _backward(net, objective, train_data, idx, step, a, micro, accum,
                              cfg, runtime, precision, scaler)
                    for a in range(accum)
                ]  # fmt: skip
                grad_norm = _optimizer_step(
                    params, optimizer, scaler, cfg.grad_clip, runtime.device
                )
                if ema_model is not None:
                    _update_ema(ema_model, base, cfg.ema)
                done = step + 1
                is_log = done % cfg.log_every == 0 or done == cfg.steps
                is_ckpt = done % cfg.ckpt_every == 0 or done == cfg.steps
                if is_log or is_ckpt:
                    metrics = _step_metrics(micro_metrics, grad_norm, lr, done, out, runtime)
                    last = metrics
                    if is_log:
                        log.write(done, "train", metrics)
                    reporter.update(step=done, metrics=metrics)
                if valid_data is not None and cfg.eval_every and done % cfg.eval_every == 0:
                    valid = _validate(
                        ema_model or base, objective, valid_data, cfg, runtime, precision
                    )
                    log.write(done, "valid", valid)
                    reporter.log(f"step {done} valid " + _fmt(valid))
                if is_ckpt:
                    checkpoint(done)
        finally:
            reporter.stop()
        seconds = time.perf_counter() - t0
        if valid_data is not None and (not cfg.eval_every or cfg.steps % cfg.eval_every):
            valid = _validate(ema_model or base, objective, valid_data, cfg, runtime, precision)
            log.write(cfg.steps, "valid", valid)
        if start == cfg.steps:
            checkpoint(cfg.steps)  # the state was complete but the weights file was not
        ran = cfg.steps - start
        return TrainResult(
            step=cfg.steps,
            resumed_from=start,
            skipped=False,
            train_metrics=last,
            valid_metrics=valid,
            seconds=seconds,
            examples_per_second=ran * cfg.batch_size / seconds if ran and seconds > 0 else 0.0,
        )


@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the run, the process's setting restored
    after. On CPU a multi-threaded backward otherwise sums in a varying order: two runs
    of one seed drift apart in the last bits and, past an abrupt transition in training,
    far apart (docs/oracle.md). On CUDA an op without a deterministic kernel warns."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build a forward and a backward on ``device`` (e.g. no
    working C++ compiler for Inductor on CPU), or None when it can. Compilation is lazy:
    without this probe the failure would come at the model's first backward."""
    import torch._dynamo

    def probe(x: torch.Tensor) -> torch.Tensor:
        return (x.sin() * x).sum()

    x = torch.ones(4, device=device, requires_grad=True)
    try:
        with torch._dynamo.config.patch(suppress_errors=False):
            torch.compile(probe)(x).backward()
    except Exception as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0]
    return None


@contextlib.contextmanager
def _compile_fallback(enabled: bool) -> Iterator[None]:
    """While a compiled model trains, a part of it that does not compile (an unsupported
    construct in its forward) runs eagerly with a warning instead of stopping the run;
    the process's setting is restored after."""
    if not enabled:
        yield
        return
    import torch._dynamo

    with torch._dynamo.config.patch(suppress_errors=True):
        yield


@contextlib.contextmanager
def _claim(out: Path, runtime: Runtime, reporter: Reporter) -> Iterator[None]:
    """Hold ``out`` for the run: refuse an output that could never be written, take its
    lock (on the main process, the only one that writes it) and remove what killed runs
    of it left. Every process learns of a refusal, so that none waits for the others at
    its first collective."""
    with contextlib.ExitStack() as held:
        refusal: Exception | None = None
        removed: list[Path] = []
        if runtime.is_main:
            try:
                check_output(out)
                held.enter_context(output_lock(out))
                # m.pt and m.bin share m.metrics.jsonl: it needs a lock of its own
                held.enter_context(output_lock(metrics_path(out)))
                removed = (
                    remove_orphans(out)
                    + remove_temporaries(metrics_path(out))
                    + remove_temporaries(wandb_id_path(out))
                )
            except Exception as err:  # raised below, once the other processes know
                refusal = err
        raise_together(refusal, runtime, f"the main process refused the output {out}")
        if removed:
            names = ", ".join(p.name for p in removed)
            reporter.log(f"removed what an interrupted run of {out} left: {names}")
        yield


@contextlib.contextmanager
def _metric_log(
    cfg: TrainConfig, out: Path, start: int, meta: CheckpointMeta, runtime: Runtime
) -> Iterator[MetricLog]:
    """The run's metric sinks, resumed at ``start``: opened by the main process only
    (the others log nothing), closed when the run ends, marked failed on an error."""
    log, refusal = MetricLog([]), None
    if runtime.is_main:
        try:
            log = open_metric_log(
                cfg=cfg.logging, out=out, start=start, stage=meta.stage, config=meta.config
            )
        except Exception as err:  # raised below, once the other processes know
            refusal = err
    raise_together(refusal, runtime, "the main process could not open its metric logs")
    try:
        yield log
    except BaseException:
        log.close(failed=True)
        raise
    log.close(failed=False)


def _micro_batches(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """``(micro-batch per process, accumulation steps)`` of a global batch."""
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % (micro * world):
        raise DiladiffError(
            f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size {micro} "
            f"x {world} processes"
        )
    return micro, cfg.batch_size // (micro * world)


def _restore(
    state: TrainState,
    out: Path,
    fingerprint: str,
    base: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    steps: int,
) -> int:
    """Load a resume state (weights, EMA, optimizer, RNG); return the step to start at."""
    if state.info.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{out} holds a run with another config; pass --no-resume to overwrite it "
            f"or choose another output"
        )
    load_into(base, state.model, source=f"resume state of {out}")
    if ema_model is not None and state.ema:
        load_into(ema_model, state.ema, source=f"resume state of {out}")
    optimizer.load_state_dict(state.optimizer)
    _set_rng_state(state.rng, runtime.device)
    return min(state.step, steps)


def _wrap(
    base: nn.Module,
    cfg: TrainConfig,
    runtime: Runtime,
    reporter: Reporter,
    find_unused_parameters: bool,
) -> nn.Module:
    """The module the steps run: compiled when asked (falls back to eager), DDP when
    there is more than one process."""
    net: nn.Module = base
    if cfg.compile:
        problem = _compiler_problem(runtime.device)
        if problem is None:
            net = torch.compile(base)
            reporter.log("torch.compile: the first step compiles the model")
        else:  # compile is an optimisation: never fatal
            reporter.log(f"torch.compile unavailable ({problem}); running eager")
    if runtime.distributed:
        net = DistributedDataParallel(
            net,
            device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    return net


def _save(
    out: Path,
    meta: CheckpointMeta,
    step: int,
    base: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    fingerprint: str,
) -> None:
    """The weights (EMA when kept) with their metadata, then the resume state."""
    weights = (ema_model or base).state_dict()
    save_weights(
        out,
        weights,
        CheckpointMeta(stage=meta.stage, step=step, config=meta.config, extra=meta.extra),
    )
    save_train_state(
        out,
        TrainState(
            step=step,
            model=base.state_dict(),
            ema=ema_model.state_dict() if ema_model is not None else {},
            optimizer=optimizer.state_dict(),
            rng=_rng_state(runtime.device),
            info={"fingerprint": fingerprint, "world_size": runtime.world_size},
        ),
    )


def _optimizer_step(
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    device: torch.device,
) -> torch.Tensor:
    """Unscale, clip (0: off), step and zero the gradients; return the gradient norm."""
    scaler.unscale_(optimizer)
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if grad_clip > 0
        else torch.zeros((), device=device)
    )
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _backward(
    net: nn.Module,
    objective: Objective,
    data: ExampleSource,
    idx: np.ndarray,
    step: int,
    a: int,
    micro: int,
    accum: int,
    cfg: TrainConfig,
    runtime: Runtime,
    precision: Precision,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """Forward and backward of micro-batch ``a`` of this process (gradients are synced
    across processes on the last one only); return its metrics."""
    lo = (runtime.rank * accum + a) * micro
    sel = np.arange(cfg.batch_size)[lo : lo + micro]  # positions in the global batch
    ctx = StepContext(
        seed=cfg.seed,
        step=step,
        index=torch.as_tensor(sel),
        global_batch=cfg.batch_size,
        device=runtime.device,
    )
    batch = data.batch(idx[sel]).to(runtime.device)
    sync = a == accum - 1 or not runtime.distributed
    with contextlib.nullcontext() if sync else net.no_sync():
        with autocast(runtime.device, precision):
            result = objective(net, batch, ctx)
        scaler.scale(result.loss / accum).backward()
    return {"loss": result.loss.detach(), **result.metrics}


@torch.no_grad()
def _update_ema(ema_model: nn.Module, base: nn.Module, decay: float) -> None:
    """EMA of the parameters; buffers are copied."""
    for e, p in zip(ema_model.parameters(), base.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema_model.buffers(), base.buffers(), strict=True):
        e.copy_(b)


def _step_metrics(
    micro_metrics: list[dict[str, Any]],
    grad_norm: torch.Tensor,
    lr: float,
    done: int,
    out: Path,
    runtime: Runtime,
) -> dict[str, float]:
    """The step's metrics averaged over micro-batches and processes; a NaN or infinite
    loss or gradient stops the run (the last good checkpoint stays)."""
    metrics = _mean_metrics(micro_metrics, runtime.device)
    metrics["lr"] = lr
    metrics["grad_norm"] = float(all_reduce_mean(grad_norm.detach().double()))
    if not math.isfinite(metrics["loss"]) or not math.isfinite(metrics["grad_norm"]):
        raise TrainingDiverged(
            f"loss became {metrics['loss']} at step {done}; stopped, the last good "
            f"checkpoint {out} is kept"
        )
    return metrics


def _is_complete(out: Path, stage: str, fingerprint: str, steps: int, *, model: nn.Module) -> bool:
    """Whether ``out`` already holds this run's final weights (make-style skip).

    Raises:
        CheckpointError: it holds a finished run of this config written by another model
            layout (an older version of the code): skipping would leave a checkpoint
            nothing can load, and training over it would discard a finished run.
    """
    if not out.exists():
        return False
    try:
        done = read_meta(out)
    except CheckpointError:
        return False
    finished = (
        done.stage == stage
        and config_fingerprint(done.config) == fingerprint
        and done.step >= steps
    )
    difference = layout_difference(model, tensor_names(out)) if finished else None
    if difference is not None:
        raise CheckpointError(
            f"{out} holds a finished run of this config from another model layout "
            f"({difference}; an older version of the code?): remove it and "
            f"{state_dir(out)} to train it again"
        )
    return finished


def _validate(
    model: nn.Module,
    objective: Objective,
    data: ExampleSource,
    cfg: TrainConfig,
    runtime: Runtime,
    precision: Precision,
) -> dict[str, float]:
    return evaluate(
        model=model,
        objective=objective,
        data=data,
        batch_size=cfg.batch_size,
        batches=cfg.eval_batches,
        seed=cfg.seed,
        runtime=runtime,
        precision=precision,
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
