"""Process topology: torchrun's environment decides, one process is world size 1.

Launch several processes with the existing engine, never a home-made launcher::

    torchrun --nproc_per_node=8 -m diladiff_cli train-mdlm recipes/paper/mdlm.yaml
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=$HEAD:29500 -m diladiff_cli train-mdlm recipes/paper/mdlm.yaml

CUDA processes use NCCL; CPU processes use gloo (so a 2-process run is testable
on a laptop).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diladiff_cli.errors import DiladiffError


@dataclass(frozen=True)
class Runtime:
    """Where this process runs.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank within the node (selects the GPU).
        device: this process's device.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present (one GPU per local rank), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DiladiffError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiladiffError(f"device '{name}' requested but CUDA is not available on this machine")
    return device


def init_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment, start the process group if there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    """Leave the process group. Every process waits for the others first: a gloo peer that
    tears its connections down while another still uses them can abort it ("terminate
    called without an active exception", seen once in CI on the two-process test)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (identity for one process)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def raise_together(refusal: Exception | None, runtime: Runtime, message: str) -> None:
    """Raise the main process's ``refusal`` on every process (a DiladiffError with
    ``message`` on the others), so that none waits for the others at its next collective."""
    if runtime.distributed:
        flag = torch.tensor(float(refusal is not None), device=runtime.device)
        if all_reduce_mean(flag).item() > 0 and refusal is None:
            refusal = DiladiffError(message)
    if refusal is not None:
        raise refusal


@contextlib.contextmanager
def held_by_main(context: AbstractContextManager, runtime: Runtime, *, what: str) -> Iterator[None]:
    """Enter ``context`` (an output's lock) on the main process only, for the ``with``
    body; a refusal there is raised on every process (see :func:`raise_together`)."""
    with contextlib.ExitStack() as held:
        refusal: Exception | None = None
        if runtime.is_main:
            try:
                held.enter_context(context)
            except Exception as err:  # raised below, once the other processes know
                refusal = err
        raise_together(refusal, runtime, f"the main process refused {what}")
        yield


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a wall clock); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """What a timing was measured on: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
