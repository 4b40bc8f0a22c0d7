"""DiLaDiff: distilled latent-augmented diffusion for language modeling."""

__version__ = "0.1.0"
