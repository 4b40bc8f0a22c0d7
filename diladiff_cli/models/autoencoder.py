"""The DiLaDiff autoencoder: frozen contextual encoder -> compressor -> z -> MDLM decoder.

* :class:`FrozenEncoder` wraps a pretrained ``transformers`` model (BERT). It is
  frozen and runs without gradients; it is deliberately *not* a submodule of
  :class:`Autoencoder`, so the checkpoint, the optimizer, EMA and DDP never see its
  weights (it is reloaded from its name).
* :class:`LatentDecoder` is the MDLM :class:`~diladiff_cli.models.dit.DiT` with
  zero-initialised cross-attention layers inserted after chosen blocks. Zero
  initialisation makes it equal to the base DiT at step 0 for any z; with z = None
  (or the zero null latent) the cross-attention is skipped (contributes exactly 0),
  so it is the plain DiT at any step.
* :class:`TopicEmbedding` is the perfect-latent bound's compressor (oracle corpus): a
  document's topic -> its own N latents, a learned table, so z is the topic and
  nothing else.
* :class:`Autoencoder` is what ``train-ae`` trains: the per-dimension statistics of
  the encoder states (buffers), the compressor, the latent normalisation (and its
  statistics, buffers), the null latent and the decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diladiff_cli.config.models import LatentNorm, NullLatent
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.perceiver import (
    Attention,
    PerceiverCompressor,
    RMSNorm,
    locality_slopes,
)


class FrozenEncoder(nn.Module):
    """A frozen pretrained encoder returning per-token hidden states.

    Args:
        model: a ``transformers`` encoder (``AutoModel``) returning hidden states.
        layer: which hidden state to return, an index into ``(embeddings, layer 1,
            ..., layer n)``; -1 is the last layer.
    """

    def __init__(self, *, model: nn.Module, layer: int = -1) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        config = model.config
        n = int(config.num_hidden_layers)
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer {layer} is out of range for an encoder of {n} layers")
        self.layer = layer
        self.hidden_size = int(config.hidden_size)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        self._last = layer in (-1, n)
        # A middle layer of a BERT-style encoder: the layers above it never run (its
        # output is then the last hidden state, the same numbers at a fraction of the cost).
        keep = layer % (n + 1)
        stack = getattr(getattr(model, "encoder", None), "layer", None)
        if not self._last and keep > 0 and isinstance(stack, nn.ModuleList):
            model.encoder.layer = stack[:keep]
            self._last = True

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always eval mode: the encoder is frozen, its dropout stays off."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: ids ``(B, S)`` long; mask ``(B, S)`` bool, True at real tokens.

        Returns:
            ``(B, S, H)`` float32 hidden states (no gradient).
        """
        out = self.model(
            input_ids=ids, attention_mask=mask.long(), output_hidden_states=not self._last
        )
        states = out.last_hidden_state if self._last else out.hidden_states[self.layer]
        return states.float()


class CrossAttentionLayer(nn.Module):
    """Residual cross-attention from the decoder's hidden state to the latents,
    zero-initialised: ``h + attn(norm(h) + pos, norm(z))`` starts as ``h`` exactly.

    The DiT has no absolute positions (rotary only, inside self-attention) and the
    latents none either, so the layer owns two learned positional codes that make the
    attention addressable by position: one added to the queries (per token position)
    and one to the keys (per latent). They touch neither the residual stream nor the
    values, so the identities hold: a zero z gives zero values (RMSNorm and the
    bias-free projections map 0 to 0), hence exactly ``h``; the zero null latent is
    the same as no latent.

    Args:
        hidden: the decoder's width d.
        latent_dim: D.
        num_latents: N.
        max_len: positions of the query code (the decoder's context length).
        heads: attention heads.
        locality: strength of the positional prior that points token position l of a
            block of length L at latent k near ``N * l / L`` (the compressor's latent k
            summarises that stretch of text, see :class:`PerceiverCompressor`): head h
            adds ``-slope_h * (N * (l + 1/2) / L - (k + 1/2))^2 / 2`` to its attention
            logits, ``slope_h = locality * 4^-h``, the last head unbiased. 0 switches
            it off. It only shapes where the layer looks, so the zero-init identities
            hold.
    """

    def __init__(
        self,
        *,
        hidden: int,
        latent_dim: int,
        num_latents: int,
        max_len: int,
        heads: int,
        locality: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.register_buffer("slopes", locality_slopes(locality, heads), persistent=False)
        self.local = locality > 0  # a Python flag: no host-device sync in forward
        self.norm = RMSNorm(dim=hidden)
        self.norm_z = RMSNorm(dim=latent_dim)
        self.attn = Attention(dim=hidden, context_dim=latent_dim, heads=heads, zero_init=True)
        self.query_pos = nn.Parameter(torch.randn(max_len, hidden))
        self.key_pos = nn.Parameter(torch.randn(num_latents, hidden) * hidden**-0.5)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Args: h ``(B, L, d)``, z ``(B, N, D)``.

        Returns:
            ``(B, L, d)``.
        """
        length = h.shape[1]
        if length > self.query_pos.shape[0]:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_len {self.query_pos.shape[0]}"
            )
        x = (self.norm(h) + self.query_pos[:length]).to(h.dtype)  # (B, L, d)
        bias = None
        if self.local:
            n = self.num_latents
            pos = (torch.arange(length, device=h.device, dtype=torch.float32) + 0.5) * n / length
            dist = pos[:, None] - (torch.arange(n, device=h.device, dtype=torch.float32) + 0.5)
            bias = (-0.5 * self.slopes[:, None, None] * dist.pow(2))[None]  # (1, H, L, N)
        out = self.attn(x, self.norm_z(z).to(x.dtype), bias, key_offset=self.key_pos)
        return h + out.to(h.dtype)


class LatentDecoder(nn.Module):
    """The MDLM DiT guided by a latent through inserted cross-attention layers.

    Args:
        dit: the (warm-started) MDLM backbone.
        latent_dim: D, width of the latents.
        num_latents: N, number of latents.
        cross_attn_after: 0-based indices of the blocks after which a cross-attention
            layer is inserted (e.g. ``(1, 3)`` for a 4-block DiT).
        heads: cross-attention heads (must divide the DiT's width).
        locality: the cross-attention's positional prior (see
            :class:`CrossAttentionLayer`; 0: off).
    """

    def __init__(
        self,
        *,
        dit: DiT,
        latent_dim: int,
        num_latents: int,
        cross_attn_after: tuple[int, ...],
        heads: int,
        locality: float = 0.0,
    ) -> None:
        super().__init__()
        depth, hidden = dit.config.depth, dit.config.hidden
        bad = [i for i in cross_attn_after if not 0 <= i < depth]
        if bad or len(set(cross_attn_after)) != len(cross_attn_after) or not cross_attn_after:
            raise ValueError(
                f"cross_attn_after {list(cross_attn_after)} must be distinct block indices in "
                f"[0, {depth - 1}] (the decoder has {depth} blocks)"
            )
        if hidden % heads:
            raise ValueError(f"the decoder width {hidden} is not divisible by {heads} heads")
        self.dit = dit
        self.cross_attn_after = tuple(sorted(cross_attn_after))
        self.cross_attn = nn.ModuleDict(
            {
                str(i): CrossAttentionLayer(
                    hidden=hidden,
                    latent_dim=latent_dim,
                    num_latents=num_latents,
                    max_len=dit.config.max_len,
                    heads=heads,
                    locality=locality,
                )
                for i in self.cross_attn_after
            }
        )

    def forward(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        z: torch.Tensor | None,
        *,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw logits, as :meth:`DiT.forward`, guided by ``z``.

        Args:
            tokens: ``(B, L)`` long.
            sigma: ``(B,)`` noise level.
            z: ``(B, N, D)`` latents in decoder space, or None for no latent (the
                plain DiT).
            positions: optional ``(B, L)`` bool: logits only there.

        Returns:
            ``(B, L, V)`` logits, or ``(n, V)`` at the n True entries of ``positions``.
        """
        dit = self.dit
        h = dit.embed(tokens)  # (B, L, d)
        c = dit.condition(sigma)  # (B, cond)
        rotary = dit.rotary(tokens.shape[1], tokens.device)
        for i, block in enumerate(dit.blocks):
            h = block(h, c, rotary)
            if z is not None and str(i) in self.cross_attn:
                h = self.cross_attn[str(i)](h, z)
        return dit.head(h, c, positions)


class TopicEmbedding(nn.Module):
    """The perfect-latent bound's compressor: a topic's (normalised) one-hot -> its
    latents ``(N, D)``, a learned table (a linear map with bias, so an affine function
    of the topic only).

    The bound's "text" is one state, the topic's one-hot. Through the
    :class:`~diladiff_cli.models.perceiver.PerceiverCompressor` it was one key among the
    latents' own N, far from most latents' positional prior, so z came out nearly the
    same for every topic (the raw latents' between-topic spread under 1 % of their scale
    on the oracle default, measured) and the decoder learnt to ignore it. Here every
    entry of z is the topic's, at the scale of the decoder's cross-attention input.

    Args:
        num_topics: K, the width of the one-hot states.
        num_latents: N.
        latent_dim: D.
    """

    def __init__(self, *, num_topics: int, num_latents: int, latent_dim: int) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.table = nn.Linear(num_topics, num_latents * latent_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: states ``(B, 1, K)`` (normalised topic one-hots), mask ``(B, 1)`` (unused:
        one state a block, always real).

        Returns:
            ``(B, N, D)``.
        """
        del mask
        return self.table(states[:, 0]).view(states.shape[0], self.num_latents, self.latent_dim)


@dataclass
class Corruption:
    """Training-time regularisation of one micro-batch, drawn by the objective.

    Every field is optional; None means "not applied". Rows that an augmentation
    does not select carry neutral values (scale 0, keep everything).

    Attributes:
        state_scale: ``(B,)`` s in [0, 1): states become ``sqrt(1 - s^2) h + s noise``.
        state_noise: ``(B, S, H)`` standard normal noise for the states.
        state_keep: ``(B, S)`` bool, False at token positions hidden from the compressor.
        latent_keep: ``(B, N, D)`` bool, False at latent entries set to 0.
        null: ``(B,)`` bool, True where the whole z is replaced by the null latent.
    """

    state_scale: torch.Tensor | None = None
    state_noise: torch.Tensor | None = None
    state_keep: torch.Tensor | None = None
    latent_keep: torch.Tensor | None = None
    null: torch.Tensor | None = None


class Autoencoder(nn.Module):
    """Compressor + decoder, with the statistics that turn encoder states and latents
    into unit-scale data (buffers, saved with the checkpoint).

    The frozen encoder is not part of it: callers run it and pass its states.

    Args:
        encoder_dim: H, the encoder's hidden size.
        compressor: states -> raw latents (a Perceiver; for the bound, a topic table).
        decoder: the latent-guided MDLM.
        latent_norm: how z is normalised: ``"none"``; ``"l2"`` (each latent vector
            scaled to norm sqrt(D), LD4LG); ``"stats"`` (per-entry mean/std measured
            after training, :meth:`set_latent_stats`; identity until then).
        null_latent: ``"zero"`` (no latent: exactly the plain DiT) or ``"learned"``
            (a trained ``(N, D)`` parameter).
    """

    def __init__(
        self,
        *,
        encoder_dim: int,
        compressor: PerceiverCompressor | TopicEmbedding,
        decoder: LatentDecoder,
        latent_norm: LatentNorm = "none",
        null_latent: NullLatent = "zero",
    ) -> None:
        super().__init__()
        n, d = compressor.num_latents, compressor.latent_dim
        self.latent_norm = latent_norm
        self.null_latent = null_latent
        self.compressor = compressor
        self.decoder = decoder
        # Per-dimension statistics of the encoder states (identity until measured).
        self.register_buffer("state_mean", torch.zeros(encoder_dim))
        self.register_buffer("state_std", torch.ones(encoder_dim))
        # Per-entry statistics of the raw latents (latent_norm "stats"; identity until set).
        self.register_buffer("latent_mean", torch.zeros(n, d))
        self.register_buffer("latent_std", torch.ones(n, d))
        self.null = nn.Parameter(torch.zeros(n, d)) if null_latent == "learned" else None

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(N, D)`` of one latent."""
        return self.compressor.num_latents, self.compressor.latent_dim

    def set_state_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-dimension mean and std ``(H,)`` of the encoder states."""
        self.state_mean.copy_(mean)
        self.state_std.copy_(std)

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-entry mean and std ``(N, D)`` of the raw latents."""
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def raw_latents(
        self, states: torch.Tensor, mask: torch.Tensor, corruption: Corruption | None = None
    ) -> torch.Tensor:
        """Normalised states -> compressor output, before the latent normalisation.

        Args:
            states: ``(B, S, H)`` raw encoder states.
            mask: ``(B, S)`` bool, True at real tokens.
            corruption: training-time augmentation of the states, or None.

        Returns:
            ``(B, N, D)``.
        """
        h = (states - self.state_mean) / self.state_std
        if corruption is not None and corruption.state_noise is not None:
            s = corruption.state_scale[:, None, None]  # (B, 1, 1)
            h = torch.sqrt(1 - s**2) * h + s * corruption.state_noise
        if corruption is not None and corruption.state_keep is not None:
            mask = mask & corruption.state_keep
        return self.compressor(h, mask)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> z, the unit-scale latents the prior models ``(B, N, D)``."""
        if self.latent_norm == "l2":
            d = raw.shape[-1]
            return raw * (math.sqrt(d) / raw.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        if self.latent_norm == "stats":
            return (raw - self.latent_mean) / self.latent_std
        return raw

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """z -> what the decoder consumes (inverse of the "stats" normalisation)."""
        if self.latent_norm == "stats":
            return z * self.latent_std + self.latent_mean
        return z

    def encode(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Clean encoding: encoder states ``(B, S, H)`` and mask -> z ``(B, N, D)``."""
        return self.normalize(self.raw_latents(states, mask))

    def null_latents(self, batch: int, *, device: torch.device) -> torch.Tensor | None:
        """The null latent in decoder space, ``(B, N, D)``; None for the zero null
        (no cross-attention at all, which is the same function)."""
        if self.null is None:
            return None
        return self.null.expand(batch, -1, -1).to(device)

    def decode_logits(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        z: torch.Tensor | None,
        *,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder logits given normalised latents z ``(B, N, D)`` or None (null latent)."""
        zd = (
            self.denormalize(z)
            if z is not None
            else self.null_latents(tokens.shape[0], device=tokens.device)
        )
        return self.decoder(tokens, sigma, zd, positions=positions)

    def forward(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        *,
        states: torch.Tensor,
        state_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        corruption: Corruption | None = None,
    ) -> torch.Tensor:
        """Encode the clean text's states, corrupt as asked, decode the noisy tokens.

        One call for the whole path, so DDP sees every trained parameter in its
        forward.

        Args:
            tokens: ``(B, L)`` noisy tokens x_t (decoder view).
            sigma: ``(B,)`` noise levels.
            states: ``(B, S, H)`` frozen encoder states of the clean text.
            state_mask: ``(B, S)`` bool, True at real encoder tokens.
            positions: optional ``(B, L)`` bool: logits only there.
            corruption: augmentations and latent dropout (training), or None.

        Returns:
            Logits as :meth:`LatentDecoder.forward`.
        """
        z = self.normalize(self.raw_latents(states, state_mask, corruption))  # (B, N, D)
        if corruption is not None and corruption.latent_keep is not None:
            z = z * corruption.latent_keep
        zd = self.denormalize(z)
        if corruption is not None and corruption.null is not None:
            drop = corruption.null[:, None, None]  # (B, 1, 1)
            # where() keeps the learned null in the graph even when no row drops
            # (DDP then never sees an unused parameter); the zero null is exactly
            # "no cross-attention" (see CrossAttentionLayer).
            null = self.null.to(zd.dtype) if self.null is not None else torch.zeros_like(zd[0])
            zd = torch.where(drop, null, zd)
        return self.decoder(tokens, sigma, zd, positions=positions)
