"""Shapes of the networks: the token DiT, the latent DiT and the Perceiver compressor
(plain types only: they are YAML and checkpoint metadata too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diladiff_cli.config._checks import at_least, fields_in
from diladiff_cli.structs import FieldError

LatentNorm = Literal["none", "stats", "l2"]
NullLatent = Literal["zero", "learned"]


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a :class:`DiT` (also its YAML config: plain types only).

    Attributes:
        vocab_size: number of token ids, the mask token included.
        hidden: model width d.
        depth: number of transformer blocks.
        heads: attention heads (``hidden`` must be divisible by it).
        cond_dim: width of the adaLN conditioning vector c.
        max_len: the context length the model is trained for. The rotary
            embedding has no table, so nothing enforces it.
        dropout: dropout on the residual branches (before the gates).
        time_conditioning: feed the noise level to the network; when False the
            network sees sigma = 0 whatever it is given (MDLM's released model).
    """

    vocab_size: int
    hidden: int = 768
    depth: int = 12
    heads: int = 12
    cond_dim: int = 128
    max_len: int = 1024
    dropout: float = 0.1
    time_conditioning: bool = False

    def __post_init__(self) -> None:
        # vocab_size must also equal the prepared data's: checked once the data is read.
        at_least(self, 1, "vocab_size", "hidden", "depth", "heads", "cond_dim", "max_len")
        _even_heads(self.hidden, self.heads)
        fields_in(self, "dropout", ge=0.0, lt=1.0)


def _even_heads(hidden: int, heads: int) -> None:
    """Rotary attention pairs dimension i with i + Dh/2: the head width must be even."""
    if hidden % heads or (hidden // heads) % 2:
        raise FieldError(
            "heads", f"must split hidden={hidden} into heads of even width, got {heads}"
        )


@dataclass(frozen=True)
class LatentDiTConfig:
    """Shape of a :class:`LatentDiT` (also its YAML config: plain types only).

    Attributes:
        num_latents: N, latents per sequence (must match the autoencoder's).
        latent_dim: D, width of one latent (must match the autoencoder's).
        hidden: transformer width.
        depth: number of blocks.
        heads: attention heads.
        cond_dim: width of the adaLN conditioning vector.
        dropout: residual dropout.
        two_times: condition on a second time r as well (the MeanFlow student).
    """

    num_latents: int
    latent_dim: int
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    cond_dim: int = 128
    dropout: float = 0.0
    two_times: bool = False

    def __post_init__(self) -> None:
        at_least(self, 1, "num_latents", "latent_dim", "hidden", "depth", "heads", "cond_dim")
        _even_heads(self.hidden, self.heads)
        fields_in(self, "dropout", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class CompressorConfig:
    """Shape of a :class:`PerceiverCompressor` (the ``input_dim`` comes from the encoder).

    Attributes:
        num_latents: N, number of latent vectors (fewer than the tokens).
        latent_dim: D, width of each latent vector (what the prior models).
        width: internal width of the compressor layers.
        depth: number of Perceiver layers.
        heads: attention heads (``width`` must be divisible by it).
        mlp_ratio: hidden width of each MLP as a multiple of ``width``.
        locality: strength of the positional prior of the latent-to-token attention
            (see :class:`PerceiverCompressor`); 0 switches it off.
    """

    num_latents: int = 16
    latent_dim: int = 64
    width: int = 192
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    locality: float = 1.0

    def __post_init__(self) -> None:
        at_least(self, 1, "num_latents", "latent_dim", "width", "depth", "heads", "mlp_ratio")
        if self.width % self.heads:
            raise FieldError("heads", f"must divide width={self.width}, got {self.heads}")
        fields_in(self, "locality", ge=0.0)
