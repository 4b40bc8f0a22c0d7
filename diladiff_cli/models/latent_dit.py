"""The latent denoiser: an adaLN transformer over the latent sequence ``(N, D)``.

One network serves both continuous stages:

* the LaDiff prior (stage 2) conditions on the time t only and predicts, depending
  on the recipe, the clean latent, the noise or the velocity
  (:mod:`diladiff_cli.diffusion.flow` turns any of them into a velocity);
* the DiLaDiff student (stage 3) also takes a second time r and conditions on
  (t, t - r), as MeanFlow implementations do. The (t - r) embedding's last layer is
  zero-initialised, so a student initialised from the teacher is exactly the teacher
  whatever r is, and at r = t it stays the teacher's instantaneous velocity.

The blocks are :class:`~diladiff_cli.models.dit.DiTBlock` (adaLN-zero, gated
residuals, fp32 LayerNorm, rotary attention over the latent index): attention goes
through :func:`diladiff_cli.models.dit.attention`, so forward-mode AD works inside
:func:`~diladiff_cli.models.dit.math_attention`. Latents are N distinct slots of the
compressor, so each slot also gets a learned absolute embedding. The module has no
buffers (see ``LatentDiT.__init__``), and its LayerNorm is written with plain ops
(:class:`LayerNorm`), so that TVM can back-propagate through a JVP under DDP.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diladiff_cli.config.models import LatentDiTConfig
from diladiff_cli.models.dit import DiTBlock, FinalLayer, RotaryEmbedding, TimestepEmbedder

# Times live in [0, 1]; the sinusoidal embedder's fastest frequency is 1 rad per unit,
# so t is scaled as DiT scales its 0..1000 timesteps.
TIME_SCALE = 1000.0


class LayerNorm(nn.Module):
    """LayerNorm without bias, in (at least) fp32, written out with plain ops, times ``weight``.

    Same parameters and values as :class:`diladiff_cli.models.dit.LayerNorm`, but not
    through ``F.layer_norm``: in torch 2.13 the backward of its forward-mode derivative is
    wrong (an autograd gradient through ``torch.func.jvp`` disagrees with finite
    differences; plain ops agree), and TVM back-propagates through the JVP.
    """

    eps = 1e-5

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            centred = xf - xf.mean(dim=-1, keepdim=True)
            xf = centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf * self.weight


class LatentDiT(nn.Module):
    """adaLN transformer: noisy latents and time(s) -> ``(B, N, D)`` raw prediction.

    Args:
        num_latents: N.
        latent_dim: D.
        hidden: width.
        depth: blocks.
        heads: attention heads.
        cond_dim: conditioning width.
        dropout: residual dropout.
        two_times: take r and condition on (t, t - r) (the student).
    """

    def __init__(
        self,
        *,
        num_latents: int,
        latent_dim: int,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        cond_dim: int = 128,
        dropout: float = 0.0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        self.config = LatentDiTConfig(
            num_latents=num_latents,
            latent_dim=latent_dim,
            hidden=hidden,
            depth=depth,
            heads=heads,
            cond_dim=cond_dim,
            dropout=dropout,
            two_times=two_times,
        )
        self.proj_in = nn.Linear(latent_dim, hidden)
        self.pos_embed = nn.Parameter(torch.randn(num_latents, hidden) * 0.02)
        self.t_embed = TimestepEmbedder(cond_dim=cond_dim)
        self.dt_embed = TimestepEmbedder(cond_dim=cond_dim) if two_times else None
        if self.dt_embed is not None:
            # Zero last layer: the (t - r) branch adds nothing until it is trained.
            nn.init.zeros_(self.dt_embed.mlp[2].weight)
            nn.init.zeros_(self.dt_embed.mlp[2].bias)
        # The rotary table is a constant of the shape, kept as a plain attribute, not a
        # buffer: DDP broadcasts buffers in its forward, an in-place copy that
        # torch.func.jvp forbids (TVM takes its JVP through the DDP wrapper).
        self._rotary = RotaryEmbedding(head_dim=hidden // heads)(num_latents, torch.device("cpu"))
        self.blocks = nn.ModuleList(
            DiTBlock(hidden=hidden, heads=heads, cond_dim=cond_dim, dropout=dropout)
            for _ in range(depth)
        )
        # adaLN LayerNorm + zero-initialised linear map back to the latent width.
        self.head = FinalLayer(hidden=hidden, vocab_size=latent_dim, cond_dim=cond_dim)
        # The JVP-safe norm in place of F.layer_norm (same parameter, same value; see LayerNorm).
        for block in self.blocks:
            block.norm1, block.norm2 = LayerNorm(dim=hidden), LayerNorm(dim=hidden)
        self.head.norm_final = LayerNorm(dim=hidden)

    @classmethod
    def from_config(cls, cfg: LatentDiTConfig) -> LatentDiT:
        """Build from a :class:`LatentDiTConfig`."""
        return cls(**dataclasses.asdict(cfg))

    def condition(self, t: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` times -> ``(B, cond_dim)`` conditioning silu(emb(t) [+ emb'(t - r)]).

        Args:
            t: ``(B,)`` current time.
            r: ``(B,)`` second time (student only); None means r = t.
        """
        c = self.t_embed(t * TIME_SCALE)
        if self.dt_embed is not None:
            gap = torch.zeros_like(t) if r is None else t - r
            c = c + self.dt_embed(gap * TIME_SCALE)
        elif r is not None:
            raise ValueError("this LatentDiT takes one time (two_times=False): r must be None")
        return F.silu(c)

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw prediction.

        Args:
            z: ``(B, N, D)`` noisy latents.
            t: ``(B,)`` times in [0, 1].
            r: ``(B,)`` second times (student only; None means r = t).

        Returns:
            ``(B, N, D)``: what the network predicts (clean latent, noise, velocity
            or average velocity, in the parameterisation of its process).
        """
        h = self.proj_in(z) + self.pos_embed  # (B, N, hidden)
        c = self.condition(t, r)  # (B, cond)
        rotary = tuple(x.to(z.device) for x in self._rotary)  # (cos, sin), each (N, head_dim)
        for block in self.blocks:
            h = block(h, c, rotary)
        return self.head(h, c)
