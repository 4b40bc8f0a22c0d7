"""The DiT backbone: shapes, initialisation, attention paths, forward-mode AD."""

from __future__ import annotations

import pytest
import torch

from diladiff_cli.config import DiTConfig
from diladiff_cli.models import dit as dit_module
from diladiff_cli.models.dit import DiT, attention, math_attention

V, D, L, B = 50, 32, 16, 3


def tiny(**overrides) -> DiT:
    kwargs = dict(vocab_size=V, hidden=D, depth=2, heads=4, cond_dim=16, max_len=L, dropout=0.0)
    kwargs.update(overrides)
    return DiT(**kwargs)


def randomize_zero_init(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialised layers (adaLN, output) random values: at init every
    block is the identity and the logits are zero, which would hide most behaviour."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("output_layer.linear"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, L), generator=g), torch.rand(B, generator=g)


def run_blocks(model: DiT, h: torch.Tensor, c: torch.Tensor, rotary) -> torch.Tensor:
    for block in model.blocks:
        h = block(h, c, rotary)
    return h


def test_config_round_trip_and_bad_heads():
    cfg = DiTConfig(vocab_size=V, hidden=D, depth=2, heads=4, cond_dim=16, max_len=L)
    assert DiT.from_config(cfg).config == cfg
    with pytest.raises(ValueError, match="heads"):
        DiT(vocab_size=V, hidden=30, heads=4)


def test_shapes_and_positions_equal_gathering_full_output():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny()).eval()
    tokens, sigma = inputs()
    full = model(tokens, sigma)
    assert full.shape == (B, L, V)

    positions = torch.rand(B, L, generator=torch.Generator().manual_seed(1)) < 0.4
    part = model(tokens, sigma, positions=positions)
    assert part.shape == (int(positions.sum()), V)
    torch.testing.assert_close(part, full[positions], atol=1e-5, rtol=1e-5)
    # Empty selection: no rows, still a valid call.
    assert model(tokens, sigma, positions=torch.zeros(B, L, dtype=torch.bool)).shape == (0, V)


def test_positions_use_each_rows_own_conditioning():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny(time_conditioning=True)).eval()
    tokens, _ = inputs()
    sigma = torch.tensor([0.1, 2.0, 5.0])
    positions = torch.zeros(B, L, dtype=torch.bool)
    positions[:, 3] = True  # one row per example, each must use its own c
    torch.testing.assert_close(
        model(tokens, sigma, positions=positions), model(tokens, sigma)[:, 3], atol=1e-5, rtol=1e-5
    )


def test_zero_init_output_gives_zero_logits_and_identity_blocks():
    torch.manual_seed(0)
    model = tiny(dropout=0.1).train()
    tokens, sigma = inputs()
    assert torch.count_nonzero(model(tokens, sigma)) == 0
    h = model.embed(tokens)
    c = model.condition(sigma)
    assert torch.linalg.vector_norm(c) > 0  # sigma zeroed but c is not zero
    torch.testing.assert_close(run_blocks(model, h, c, model.rotary(L, h.device)), h)


def test_rotary_makes_attention_position_dependent():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny()).eval()
    tokens, sigma = inputs()
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(3))
    h, c = model.embed(tokens), model.condition(sigma)

    # Without positions (identity rotation) attention is permutation-equivariant...
    identity = (torch.ones(L, D // 4), torch.zeros(L, D // 4))
    out = run_blocks(model, h, c, identity)
    out_perm = run_blocks(model, h[:, perm], c, identity)
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)

    # ...and the rotary embedding breaks that, by a clear margin.
    rotary = model.rotary(L, h.device)
    out = run_blocks(model, h, c, rotary)
    out_perm = run_blocks(model, h[:, perm], c, rotary)
    gap = (out_perm - out[:, perm]).abs().mean() / out.abs().mean()
    assert gap > 0.01


def test_rotary_pairs_halves_and_preserves_norm():
    model = tiny()
    cos, sin = model.rotary(L, torch.device("cpu"))
    dh = D // 4
    assert cos.shape == sin.shape == (L, dh)
    torch.testing.assert_close(cos[:, : dh // 2], cos[:, dh // 2 :])  # non-interleaved
    torch.testing.assert_close(cos[0], torch.ones(dh))  # position 0 is not rotated
    x = torch.randn(1, 1, L, dh)
    torch.testing.assert_close(
        dit_module.apply_rotary(x, (cos, sin)).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5
    )


def test_sdpa_and_math_attention_agree():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny()).eval()
    tokens, sigma = inputs()
    out_sdpa = model(tokens, sigma)
    with math_attention():
        assert dit_module._ATTENTION_BACKEND == "math"
        out_math = model(tokens, sigma)
    assert dit_module._ATTENTION_BACKEND == "sdpa"  # restored
    torch.testing.assert_close(out_math, out_sdpa, atol=1e-5, rtol=1e-5)

    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    torch.testing.assert_close(
        attention(q, k, v, backend="math"), attention(q, k, v, backend="sdpa"), atol=1e-5, rtol=1e-5
    )


# torch's forward-AD decompositions are jit-scripted on first use (torch-internal warning).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jvp_works_under_math_attention():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny(time_conditioning=True)).double().eval()
    tokens, sigma = inputs()
    sigma = sigma.double()
    h0 = model.embed(tokens).detach()
    rotary = model.rotary(L, h0.device)

    def f(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        c = model.condition(s)
        return model.head(run_blocks(model, h, c, rotary), c)

    tangent = (torch.randn_like(h0), torch.ones_like(sigma))
    with math_attention():
        out, jvp = torch.func.jvp(f, (h0, sigma), tangent)
    # Central finite difference in float64 along the same tangent.
    step = 1e-6
    with torch.no_grad():
        plus = f(h0 + step * tangent[0], sigma + step * tangent[1])
        minus = f(h0 - step * tangent[0], sigma - step * tangent[1])
    torch.testing.assert_close(out, f(h0, sigma))
    torch.testing.assert_close(jvp, (plus - minus) / (2 * step), atol=1e-6, rtol=1e-5)
    assert jvp.abs().max() > 1e-3  # not trivially zero


def test_eval_is_deterministic_and_dropout_acts_in_training():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny(dropout=0.3))
    tokens, sigma = inputs()
    model.eval()
    torch.testing.assert_close(model(tokens, sigma), model(tokens, sigma), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(tokens, sigma), model(tokens, sigma))
    model0 = randomize_zero_init(tiny(dropout=0.0)).train()
    torch.testing.assert_close(model0(tokens, sigma), model0(tokens, sigma), rtol=0, atol=0)


def test_time_conditioning_flag():
    torch.manual_seed(0)
    tokens, _ = inputs()
    s1, s2 = torch.full((B,), 0.1), torch.full((B,), 4.0)
    off = randomize_zero_init(tiny(time_conditioning=False)).eval()
    torch.testing.assert_close(off(tokens, s1), off(tokens, s2), rtol=0, atol=0)
    on = randomize_zero_init(tiny(time_conditioning=True)).eval()
    assert (on(tokens, s1) - on(tokens, s2)).abs().max() > 1e-3
