"""DiLaDiff: distilled latent-augmented diffusion for language modeling.

``from diladiff_cli import Pipeline`` gives the Python API (:mod:`diladiff_cli.pipeline`),
imported on first use, so that ``import diladiff_cli`` stays light (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diladiff_cli.pipeline import Generation, Pipeline

__version__ = "0.1.0"
__all__ = ["Generation", "Pipeline", "__version__"]

_LAZY = {"Generation", "Pipeline"}  # attributes of diladiff_cli.pipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from diladiff_cli import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'diladiff_cli' has no attribute {name!r}")
