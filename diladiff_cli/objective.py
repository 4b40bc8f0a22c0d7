"""The contract between a training stage and the one training loop.

A stage supplies an objective: ``objective(model, batch, ctx) -> LossOutput``.
The loop owns everything else (optimizer, schedule, accumulation, EMA, DDP,
checkpoints). ``model`` is what the loop trains, possibly wrapped by DDP or
``torch.compile``: call it for the gradient pass, and use :func:`unwrap` when a
pass must bypass the wrapper (e.g. a forward-mode JVP, which cannot see through
DDP's hooks).

Noise is drawn through :class:`StepContext`, never from the global RNG: every
draw is a pure function of (seed, step, stream, position of the example in the
global batch). A run therefore sees the same noise whatever the number of
processes or accumulation micro-steps, and a resumed run the same noise as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class LossOutput:
    """What an objective returns for one micro-batch.

    Attributes:
        loss: scalar tensor to back-propagate, the mean over the micro-batch
            (micro-batches are equal-sized, so the mean of their means is the
            global mean and DDP's gradient averaging is exact).
        metrics: scalars to log (averaged over micro-steps and processes); 0-d
            tensors are welcome: the loop reads them only at log steps, so a GPU
            step makes no host sync for them.
    """

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


def _stream_seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class StepContext:
    """Deterministic noise for the examples of one micro-batch.

    Args:
        seed: the run's seed.
        step: the optimizer step being computed.
        index: ``(B,)`` long tensor, each example's position in the global batch.
        global_batch: the global batch size (all processes, all micro-steps).
        device: where the noise is made.
    """

    def __init__(
        self, *, seed: int, step: int, index: torch.Tensor, global_batch: int, device: torch.device
    ) -> None:
        self.seed = seed
        self.step = step
        self.index = index
        self.global_batch = global_batch
        self.device = torch.device(device)
        self._stream = 0

    def _generator(self) -> torch.Generator:
        self._stream += 1
        g = torch.Generator(device=self.device)
        g.manual_seed(_stream_seed(self.seed, self.step, self._stream))
        return g

    def uniform(self, *shape: int) -> torch.Tensor:
        """``(B, *shape)`` uniform [0, 1) noise for this micro-batch's examples."""
        full = torch.rand(
            self.global_batch, *shape, generator=self._generator(), device=self.device
        )
        return full[self.index.to(self.device)]

    def normal(self, *shape: int) -> torch.Tensor:
        """``(B, *shape)`` standard normal noise for this micro-batch's examples."""
        full = torch.randn(
            self.global_batch, *shape, generator=self._generator(), device=self.device
        )
        return full[self.index.to(self.device)]

    def shared_uniform(self) -> torch.Tensor:
        """A 0-d uniform [0, 1) tensor shared by the whole global batch (e.g. the
        offset of antithetic time sampling); no host sync."""
        return torch.rand((), generator=self._generator(), device=self.device)


class Batch(Protocol):
    """A micro-batch: any dataclass of tensors that can move to a device."""

    def to(self, device: torch.device) -> Batch: ...


Objective = Callable[[nn.Module, Any, StepContext], LossOutput]


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP and ``torch.compile`` wrappers (for JVPs and state dicts)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
