"""Masked diffusion: schedule, SUBS, the NELBO objective and the samplers."""

from __future__ import annotations

import math

import pytest
import torch

from diladiff_cli.diffusion.masked import (
    LogLinearSchedule,
    MaskedDiffusionLoss,
    TokenBatch,
    mask_tokens,
    sample_masked,
    subs_log_probs,
)
from diladiff_cli.models.dit import DiT
from diladiff_cli.objective import StepContext

V, MASK = 64, 63  # the mask is the last id, as in MDLM (50257 of 50258)
SCHEDULE = LogLinearSchedule()


def ctx_for(index: list[int], *, global_batch: int, seed: int = 0, step: int = 0) -> StepContext:
    return StepContext(
        seed=seed,
        step=step,
        index=torch.tensor(index),
        global_batch=global_batch,
        device=torch.device("cpu"),
    )


def tiny_dit(seed: int = 0, *, randomize: bool = False) -> DiT:
    torch.manual_seed(seed)
    model = DiT(vocab_size=V, hidden=32, depth=2, heads=4, cond_dim=16, max_len=32, dropout=0.0)
    if randomize:  # the zero-init layers would make every prediction uniform
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "adaLN_modulation" in name or name.startswith("output_layer.linear"):
                    p.normal_(0, 0.3)
    return model.eval()


def random_tokens(b: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK, (b, length), generator=torch.Generator().manual_seed(seed))


# --- schedule and forward process --------------------------------------------------


def test_schedule_identities():
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64, requires_grad=True)
    alpha = SCHEDULE.alpha(t)
    (d_alpha,) = torch.autograd.grad(alpha.sum(), t)
    torch.testing.assert_close(-d_alpha / (1 - alpha), 1 / t)  # -alpha'/(1-alpha) = 1/t
    torch.testing.assert_close(SCHEDULE.loss_weight(t), 1 / t)
    torch.testing.assert_close(SCHEDULE.mask_prob(t), 1 - alpha)
    torch.testing.assert_close(torch.exp(-SCHEDULE.sigma(t)), alpha)
    assert SCHEDULE.alpha(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(1e-3)


def test_mask_rate_matches_schedule():
    g = torch.Generator().manual_seed(0)
    tokens = random_tokens(64, 4096)
    for t_value in (0.05, 0.3, 0.9):
        t = torch.full((64,), t_value)
        x_t, mask = mask_tokens(
            tokens, t, torch.rand(tokens.shape, generator=g), schedule=SCHEDULE, mask_id=MASK
        )
        p = (1 - SCHEDULE.eps) * t_value
        n = tokens.numel()
        assert abs(mask.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
        assert torch.equal(x_t == MASK, mask) and torch.equal(x_t[~mask], tokens[~mask])


def test_antithetic_times_cover_every_stratum():
    loss = MaskedDiffusionLoss(schedule=SCHEDULE, mask_id=MASK)
    t = loss.sample_time(ctx_for(list(range(16)), global_batch=16))
    r = (t - SCHEDULE.eps) / (1 - SCHEDULE.eps)
    strata = torch.sort((r * 16).floor().long()).values
    assert torch.equal(strata, torch.arange(16))


# --- SUBS and the loss -------------------------------------------------------------


def test_subs_never_predicts_mask():
    logits = torch.randn(5, 7, V) * 3
    logits[..., MASK] = 100.0  # even a huge mask logit gets no mass
    log_p = subs_log_probs(logits.bfloat16(), MASK)
    assert log_p.dtype == torch.float32
    assert torch.isneginf(log_p[..., MASK]).all()
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(5, 7))
    assert logits[..., MASK].eq(100.0).all()  # input untouched


def test_untrained_dit_nelbo_is_about_log_vocab():
    model = tiny_dit()
    loss_fn = MaskedDiffusionLoss(schedule=SCHEDULE, mask_id=MASK)
    values, fracs = [], []
    for step in range(8):
        batch = TokenBatch(tokens=random_tokens(32, 128, seed=step))
        out = loss_fn(model, batch, ctx_for(list(range(32)), global_batch=32, step=step))
        values.append(out.loss.item())
        fracs.append(out.metrics["masked_frac"])
        assert out.metrics["nelbo"] == pytest.approx(out.loss.item())
    nelbo = sum(values) / len(values)
    # Zero output layer -> SUBS is uniform over V - 1 tokens -> E[NELBO] = (1 - eps) ln(V - 1).
    assert nelbo == pytest.approx((1 - SCHEDULE.eps) * math.log(V - 1), rel=0.05)
    assert nelbo == pytest.approx(math.log(V), rel=0.05)
    assert sum(fracs) / len(fracs) == pytest.approx(0.5, abs=0.05)  # E[mask_prob(t)] ~ 1/2


class FullLogits(torch.nn.Module):
    """Computes logits everywhere, optionally corrupts the unmasked positions, then selects."""

    def __init__(self, model: DiT, corrupt: bool):
        super().__init__()
        self.model, self.corrupt = model, corrupt

    def forward(self, x_t, sigma, *, positions):
        full = self.model(x_t, sigma)  # (B, L, V)
        if self.corrupt:
            noise = torch.randn(full.shape, generator=torch.Generator().manual_seed(9)) * 50
            full = torch.where(positions[..., None], full, noise)
        self.full = full
        return full[positions]


def test_loss_ignores_unmasked_positions_and_matches_the_formula():
    model = tiny_dit(randomize=True)
    batch = TokenBatch(tokens=random_tokens(4, 24))
    loss_fn = MaskedDiffusionLoss(schedule=SCHEDULE, mask_id=MASK)
    clean = FullLogits(model, corrupt=False)
    base = loss_fn(clean, batch, ctx_for([0, 1, 2, 3], global_batch=4)).loss
    corrupted = loss_fn(
        FullLogits(model, corrupt=True), batch, ctx_for([0, 1, 2, 3], global_batch=4)
    )
    torch.testing.assert_close(corrupted.loss, base)
    # Positions path == full output, and the value is the weighted masked CE over B*L.
    direct = loss_fn(model, batch, ctx_for([0, 1, 2, 3], global_batch=4)).loss
    torch.testing.assert_close(direct, base, atol=1e-5, rtol=1e-5)
    ctx = ctx_for([0, 1, 2, 3], global_batch=4)
    t = loss_fn.sample_time(ctx)
    x_t, mask = mask_tokens(batch.tokens, t, ctx.uniform(24), schedule=SCHEDULE, mask_id=MASK)
    ce = -subs_log_probs(clean.full, MASK).gather(-1, batch.tokens[..., None]).squeeze(-1)
    expected = (ce * mask / t[:, None]).sum() / batch.tokens.numel()
    torch.testing.assert_close(base, expected, atol=1e-5, rtol=1e-5)


def test_loss_is_independent_of_micro_batching():
    model = tiny_dit(randomize=True)
    tokens = random_tokens(8, 16)
    loss_fn = MaskedDiffusionLoss(schedule=SCHEDULE, mask_id=MASK)
    whole = loss_fn(model, TokenBatch(tokens=tokens), ctx_for(list(range(8)), global_batch=8))
    halves = [
        loss_fn(
            model,
            TokenBatch(tokens=tokens[i : i + 4]),
            ctx_for(list(range(i, i + 4)), global_batch=8),
        )
        for i in (0, 4)
    ]
    torch.testing.assert_close(
        (halves[0].loss + halves[1].loss) / 2, whole.loss, atol=1e-6, rtol=1e-5
    )
    # Interleaved split across two "processes" too.
    odd_even = [
        loss_fn(
            model, TokenBatch(tokens=tokens[i::2]), ctx_for(list(range(i, 8, 2)), global_batch=8)
        )
        for i in (0, 1)
    ]
    torch.testing.assert_close(
        (odd_even[0].loss + odd_even[1].loss) / 2, whole.loss, atol=1e-6, rtol=1e-5
    )


def test_loss_backpropagates():
    model = tiny_dit()
    model.train()
    out = MaskedDiffusionLoss(schedule=SCHEDULE, mask_id=MASK)(
        model, TokenBatch(tokens=random_tokens(4, 16)), ctx_for([0, 1, 2, 3], global_batch=4)
    )
    out.loss.backward()
    assert model.output_layer.linear.weight.grad.abs().sum() > 0


# --- samplers ----------------------------------------------------------------------


class Recorder:
    """A model_fn with fixed per-position logits that records every input it sees."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # (L, V)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == tokens.shape[:1]
        self.inputs.append(tokens.clone())
        return self.logits.expand(tokens.shape[0], *self.logits.shape)


def random_logits(length: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(length, V, generator=torch.Generator().manual_seed(seed)) * scale


def sample(model_fn, **kwargs):
    defaults = dict(
        batch_size=3,
        seq_len=16,
        mask_id=MASK,
        steps=16,
        schedule=SCHEDULE,
        generator=torch.Generator().manual_seed(0),
        device="cpu",
    )
    return sample_masked(model_fn, **{**defaults, **kwargs})


def assert_unmasked_never_change(history: list[torch.Tensor], final: torch.Tensor) -> None:
    for before, after in zip(history, history[1:] + [final], strict=True):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_sampler_with_cache_needs_at_most_steps_passes(selection):
    fn = Recorder(random_logits(16))
    out = sample(fn, selection=selection, steps=16, cache=True)
    assert out.tokens.shape == (3, 16) and out.steps == 16
    assert not (out.tokens == MASK).any()
    assert out.forward_passes == len(fn.inputs) <= 16
    assert len(out.unmasked_per_step) == 16
    assert_unmasked_never_change(fn.inputs, out.tokens)


def test_cache_changes_nothing_but_the_pass_count():
    logits = random_logits(16)
    cached = sample(Recorder(logits), steps=64, cache=True)
    uncached = sample(Recorder(logits), steps=64, cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    # Without cache: one pass per step until no mask is left (later steps are no-ops).
    done = [sum(uncached.unmasked_per_step[:j]) == 3 * 16 for j in range(64)]
    assert uncached.forward_passes == (done.index(True) if any(done) else 64)
    assert uncached.forward_passes > cached.forward_passes
    # Time-conditioned networks never reuse.
    timed = sample(Recorder(logits), steps=64, cache=True, time_conditioned=True)
    assert timed.forward_passes == uncached.forward_passes


def test_confidence_unmasks_exactly_k_per_step():
    for length, steps in ((16, 5), (16, 16), (10, 25)):
        fn = Recorder(random_logits(length))
        out = sample(fn, seq_len=length, steps=steps, selection="confidence", cache=False)
        k = [
            int(math.floor(length * j / steps + 0.5))
            - int(math.floor(length * (j - 1) / steps + 0.5))
            for j in range(1, steps + 1)
        ]
        assert sum(k) == length
        assert out.unmasked_per_step == [3 * kj for kj in k]
        # Seen from the network: the masked count drops by k_j between calls.
        masked_seen = [int((x == MASK).sum()) for x in fn.inputs]
        assert masked_seen == [3 * (length - sum(k[:j])) for j in range(steps) if k[j] > 0]
        assert out.forward_passes == sum(kj > 0 for kj in k)  # k_j = 0 steps are free
        assert_unmasked_never_change(fn.inputs, out.tokens)
        assert not (out.tokens == MASK).any()


def test_confidence_prefers_confident_positions():
    # Positions 0..7 are nearly certain, 8..15 uniform: with greedy draws the
    # first half of the unmasking must be the confident positions.
    logits = torch.zeros(16, V)
    logits[:8, 5] = 20.0
    out = sample(Recorder(logits), steps=2, selection="confidence", temperature=0.0, cache=False)
    assert out.unmasked_per_step == [24, 24]
    assert (out.tokens[:, :8] == 5).all()


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_low_temperature_or_small_top_p_gives_argmax(selection):
    logits = random_logits(16, seed=3)
    logits[:, MASK] = 50.0  # the mask must still never win
    best = subs_log_probs(logits, MASK).argmax(-1).expand(3, 16)
    for kwargs in (dict(temperature=1e-4), dict(temperature=0.0), dict(top_p=1e-6)):
        out = sample(Recorder(logits), selection=selection, **kwargs)
        assert torch.equal(out.tokens, best), kwargs


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)


def empirical(**kwargs) -> torch.Tensor:
    logits = torch.full((64, V), -1e4)
    logits[:, :4] = PROBS.log().float()
    logits[:, MASK] = 10.0
    out = sample(
        Recorder(logits), batch_size=256, seq_len=64, steps=1, selection="confidence", **kwargs
    )
    assert out.tokens.max() < 4
    return torch.bincount(out.tokens.flatten(), minlength=4).double() / out.tokens.numel()


def test_draws_follow_the_tempered_and_nucleus_distribution():
    tol = 0.012  # > 4 standard deviations with 16384 draws
    torch.testing.assert_close(empirical(), PROBS, atol=tol, rtol=0)
    tempered = PROBS**2 / (PROBS**2).sum()  # temperature 1/2 squares the probabilities
    torch.testing.assert_close(empirical(temperature=0.5), tempered, atol=tol, rtol=0)
    nucleus = torch.tensor([0.5, 0.3, 0.0, 0.0], dtype=torch.float64) / 0.8  # top_p 0.6 keeps 2
    torch.testing.assert_close(empirical(top_p=0.6), nucleus, atol=tol, rtol=0)


def test_random_selection_unmasks_at_the_schedule_rate():
    # One step from t = 1 to s = 1/2 unmasks each token w.p. (t - s) / t = 1/2.
    fn = Recorder(random_logits(64))
    out = sample(fn, batch_size=64, seq_len=64, steps=2, final_eps=0.0, cache=False)
    n = 64 * 64
    assert abs(out.unmasked_per_step[0] / n - 0.5) < 4 * math.sqrt(0.25 / n)


def test_sampler_is_deterministic_given_the_generator():
    model = tiny_dit(randomize=True)

    def model_fn(x, sigma):
        return model(x, sigma)

    runs = [
        sample(model_fn, generator=torch.Generator().manual_seed(seed), steps=8, top_p=0.9)
        for seed in (7, 7, 8)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].forward_passes == runs[1].forward_passes
    assert not torch.equal(runs[0].tokens, runs[2].tokens)
    assert not (runs[0].tokens == MASK).any()


def test_final_pass_fills_leftover_masks_with_argmax():
    logits = random_logits(16, seed=5)
    # final_eps = 1 and steps = 1: the only step unmasks w.p. (1 - 1) / 1 = 0.
    fn = Recorder(logits)
    out = sample(fn, steps=1, final_eps=1.0, cache=True)
    assert out.unmasked_per_step == [0]
    assert out.forward_passes == 1  # the final fill reused the step's logits
    assert torch.equal(out.tokens, subs_log_probs(logits, MASK).argmax(-1).expand(3, 16))
