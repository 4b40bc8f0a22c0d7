"""Masked diffusion (MDLM): the noise process, the NELBO objective and samplers.

Network-agnostic: the objective calls ``model(x_t, sigma, positions=mask)`` and
the samplers call any ``model_fn(tokens, sigma) -> logits``. Conventions follow
MDLM (Sahoo et al. 2024), see ``shared/notes/anchors.md``: t = 1 is all mask,
alpha(t) is the probability that a token is still clean at time t, and the
network sees sigma(t) = -log alpha(t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import repeat
from torch import nn

from diladiff_cli.objective import LossOutput, StepContext

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(tokens (B, L) long, sigma (B,)) -> logits (B, L, V)``."""

# Rows per float64 categorical draw: bounds the (rows, V) float64 buffers
# (1024 x 50258 x 8 B = 0.4 GB each). A constant, so results never depend on it.
_DRAW_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class LogLinearSchedule:
    """MDLM's log-linear schedule, alpha(t) = 1 - (1 - eps) t on t in [0, 1].

    Attributes:
        eps: the clean probability left at t = 1; also the smallest training t.
    """

    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still clean at time t."""
        return 1 - (1 - self.eps) * t

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is masked at time t, 1 - alpha(t)."""
        return (1 - self.eps) * t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The total noise -log alpha(t) that MDLM feeds the network."""
        return -torch.log1p(-(1 - self.eps) * t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight of the masked cross-entropy, -alpha'(t) / (1 - alpha(t)).

        alpha'(t) = -(1 - eps) and 1 - alpha(t) = (1 - eps) t, so the weight is
        (1 - eps) / ((1 - eps) t) = 1 / t exactly (MDLM, continuous-time NELBO).
        """
        return 1 / t


def subs_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation: log-probabilities that never predict the mask.

    The mask logit is set to -inf and the log-softmax taken in float32. The other
    half of SUBS, carry-over of unmasked tokens, needs no code here: the loss only
    counts masked positions, and the samplers never change an unmasked token.

    Args:
        logits: ``(..., V)`` raw network output (any float dtype).
        mask_id: the mask token's id.

    Returns:
        ``(..., V)`` float32 log-probabilities, -inf at ``mask_id``.
    """
    index = torch.tensor([mask_id], device=logits.device)
    # Out of place: the caller's logits (and autograd's saved tensors) stay intact.
    return logits.float().index_fill(-1, index, float("-inf")).log_softmax(dim=-1)


@dataclass(frozen=True)
class TokenBatch:
    """A micro-batch of token sequences.

    Attributes:
        tokens: ``(B, L)`` long token ids (no mask tokens).
    """

    tokens: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        """The same batch on ``device``."""
        return TokenBatch(tokens=self.tokens.to(device, non_blocking=True))


def mask_tokens(
    tokens: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    schedule: LogLinearSchedule,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process q(x_t | x_0): mask each token independently w.p. 1 - alpha(t).

    Args:
        tokens: ``(B, L)`` clean tokens x_0.
        t: ``(B,)`` times.
        noise: ``(B, L)`` uniform [0, 1) draws.
        schedule: the noise schedule.
        mask_id: the mask token's id.

    Returns:
        ``(x_t, mask)``: ``(B, L)`` long noisy tokens and ``(B, L)`` bool, True where masked.
    """
    mask = noise < schedule.mask_prob(t)[:, None]
    return tokens.masked_fill(mask, mask_id), mask


class MaskedDiffusionLoss:
    """MDLM's continuous-time NELBO, an objective for the training loop.

    The loss is the per-token NELBO in nats: the sum over masked positions of
    -log p(x_0) times 1/t, divided by all B * L tokens of the micro-batch. All
    noise comes from the :class:`StepContext`, so the value does not depend on
    how the global batch is split over processes and micro-steps.

    Args:
        schedule: the noise schedule.
        mask_id: the mask token's id.
        antithetic: stratified times across the global batch (MDLM's default),
            which lowers the variance of the 1/t-weighted loss.
    """

    def __init__(self, *, schedule: LogLinearSchedule, mask_id: int, antithetic: bool = True):
        self.schedule = schedule
        self.mask_id = mask_id
        self.antithetic = antithetic

    def sample_time(self, ctx: StepContext) -> torch.Tensor:
        """``(B,)`` times in [eps, 1] for the micro-batch's examples."""
        if self.antithetic:
            # One shared offset, spread evenly over the global batch: t_i = (u + i / B) mod 1.
            index = ctx.index.to(ctx.device).float()
            r = (ctx.shared_uniform() + index / ctx.global_batch) % 1
        else:
            r = ctx.uniform()
        eps = self.schedule.eps
        return eps + (1 - eps) * r  # MDLM never trains below t = eps, where 1/t explodes

    def __call__(self, model: nn.Module, batch: TokenBatch, ctx: StepContext) -> LossOutput:
        """Loss of one micro-batch.

        Args:
            model: called as ``model(x_t (B, L), sigma (B,), positions=mask (B, L))``
                and returning ``(N, V)`` logits at the N masked positions.
            batch: the clean tokens.
            ctx: the step's deterministic noise.

        Returns:
            The loss and the metrics ``nelbo`` (equal to the loss) and
            ``masked_frac`` (fraction of masked tokens).
        """
        x0 = batch.tokens  # (B, L)
        n_tokens = x0.numel()
        t = self.sample_time(ctx).to(x0.device)  # (B,)
        noise = ctx.uniform(x0.shape[1]).to(x0.device)  # (B, L)
        x_t, mask = mask_tokens(x0, t, noise, schedule=self.schedule, mask_id=self.mask_id)

        logits = model(x_t, self.schedule.sigma(t), positions=mask)  # (N, V)
        log_p = subs_log_probs(logits, self.mask_id)
        nll = -log_p.gather(-1, x0[mask][:, None]).squeeze(-1)  # (N,)
        weight = repeat(self.schedule.loss_weight(t), "b -> b l", l=x0.shape[1])[mask]  # (N,)
        loss = (nll * weight).sum() / n_tokens

        # 0-d tensors, not floats: the loop converts them at log steps only (no host sync)
        metrics = {"nelbo": loss.detach(), "masked_frac": mask.float().mean()}
        return LossOutput(loss=loss, metrics=metrics)


@dataclass
class SampleOutput:
    """What a sampler returns.

    Attributes:
        tokens: ``(B, L)`` long samples, no mask token left.
        forward_passes: network evaluations made (cache hits and skipped steps
            not counted; the final argmax fill counted only when it ran one).
        steps: steps of the time grid.
        unmasked_per_step: ``(steps,)`` tokens unmasked at each step, summed over
            the batch; the final argmax fill is not included.
    """

    tokens: torch.Tensor
    forward_passes: int
    steps: int
    unmasked_per_step: list[int] = field(default_factory=list)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest top set with mass >= top_p (unnormalised)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # the top token always has 0 before it
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _draw(
    logits: torch.Tensor,
    *,
    mask_id: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One categorical draw per row, in float64.

    float64 because fp32 sampling over a 50k vocabulary lowers the effective
    temperature and flatters GenPPL (anchors.md). Inverse-CDF with one uniform
    per row: a zero-probability token (the mask, a token cut by top_p) can never
    be drawn, since its CDF step is empty.

    Args:
        logits: ``(N, V)`` raw logits.
        mask_id: never drawn.
        temperature: > 0 divides the logits; 0 takes the argmax.
        top_p: nucleus mass kept (1 keeps all).
        generator: source of the uniforms.

    Returns:
        ``(tokens, confidence)``: ``(N,)`` long draws and ``(N,)`` float64 probability
        of each draw under the model's SUBS distribution (temperature 1, no top_p).
    """
    n = logits.shape[0]
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=logits.device)
    index = torch.tensor([mask_id], device=logits.device)
    tokens, confidence = [], []
    for rows, u_rows in zip(logits.split(_DRAW_CHUNK_ROWS), u.split(_DRAW_CHUNK_ROWS), strict=True):
        rows = rows.double().index_fill(-1, index, float("-inf"))  # (n, V)
        if temperature == 0:
            tok = rows.argmax(dim=-1)
        else:
            probs = (rows / temperature).softmax(dim=-1)
            if top_p < 1:
                probs = _nucleus(probs, top_p)
            cdf = probs.cumsum(dim=-1)
            # u * total < total, so the search always lands on a token.
            target = (u_rows * cdf[:, -1])[:, None]
            tok = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        tokens.append(tok)
        confidence.append(rows.log_softmax(dim=-1).gather(-1, tok[:, None]).squeeze(-1).exp())
    return torch.cat(tokens), torch.cat(confidence)


def _round_half_up(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def _unmask_probability(schedule: LogLinearSchedule, t: float, s: float) -> float:
    """(alpha_s - alpha_t) / (1 - alpha_t): a masked token's chance to be unmasked from t to s."""
    alpha_t, alpha_s = schedule.alpha(torch.tensor([t, s], dtype=torch.float64)).tolist()
    return (alpha_s - alpha_t) / (1 - alpha_t)


def _unmask_at_random(
    x: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    p_unmask: float,
    draw_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """MDLM's ancestral step: each masked position is unmasked with probability
    ``p_unmask`` (a float64 coin), its value drawn from the model.

    Returns:
        ``(chosen (B, L) bool, candidates (B, L))``: the positions to unmask and the
        tokens to put there.
    """
    generator = draw_kwargs["generator"]
    coins = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    chosen = masked & (coins < p_unmask)  # (B, L)
    values, _ = _draw(logits[chosen], **draw_kwargs)  # (N,)
    return chosen, x.masked_scatter(chosen, values)


def _unmask_most_confident(
    x: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    k: int,
    draw_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a candidate at every masked position; keep the ``k`` per row whose candidate
    has the highest model probability.

    Returns:
        ``(chosen (B, L) bool, candidates (B, L))`` as :func:`_unmask_at_random`.
    """
    values, confidence = _draw(logits[masked], **draw_kwargs)  # (N,)
    candidates = x.masked_scatter(masked, values)
    score = torch.full(x.shape, float("-inf"), dtype=torch.float64, device=x.device)
    score = score.masked_scatter(masked, confidence)
    # Every row has exactly M - round(M (j-1) / T) >= k_j masked positions (all rows
    # start with the same M masked and lose k per step), so the top k are masked;
    # the `& masked` is a guard that never drops one.
    top = score.topk(k, dim=-1).indices  # (B, k)
    chosen = torch.zeros_like(masked).scatter(1, top, True) & masked
    return chosen, candidates


@torch.no_grad()
def sample_masked(
    model_fn: ModelFn,
    *,
    batch_size: int,
    seq_len: int,
    mask_id: int,
    steps: int,
    schedule: LogLinearSchedule,
    selection: Literal["random", "confidence"] = "random",
    temperature: float = 1.0,
    top_p: float = 1.0,
    cache: bool = True,
    generator: torch.Generator,
    device: torch.device | str,
    final_eps: float = 1e-5,
    time_conditioned: bool = False,
    fixed: torch.Tensor | None = None,
) -> SampleOutput:
    """Generate from all-mask sequences by iterative unmasking.

    The time grid is ``linspace(1, final_eps, steps + 1)``. Unmasked tokens are
    never changed and the mask token is never drawn. With ``fixed``, every sequence
    starts from the given tokens instead (prefix conditioning, infilling): they are
    never masked, so never changed, and only the M positions left masked are drawn.

    * ``"random"`` (MDLM's ancestral sampler): from t to s each masked token is
      unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t
      for the log-linear schedule, its value drawn from the model.
    * ``"confidence"``: step j unmasks exactly k_j = round(M j / T) - round(M (j-1) / T)
      tokens per sequence, M the masked positions at the start (L without ``fixed``;
      the k_j sum to M; k_j = 0 steps are skipped without a forward pass): a candidate
      is drawn at every masked position and the k_j with the highest model probability
      of their candidate are kept.

    Caching (MDLM): with ``cache`` and a network that ignores time, a step that
    follows a step which changed no token reuses the previous logits. After the
    last step, any position still masked takes the argmax of a final forward.

    Args:
        model_fn: ``(tokens (B, L) long, sigma (B,)) -> logits (B, L, V)``.
        batch_size: B.
        seq_len: L.
        mask_id: the mask token's id.
        steps: T, number of steps.
        schedule: the noise schedule (gives sigma and the unmasking probabilities).
        selection: which masked positions to unmask at each step.
        temperature: divides the logits before drawing; 0 draws the argmax.
        top_p: nucleus sampling mass (1 disables it).
        cache: reuse logits when the input did not change.
        generator: the only source of randomness; must live on ``device``.
        device: where tokens and noise live.
        final_eps: last time of the grid.
        time_conditioned: the network uses sigma, so its output can never be reused.
        fixed: ``(L,)`` long, the block every sequence starts from: a given token at
            each position to keep, ``mask_id`` at each position to draw. None: all L
            positions are drawn.

    Returns:
        The samples and the counts of steps and forward passes.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if selection not in ("random", "confidence"):
        raise ValueError(f"unknown selection {selection!r} (expected 'random' or 'confidence')")

    device = torch.device(device)
    if fixed is None:
        x = torch.full((batch_size, seq_len), mask_id, dtype=torch.long, device=device)
    elif fixed.shape != (seq_len,):
        raise ValueError(f"fixed must have shape ({seq_len},), got {tuple(fixed.shape)}")
    else:
        x = fixed.to(device=device, dtype=torch.long).expand(batch_size, seq_len).clone()
    free = int((x[0] == mask_id).sum())  # M: positions to draw, the same in every row
    grid = torch.linspace(1.0, final_eps, steps + 1, dtype=torch.float64).tolist()
    reuse = cache and not time_conditioned
    logits: torch.Tensor | None = None  # (B, L, V), valid for x unless stale
    stale = True
    forward_passes = 0
    unmasked_per_step: list[int] = []
    draw_kwargs = dict(mask_id=mask_id, temperature=temperature, top_p=top_p, generator=generator)

    def evaluate(t: float) -> torch.Tensor:
        nonlocal forward_passes, stale
        if logits is not None and reuse and not stale:
            return logits
        forward_passes += 1
        stale = False
        sigma = schedule.sigma(torch.full((batch_size,), t, device=device))  # (B,)
        return model_fn(x, sigma)

    for j in range(1, steps + 1):
        t, s = grid[j - 1], grid[j]
        masked = x == mask_id  # (B, L)
        k = _round_half_up(free * j, steps) - _round_half_up(free * (j - 1), steps)
        if not masked.any() or (selection == "confidence" and k == 0):
            unmasked_per_step.append(0)
            continue
        logits = evaluate(t)

        if selection == "random":
            p_unmask = _unmask_probability(schedule, t, s)
            chosen, candidates = _unmask_at_random(x, masked, logits, p_unmask, draw_kwargs)
        else:
            chosen, candidates = _unmask_most_confident(x, masked, logits, k, draw_kwargs)
        x = torch.where(chosen, candidates, x)
        n_unmasked = int(chosen.sum())
        unmasked_per_step.append(n_unmasked)
        stale = n_unmasked > 0  # evaluate() just refreshed or validly reused the logits

    remaining = x == mask_id
    if remaining.any():
        # MDLM's final noise removal: the argmax of SUBS, mask excluded.
        logits = evaluate(final_eps)
        best = subs_log_probs(logits[remaining], mask_id).argmax(dim=-1)  # (N,)
        x = x.masked_scatter(remaining, best)
    return SampleOutput(
        tokens=x,
        forward_passes=forward_passes,
        steps=steps,
        unmasked_per_step=unmasked_per_step,
    )
