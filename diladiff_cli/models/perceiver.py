"""The Perceiver-style compressor of the autoencoder: token states -> a few latents.

``num_latents`` learned queries attend, over ``depth`` pre-norm layers, to the
concatenation ``[latents; tokens]`` of their own states and the (frozen) encoder's
token states (COSMOS's layout, shared/notes/anchors.md); the tokens are read, never
updated. RMSNorm everywhere and RMS qk-norm inside attention keep the logits bounded
whatever the scale of the encoder states. A final norm and projection give the
latent width.

:class:`Attention` (multi-head attention from queries to a separate context, with
optional key padding mask, qk-norm and a zero-initialised output) is also the
cross-attention of :class:`~diladiff_cli.models.autoencoder.LatentDecoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from diladiff_cli.config.models import CompressorConfig
from diladiff_cli.models.dit import attention


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, in (at least) fp32, times ``weight``.

    A zero vector maps to zero (no bias, no mean subtraction), which the decoder's
    zero null latent relies on.
    """

    def __init__(self, *, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y * self.weight


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` to a context, with RMS qk-norm.

    Projections have no bias, so a zero context gives zero keys and values and
    hence a zero output.

    Args:
        dim: width of the queries and of the output.
        context_dim: width of the context.
        heads: attention heads (``dim`` must be divisible by it).
        zero_init: zero the output projection, so the layer starts as a zero map
            (a residual branch that leaves its input unchanged).
    """

    def __init__(self, *, dim: int, context_dim: int, heads: int, zero_init: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.q_norm = RMSNorm(dim=head_dim)
        self.k_norm = RMSNorm(dim=head_dim)
        self.to_out = nn.Linear(dim, dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        key_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: x ``(B, Q, dim)``, context ``(B, K, context_dim)``; mask ``(B, K)`` bool
        (True = attend), or a float additive bias ``(B, H or 1, Q, K)`` (-inf = never),
        or None; key_offset ``(K, dim)`` added to the keys before the qk-norm (a
        positional code of the context; the values are untouched).

        Returns:
            ``(B, Q, dim)``.
        """
        q = rearrange(self.to_q(x), "b q (h d) -> b h q d", h=self.heads)
        kv = self.to_kv(context)  # (B, K, 2 dim)
        if key_offset is not None:
            kv = kv + torch.cat((key_offset, torch.zeros_like(key_offset)), dim=-1).to(kv.dtype)
        k, v = rearrange(kv, "b k (two h d) -> two b h k d", two=2, h=self.heads)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if mask is None:
            out = attention(q, k, v)
        elif mask.dtype == torch.bool:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.to_out(rearrange(out, "b h q d -> b q (h d)"))


def locality_slopes(locality: float, heads: int) -> torch.Tensor:
    """Per-head strengths ``(H,)`` of a positional attention prior: ``locality * 4^-h``,
    the last head 0 (it sees everything) when there is more than one head."""
    slopes = locality * 4.0 ** -torch.arange(heads, dtype=torch.float32)
    if heads > 1:
        slopes[-1] = 0.0
    return slopes


class PerceiverLayer(nn.Module):
    """Latents attend to ``[latents; tokens]``, then an MLP; both pre-norm residual."""

    def __init__(self, *, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm_latents = RMSNorm(dim=width)
        self.norm_tokens = RMSNorm(dim=width)
        self.attn = Attention(dim=width, context_dim=width, heads=heads)
        self.norm_mlp = RMSNorm(dim=width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * width, width),
        )

    def forward(
        self, latents: torch.Tensor, tokens: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """Args: latents ``(B, N, w)``, tokens ``(B, S, w)``, context_mask: ``(B, N + S)``
        bool or an additive bias ``(B, H, N, N + S)``.

        Returns:
            ``(B, N, w)`` updated latents.
        """
        x = self.norm_latents(latents)
        context = torch.cat((x, self.norm_tokens(tokens)), dim=1)  # (B, N + S, w)
        latents = latents + self.attn(x, context.to(x.dtype), context_mask)
        return latents + self.mlp(self.norm_mlp(latents))


class PerceiverCompressor(nn.Module):
    """Token states ``(B, S, input_dim)`` -> latents ``(B, num_latents, latent_dim)``.

    The output shape does not depend on S: any text length (within the encoder's)
    gives the same number of latents.

    Positional prior: latent k is centred on the relative text position
    ``(k + 1/2) / N`` and its attention to token s gets the additive bias
    ``-slope_h * (N * (p_s - (k + 1/2) / N))^2 / 2``, where ``p_s`` in [0, 1] is the
    token's relative position among the real tokens (a Gaussian of ``1/sqrt(slope_h)``
    latent spans). Head h has ``slope_h = locality * 4^-h``, the last head none (it
    sees the whole text); attention among latents is unbiased. Without it every latent
    starts as the same average of the text, and the decoder, whose cross-attention can
    only use latents addressed by position, learns far slower (measured: see
    docs/autoencoder.md).

    Args:
        input_dim: width of the token states (the encoder's hidden size).
        num_latents: N.
        latent_dim: D.
        width: internal width.
        depth: number of :class:`PerceiverLayer`.
        heads: attention heads.
        mlp_ratio: MLP expansion.
        locality: the positional prior's strength (0: off).
    """

    def __init__(
        self,
        *,
        input_dim: int,
        num_latents: int,
        latent_dim: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: int = 4,
        locality: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.heads = heads
        self.input_proj = nn.Linear(input_dim, width)
        # Small, so that z is dominated by the text, not by a per-latent constant.
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        self.layers = nn.ModuleList(
            PerceiverLayer(width=width, heads=heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.norm_out = RMSNorm(dim=width)
        self.output_proj = nn.Linear(width, latent_dim)
        self.register_buffer("slopes", locality_slopes(locality, heads), persistent=False)

    @classmethod
    def from_config(cls, cfg: CompressorConfig, *, input_dim: int) -> PerceiverCompressor:
        """Build from a :class:`CompressorConfig` and the encoder's width."""
        return cls(
            input_dim=input_dim,
            num_latents=cfg.num_latents,
            latent_dim=cfg.latent_dim,
            width=cfg.width,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            locality=cfg.locality,
        )

    def attention_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """The additive bias of the latents' attention to ``[latents; tokens]``.

        Args:
            mask: ``(B, S)`` bool, True at real tokens.

        Returns:
            ``(B, H, N, N + S)`` float32: 0 towards latents, the positional prior
            towards real tokens, -inf towards padding.
        """
        n = self.num_latents
        real = mask.float()
        count = real.sum(dim=1, keepdim=True).clamp_min(2.0)  # (B, 1)
        rel = (real.cumsum(dim=1) - 1) / (count - 1)  # (B, S) in [0, 1] at real tokens
        centre = (torch.arange(n, device=mask.device, dtype=torch.float32) + 0.5) / n  # (N,)
        dist = n * (rel[:, None, :] - centre[None, :, None])  # (B, N, S), in latent spans
        bias = -0.5 * self.slopes.to(mask.device)[None, :, None, None] * dist[:, None].pow(2)
        bias = bias.masked_fill(~mask[:, None, None, :], float("-inf"))  # (B, H, N, S)
        to_latents = torch.zeros(*bias.shape[:3], n, device=mask.device)
        return torch.cat((to_latents, bias), dim=-1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: states ``(B, S, input_dim)``; mask ``(B, S)`` bool, True at real tokens.

        Returns:
            ``(B, num_latents, latent_dim)``.
        """
        batch = states.shape[0]
        tokens = self.input_proj(states)  # (B, S, w)
        latents = repeat(self.latents, "n w -> b n w", b=batch).to(tokens.dtype)
        # The latents always see themselves, so a row whose tokens are all masked
        # still has keys to attend to (no NaN from an empty softmax).
        bias = self.attention_bias(mask)  # (B, H, N, N + S)
        for layer in self.layers:
            latents = layer(latents, tokens, bias)
        return self.output_proj(self.norm_out(latents))
