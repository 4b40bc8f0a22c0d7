"""The MDLM diffusion transformer (DiT) backbone, in plain PyTorch.

The forward pass is the one of MDLM's released model (Sahoo et al. 2024), see
``shared/notes/anchors.md`` ("Exact forward of one block"), and the parameter
names are those of its checkpoint without the ``backbone.`` prefix, so that
:mod:`diladiff_cli.models.mdlm_import` is a prefix strip plus checks. Unlike the
released modelling code it needs no flash-attn: attention is
``F.scaled_dot_product_attention`` (flash kernels on CUDA, a fused kernel on CPU)
with a hand-written softmax fallback for forward-mode AD (:func:`math_attention`).

The forward is split into public pieces (:meth:`DiT.embed`, :meth:`DiT.condition`,
:meth:`DiT.rotary`, the blocks, :meth:`DiT.head`) so that later stages can insert
layers between blocks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import nn

from diladiff_cli.config.models import DiTConfig

AttentionBackend = Literal["sdpa", "math"]

# Process-wide default for :func:`attention`; flipped by :func:`math_attention`.
_ATTENTION_BACKEND: AttentionBackend = "sdpa"

Rotary = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (L, head_dim) float32


@contextmanager
def math_attention() -> Iterator[None]:
    """Run every :func:`attention` call (all DiT blocks) with hand-written softmax
    attention inside the ``with`` block.

    ``torch.func.jvp`` cannot go through the SDPA kernels (NotImplementedError,
    on CPU too; see ``shared/notes/offline.md``, "Forward-mode AD"), so a
    MeanFlow JVP runs under this. The switch is process-wide (not thread-local):
    do not mix backends across threads.
    """
    global _ATTENTION_BACKEND
    previous = _ATTENTION_BACKEND
    _ATTENTION_BACKEND = "math"
    try:
        yield
    finally:
        _ATTENTION_BACKEND = previous


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: AttentionBackend | None = None
) -> torch.Tensor:
    """Bidirectional (unmasked) softmax attention.

    Args:
        q: ``(B, H, L, Dh)`` queries.
        k: ``(B, H, S, Dh)`` keys.
        v: ``(B, H, S, Dh)`` values.
        backend: ``"sdpa"`` (fused kernels) or ``"math"`` (plain ops, supports
            forward-mode AD); None takes the process default, ``"sdpa"`` unless
            inside :func:`math_attention`.

    Returns:
        ``(B, H, L, Dh)`` attention output.
    """
    backend = backend or _ATTENTION_BACKEND
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend != "math":
        raise ValueError(f"unknown attention backend {backend!r} (expected 'sdpa' or 'math')")
    scores = einsum(q, k, "b h i d, b h j d -> b h i j") * q.shape[-1] ** -0.5
    # Softmax in fp32 even under bf16 autocast, as the fused kernels accumulate.
    probs = scores.to(_at_least_fp32(scores.dtype)).softmax(dim=-1).to(v.dtype)
    return einsum(probs, v, "b h i j, b h j d -> b h i d")


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 -> fp32 for numerically sensitive ops; fp64 stays fp64 so that
    # float64 checks (finite differences) remain exact.
    return torch.promote_types(dtype, torch.float32)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # Non-interleaved rotary: dimension i pairs with i + Dh/2 (anchors.md).
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, L, Dh)`` by position; computed in fp32, returned in x's dtype."""
    cos, sin = rotary  # (L, Dh) each
    xf = x.to(_at_least_fp32(x.dtype))
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (shift and scale broadcast over x)."""
    return x * (1 + scale) + shift


class TokenEmbedding(nn.Module):
    """A raw ``(V, d)`` embedding parameter, indexed (MDLM's ``vocab_embed.embedding``)."""

    def __init__(self, *, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, hidden))
        # The nn.Linear default (uniform, bound 1/sqrt(d)), as MDLM initialises it.
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` long -> ``(B, L, d)``."""
        return self.embedding[tokens]


class TimestepEmbedder(nn.Module):
    """Noise level -> conditioning: 256-wide sinusoidal [cos, sin] features, then an MLP."""

    frequency_dim = 256
    max_period = 10000.0

    def __init__(self, *, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(self.frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(B,)`` -> ``(B, cond_dim)``."""
        half = self.frequency_dim // 2
        dtype = _at_least_fp32(sigma.dtype)
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, dtype=dtype, device=sigma.device) / half
        )  # (half,)
        args = sigma.to(dtype)[:, None] * freqs[None]  # (B, half)
        features = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)  # (B, 256)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full head width, base 10000.

    ``inv_freq`` ``(Dh/2,)`` is registered with ``persistent=False``: it is a pure
    function of the head width, so it stays out of the state dict (MDLM's
    checkpoint carries it as ``rotary_emb.inv_freq``; the importer checks and
    drops it). Consequence: a model built on the ``meta`` device and then
    ``to_empty()``-ed must be rebuilt, not filled, to get a valid ``inv_freq``.
    """

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int, device: torch.device) -> Rotary:
        """``(cos, sin)``, each ``(L, Dh)`` float32, for positions 0..L-1."""
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # (L, Dh/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (L, Dh): halves pair up
        return angles.cos(), angles.sin()


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in (at least) fp32 with autocast off, times ``weight``."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.layer_norm(x.to(_at_least_fp32(x.dtype)), (x.shape[-1],))
        return x * self.weight


class DiTBlock(nn.Module):
    """One adaLN transformer block: attention then MLP, each modulated and gated by c."""

    def __init__(self, *, hidden: int, heads: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNorm(dim=hidden)
        self.attn_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = LayerNorm(dim=hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)
        # Zero-init: every gate starts at 0, so a fresh block is the identity.
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """Args: x ``(B, L, d)``, c ``(B, cond_dim)``, rotary from :meth:`DiT.rotary`.

        Returns:
            ``(B, L, d)``.
        """
        mod = rearrange(self.adaLN_modulation(c), "b (six d) -> six b 1 d", six=6)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod  # each (B, 1, d)

        h = modulate(self.norm1(x), shift1, scale1)
        # qkv rows are laid out (three, heads, head_dim): the first d rows are q.
        q, k, v = rearrange(
            self.attn_qkv(h), "b l (three h dh) -> three b h l dh", three=3, h=self.heads
        )
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        a = rearrange(attention(q, k, v), "b h l dh -> b l (h dh)")
        # Gated residual, dropout before the gate (MDLM's bias_dropout_add_scale).
        x = x + gate1 * self.dropout(self.attn_out(a))

        h = modulate(self.norm2(x), shift2, scale2)
        return x + gate2 * self.dropout(self.mlp(h))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then the linear map to the vocabulary, both zero-init."""

    def __init__(self, *, hidden: int, vocab_size: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(dim=hidden)
        self.linear = nn.Linear(hidden, vocab_size)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, h: torch.Tensor, c: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: h ``(B, L, d)``, c ``(B, cond_dim)``, positions ``(B, L)`` bool or None.

        Returns:
            ``(B, L, V)`` logits, or ``(N, V)`` at the N True positions (row-major).
        """
        mod = self.adaLN_modulation(c)  # (B, 2d)
        if positions is None:
            mod = mod[:, None]  # (B, 1, 2d), broadcast over L
        else:
            # Select before the norm and the linear: the output layer dominates
            # the cost at small widths, and each row keeps its own example's c.
            mod = repeat(mod, "b e -> b l e", l=h.shape[1])[positions]  # (N, 2d)
            h = h[positions]  # (N, d)
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(h), shift, scale))


class DiT(nn.Module):
    """MDLM's diffusion transformer: tokens and noise level -> raw logits.

    The output is the raw logits; the SUBS parameterisation (mask logit -inf,
    carry-over of unmasked tokens) is applied outside, in
    :mod:`diladiff_cli.diffusion.masked`.

    Args:
        vocab_size: number of token ids, the mask token included.
        hidden: model width d.
        depth: number of blocks.
        heads: attention heads.
        cond_dim: conditioning width.
        max_len: trained context length (informative; not enforced).
        dropout: residual dropout.
        time_conditioning: when False, sigma is replaced by zeros.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden: int = 768,
        depth: int = 12,
        heads: int = 12,
        cond_dim: int = 128,
        max_len: int = 1024,
        dropout: float = 0.1,
        time_conditioning: bool = False,
    ) -> None:
        super().__init__()
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"hidden={hidden} must split into {heads} heads of even width")
        self.config = DiTConfig(
            vocab_size=vocab_size,
            hidden=hidden,
            depth=depth,
            heads=heads,
            cond_dim=cond_dim,
            max_len=max_len,
            dropout=dropout,
            time_conditioning=time_conditioning,
        )
        self.time_conditioning = time_conditioning
        self.vocab_embed = TokenEmbedding(vocab_size=vocab_size, hidden=hidden)
        self.sigma_map = TimestepEmbedder(cond_dim=cond_dim)
        self.rotary_emb = RotaryEmbedding(head_dim=hidden // heads)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden=hidden, heads=heads, cond_dim=cond_dim, dropout=dropout)
            for _ in range(depth)
        )
        self.output_layer = FinalLayer(hidden=hidden, vocab_size=vocab_size, cond_dim=cond_dim)

    @classmethod
    def from_config(cls, cfg: DiTConfig) -> DiT:
        """Build from a :class:`DiTConfig`."""
        return cls(**dataclasses.asdict(cfg))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` long token ids -> ``(B, L, d)`` embeddings."""
        return self.vocab_embed(tokens)

    def condition(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(B,)`` noise level -> ``(B, cond_dim)`` conditioning c = silu(sigma_map(sigma)).

        Without time conditioning sigma is zeroed, so c is constant but not zero
        (the sinusoid's cos half is 1 at 0 and sigma_map has biases).
        """
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        return F.silu(self.sigma_map(sigma))

    def rotary(self, length: int, device: torch.device) -> Rotary:
        """``(cos, sin)``, each ``(L, head_dim)`` float32, to pass to every block."""
        return self.rotary_emb(length, device)

    def head(
        self, h: torch.Tensor, c: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final layer: ``(B, L, d)`` -> ``(B, L, V)`` logits, or ``(N, V)`` at the N
        True entries of ``positions`` ``(B, L)`` in row-major order."""
        return self.output_layer(h, c, positions)

    def forward(
        self, tokens: torch.Tensor, sigma: torch.Tensor, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw logits.

        Args:
            tokens: ``(B, L)`` long.
            sigma: ``(B,)`` noise level (ignored without time conditioning).
            positions: optional ``(B, L)`` bool: compute logits only there.

        Returns:
            ``(B, L, V)`` logits, or ``(N, V)`` with N = ``positions.sum()``, rows in
            row-major order of the True entries.
        """
        h = self.embed(tokens)  # (B, L, d)
        c = self.condition(sigma)  # (B, cond)
        rotary = self.rotary(tokens.shape[1], tokens.device)
        for block in self.blocks:
            h = block(h, c, rotary)
        return self.head(h, c, positions)
