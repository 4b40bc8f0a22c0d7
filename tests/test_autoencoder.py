"""Stage 1, the latent autoencoder: compressor, zero-init and null-latent identities,
augmentations, frozen encoder, train-ae end to end, reconstruction, bad input, CLI."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import safetensors.torch
import torch
from _ae_tiny import SEQ_LEN, ae_config, build_mdlm, randomize_zero_init

from diladiff_cli import hub
from diladiff_cli.ae import (
    AutoencoderLoss,
    build_autoencoder,
    load_autoencoder,
    load_base_decoder,
    set_trainable,
    train_ae,
)
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import AugmentConfig, TrainConfig
from diladiff_cli.diffusion.masked import LogLinearSchedule
from diladiff_cli.distributed import init_runtime
from diladiff_cli.encode import encode_texts
from diladiff_cli.encoder import CachedStates, TwoViewBlocks, load_encoder
from diladiff_cli.errors import DiladiffError
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.models.autoencoder import (
    Autoencoder,
    Corruption,
    CrossAttentionLayer,
    FrozenEncoder,
    LatentDecoder,
)
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.perceiver import PerceiverCompressor
from diladiff_cli.objective import StepContext
from diladiff_cli.sample import SampleSettings, Sources, generate
from diladiff_cli.structs import to_dict

pytest_plugins = ["_ae_tiny"]  # the tiny_env and trained_ae fixtures

CPU = torch.device("cpu")


def small_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    dit = DiT(vocab_size=40, hidden=32, depth=3, heads=2, cond_dim=16, max_len=16, dropout=0.0)
    randomize_zero_init(dit, seed)
    return dit.eval()


def inputs(batch: int = 3, length: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 40, (batch, length), generator=g)
    return tokens, torch.rand(batch, generator=g), torch.randn(batch, 4, 8, generator=g)


# ----------------------------------------------------------------------------- modules


def test_compressor_shape_for_any_length_and_ignores_padding():
    torch.manual_seed(0)
    comp = PerceiverCompressor(
        input_dim=24, num_latents=5, latent_dim=7, width=32, depth=2, heads=4
    ).eval()
    for length in (1, 3, 40, 300):
        states = torch.randn(2, length, 24)
        out = comp(states, torch.ones(2, length, dtype=torch.bool))
        assert out.shape == (2, 5, 7)
        assert torch.isfinite(out).all()
    # Padding is invisible: a 9-token text padded to 20 encodes as the bare 9 tokens.
    states = torch.randn(1, 9, 24)
    padded = torch.cat((states, torch.randn(1, 11, 24) * 100), dim=1)
    mask = torch.arange(20)[None] < 9
    torch.testing.assert_close(
        comp(padded, mask), comp(states, torch.ones(1, 9, dtype=torch.bool)), atol=1e-5, rtol=1e-5
    )
    # Every token hidden: the latents still attend to themselves (no NaN).
    assert torch.isfinite(comp(states, torch.zeros(1, 9, dtype=torch.bool))).all()


def test_zero_init_decoder_equals_base_mdlm_for_any_z():
    dit = small_dit()
    decoder = LatentDecoder(
        dit=dit, latent_dim=8, num_latents=4, cross_attn_after=(0, 2), heads=2, locality=1.0
    ).eval()
    tokens, sigma, z = inputs()
    base = dit(tokens, sigma)
    assert torch.equal(decoder(tokens, sigma, z), base)  # exactly, at step 0
    assert torch.equal(decoder(tokens, sigma, 1e3 * z), base)
    positions = tokens % 3 == 0
    assert torch.equal(
        decoder(tokens, sigma, z, positions=positions), dit(tokens, sigma, positions=positions)
    )


def test_null_latent_is_the_plain_dit_at_any_step():
    dit = small_dit()
    decoder = LatentDecoder(
        dit=dit, latent_dim=8, num_latents=4, cross_attn_after=(1, 2), heads=2, locality=1.0
    ).eval()
    randomize_zero_init(decoder.cross_attn, seed=3)  # as after training
    tokens, sigma, z = inputs()
    base = dit(tokens, sigma)
    assert not torch.allclose(decoder(tokens, sigma, z), base)  # the latent now matters
    assert torch.equal(decoder(tokens, sigma, None), base)
    # The zero null latent is exactly "no latent", even with trained cross-attention.
    assert torch.equal(decoder(tokens, sigma, torch.zeros_like(z)), base)

    ae = Autoencoder(
        encoder_dim=12,
        compressor=PerceiverCompressor(
            input_dim=12, num_latents=4, latent_dim=8, width=16, depth=1, heads=2
        ),
        decoder=decoder,
        latent_norm="stats",
    ).eval()
    ae.set_latent_stats(torch.randn(4, 8), torch.rand(4, 8) + 0.5)
    states, mask = torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    dropped = Corruption(null=torch.ones(3, dtype=torch.bool))
    assert torch.equal(ae(tokens, sigma, states=states, state_mask=mask, corruption=dropped), base)
    assert torch.equal(ae.decode_logits(tokens, sigma, None), base)


def test_cross_attention_locality_points_positions_at_their_latents():
    """Head 0 of a layer with the positional prior and no learned preference (zero codes,
    one shared key) puts position l on latent floor(l N / L); the last head is flat."""
    layer = CrossAttentionLayer(
        hidden=8, latent_dim=4, num_latents=4, max_len=16, heads=2, locality=4.0
    )
    seen = {}
    layer.attn.register_forward_pre_hook(lambda m, args: seen.update(bias=args[2]))
    with torch.no_grad():
        layer.query_pos.zero_()
        layer.key_pos.zero_()
        layer(torch.randn(1, 16, 8), torch.ones(1, 4, 4))
    bias = seen["bias"]  # (1, H, L, N)
    assert bias.shape == (1, 2, 16, 4)
    assert torch.equal(bias[0, 0].argmax(dim=-1), torch.arange(16) // 4)
    assert (bias[0, 1] == 0).all()


def test_learned_null_latent_replaces_z():
    dit = small_dit()
    decoder = LatentDecoder(
        dit=dit, latent_dim=8, num_latents=4, cross_attn_after=(0,), heads=2
    ).eval()
    randomize_zero_init(decoder.cross_attn, seed=3)
    comp = PerceiverCompressor(
        input_dim=12, num_latents=4, latent_dim=8, width=16, depth=1, heads=2
    )
    ae = Autoencoder(encoder_dim=12, compressor=comp, decoder=decoder, null_latent="learned").eval()
    with torch.no_grad():
        ae.null.normal_()
    tokens, sigma, _ = inputs()
    states, mask = torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    drop = torch.tensor([True, False, True])
    out = ae(tokens, sigma, states=states, state_mask=mask, corruption=Corruption(null=drop))
    null = ae.decode_logits(tokens, sigma, None)
    clean = ae(tokens, sigma, states=states, state_mask=mask)
    assert torch.equal(out[drop], null[drop]) and torch.equal(out[~drop], clean[~drop])


def test_latent_normalisations():
    comp = PerceiverCompressor(
        input_dim=12, num_latents=4, latent_dim=9, width=16, depth=1, heads=2
    )
    dec = LatentDecoder(
        dit=small_dit(), latent_dim=9, num_latents=4, cross_attn_after=(0,), heads=2
    )
    raw = torch.randn(5, 4, 9) * 3 + 1
    l2 = Autoencoder(encoder_dim=12, compressor=comp, decoder=dec, latent_norm="l2")
    torch.testing.assert_close(l2.normalize(raw).norm(dim=-1), torch.full((5, 4), 3.0))
    stats = Autoencoder(encoder_dim=12, compressor=comp, decoder=dec, latent_norm="stats")
    stats.set_latent_stats(raw.mean(0), raw.std(0))
    z = stats.normalize(raw)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.denormalize(z), raw, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- objective


def _parts(env, **augment):
    """Encoder, a fresh autoencoder around the tiny base MDLM, a batch, an objective."""
    cfg = ae_config(base=env.base, bert=env.bert, out=env.root / "unused.pt")
    encoder, tokenizer = load_encoder(cfg.encoder, device=CPU)
    base = load_base_decoder(cfg.decoder.base, env.info)
    torch.manual_seed(0)
    model = build_autoencoder(cfg, dit=base.dit, encoder_dim=encoder.hidden_size)
    data = TwoViewBlocks(
        data_dir=env.data.out,
        split="train",
        decoder_tokenizer=hub.load_tokenizer(env.info.tokenizer_dir),
        encoder_tokenizer=tokenizer,
        max_len=cfg.encoder.max_len,
    )
    objective = AutoencoderLoss(
        encoder=encoder,
        schedule=LogLinearSchedule(),
        mask_id=env.info.mask_id,
        augment=AugmentConfig(**augment),
        max_len=cfg.encoder.max_len,
    )
    return encoder, model, data.batch(np.arange(6)), objective


def _ctx(step: int = 0) -> StepContext:
    return StepContext(seed=0, step=step, index=torch.arange(6), global_batch=6, device=CPU)


def test_two_views_are_the_same_text(tiny_env):
    _, _, batch, _ = _parts(tiny_env)
    dec_tok = hub.load_tokenizer(tiny_env.info.tokenizer_dir)
    enc_tok = hub.load_tokenizer(str(tiny_env.bert))

    def letters(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    for i in range(6):
        text = dec_tok.decode(batch.tokens[i].tolist(), skip_special_tokens=True)
        enc_text = enc_tok.decode(batch.enc_ids[i][batch.enc_mask[i]], skip_special_tokens=True)
        assert letters(enc_text) and letters(text).startswith(
            letters(enc_text)
        )  # truncated: a prefix
    assert batch.tokens.shape == (6, SEQ_LEN) and batch.enc_ids.shape == batch.enc_mask.shape


def test_every_augmentation_is_off_at_eval(tiny_env):
    strong = dict(
        embed_noise=0.9,
        embed_noise_share=1.0,
        embed_mask=0.8,
        embed_mask_share=1.0,
        latent_mask=0.8,
        latent_mask_share=1.0,
        latent_dropout=1.0,
    )
    encoder, model, batch, noisy = _parts(tiny_env, **strong)
    randomize_zero_init(model.decoder.cross_attn, seed=2)  # make z matter
    clean = AutoencoderLoss(
        encoder=encoder,
        schedule=LogLinearSchedule(),
        mask_id=tiny_env.info.mask_id,
        augment=AugmentConfig(latent_dropout=0.0),
        max_len=48,
    )
    model.eval()
    with torch.no_grad():
        assert noisy(model, batch, _ctx()).loss == clean(model, batch, _ctx()).loss
        model.train()
        assert noisy(model, batch, _ctx()).loss != clean(model, batch, _ctx()).loss
    # The corruption drawn in training has the asked rates and shares.
    c = noisy.corruption(_ctx(), seq=40, hidden=32, latent_shape=(4, 8))
    assert c.null.all() and (c.state_scale == 0.9).all()
    assert 0.7 < 1 - c.state_keep.float().mean() < 0.9
    assert 0.7 < 1 - c.latent_keep.float().mean() < 0.9


def test_evaluation_reports_the_null_latent_nelbo_on_the_same_noise(tiny_env):
    _, model, batch, objective = _parts(tiny_env)
    model.eval()
    with torch.no_grad():
        fresh = objective(model, batch, _ctx()).metrics
        assert float(fresh["z_gain"]) == 0.0  # zero-init: z changes nothing yet, same masks
        randomize_zero_init(model.decoder.cross_attn, seed=2)
        out = objective(model, batch, _ctx()).metrics
        null = AutoencoderLoss(
            encoder=objective.encoder,
            schedule=LogLinearSchedule(),
            mask_id=tiny_env.info.mask_id,
            augment=objective.augment,
            max_len=48,
            latent="null",
        )(model, batch, _ctx())
    assert float(out["nelbo_null"]) == pytest.approx(float(null.metrics["nelbo"]), rel=1e-6)
    assert float(out["z_gain"]) != 0.0


def test_middle_layer_encoder_runs_only_the_layers_it_needs(tiny_env):
    from transformers import AutoModel

    full = AutoModel.from_pretrained(tiny_env.bert).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        want = full(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    for layer, runs in ((1, 1), (-2, 1), (2, 2), (-1, 2), (0, 2)):
        enc = FrozenEncoder(model=AutoModel.from_pretrained(tiny_env.bert), layer=layer)
        assert len(enc.model.encoder.layer) == runs, layer
        torch.testing.assert_close(enc(ids, mask), want.hidden_states[layer], rtol=0, atol=1e-6)


def test_encoder_is_frozen_and_gets_no_gradient(tiny_env):
    encoder, model, batch, objective = _parts(tiny_env, latent_dropout=0.0)
    randomize_zero_init(model.decoder.cross_attn, seed=2)
    model.train()
    objective(model, batch, _ctx()).loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert not encoder.model.training and not encoder.train().model.training
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in model.compressor.parameters()
        if p.requires_grad and p.dim() > 1
    )
    # The encoder's weights are not part of the trained module (nor its checkpoint).
    own = {id(p) for p in model.parameters()}
    assert not any(id(p) in own for p in encoder.parameters())


def test_cached_states_run_the_encoder_once_per_block(tiny_env):
    encoder, _, _, _ = _parts(tiny_env)
    data = TwoViewBlocks(
        data_dir=tiny_env.data.out,
        split="train",
        decoder_tokenizer=hub.load_tokenizer(tiny_env.info.tokenizer_dir),
        encoder_tokenizer=hub.load_tokenizer(str(tiny_env.bert)),
        max_len=48,
        limit=10,
    )
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    cached = CachedStates(data, encoder=encoder, device=CPU)
    first = cached.batch(np.array([3, 1, 4]))
    again = cached.batch(np.array([4, 1, 5]))
    assert calls == [3, 1] and len(cached) == 10  # block 5 is the only new one
    fresh = encoder(first.enc_ids, first.enc_mask)
    mask = first.enc_mask[..., None]
    torch.testing.assert_close(first.states * mask, fresh * mask, atol=2e-2, rtol=2e-3)  # fp16
    assert torch.equal(
        again.states[1, : first.enc_mask[1].sum()], first.states[1, : first.enc_mask[1].sum()]
    )


def test_compressor_locality_prior():
    comp = PerceiverCompressor(
        input_dim=8, num_latents=4, latent_dim=3, width=16, depth=1, heads=4, locality=1.0
    )
    mask = torch.tensor([[True] * 9 + [False] * 3])
    bias = comp.attention_bias(mask)  # (1, H, N, N + S)
    assert bias.shape == (1, 4, 4, 16)
    assert (bias[..., :4] == 0).all() and torch.isinf(bias[..., -3:]).all()
    head0 = bias[0, 0, :, 4:13]  # the most local head, real tokens
    assert (head0.argmax(dim=-1) == torch.tensor([1, 3, 5, 7])).all()  # centred in its span
    assert (bias[0, -1, :, 4:13] == 0).all()  # the last head sees the whole text


def test_trainable_groups(tiny_env):
    _, model, _, _ = _parts(tiny_env)
    set_trainable(model, ("compressor", "cross_attn"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("compressor.", "decoder.cross_attn.")) for n in trained)
    set_trainable(model, ("all",))
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- train-ae


def test_train_ae_checkpoint_rebuilds_without_encoder_weights(tiny_env, trained_ae):
    meta = read_meta(trained_ae)
    assert meta.stage == "ae" and meta.step == 3
    for key in (
        "encoder_name",
        "encoder_hidden",
        "decoder",
        "base_mdlm",
        "vocab_size",
        "mask_id",
        "tokenizer",
        "seq_len",
        "latent_stats",
    ):
        assert key in meta.extra, key
    names = safetensors.torch.load_file(str(trained_ae)).keys()
    assert not any("word_embeddings" in n or n.startswith("encoder") for n in names)
    assert {"state_mean", "state_std", "latent_mean", "latent_std"} <= set(names)
    loaded = load_autoencoder(trained_ae, device=CPU)
    assert loaded.model.latent_shape == (4, 8) and loaded.sha256
    assert not torch.equal(loaded.model.latent_std, torch.ones(4, 8))  # measured after training


def test_decode_only_load_leaves_the_encoder_out_and_decodes_the_same(tiny_env, trained_ae):
    full = load_autoencoder(trained_ae, device=CPU)
    lean = load_autoencoder(trained_ae, device=CPU, with_encoder=False)
    assert full.encoder is not None and lean.encoder is None and lean.encoder_tokenizer is None
    assert not lean.is_bound  # trained on text: still not the perfect-latent bound
    with pytest.raises(DiladiffError, match="loaded without its encoder"):
        lean.require_encoder()
    weights, lean_weights = full.model.state_dict(), lean.model.state_dict()
    assert weights.keys() == lean_weights.keys()
    assert all(torch.equal(weights[k], lean_weights[k]) for k in weights)
    settings = SampleSettings(num_samples=3, batch_size=2, ndisc=4, selection="random")
    drawn = generate(  # the null-latent (MDLM) path loads the decoder only
        model="mdlm", checkpoint=trained_ae, settings=settings, runtime=init_runtime("cpu")
    )
    z = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = full.model.decode_logits(drawn.tokens, torch.full((3,), 0.5), z)
        got = lean.model.decode_logits(drawn.tokens, torch.full((3,), 0.5), z)
    assert torch.equal(expected, got)


def test_latent_stats_are_written_under_the_output_lock(tiny_env, trained_ae, monkeypatch):
    """The stats rewrite comes after the loop released the output's lock: it holds it
    again, so a second writer refuses it in one line and the checkpoint stays as it was;
    once free, the rewrite gives the same weights and metadata as an uninterrupted run."""
    import diladiff_cli.ae as ae_module
    from diladiff_cli.locks import output_lock

    out = tiny_env.root / "ae-locked.pt"
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=out)
    run = {
        "cfg": cfg,
        "data": tiny_env.data,
        "stage_config": to_dict(cfg),
        "runtime": init_runtime("cpu"),
    }
    real_store, real_save, held = ae_module._store_latent_stats, ae_module.save_weights, []

    def save(path, tensors, meta):
        try:
            with output_lock(path):
                held.append(False)
        except DiladiffError:
            held.append(True)
        real_save(path, tensors, meta)

    monkeypatch.setattr(ae_module, "_store_latent_stats", lambda *a, **k: None)
    train_ae(**run)  # trained, stats not measured yet
    before = out.read_bytes()
    monkeypatch.setattr(ae_module, "_store_latent_stats", real_store)
    with output_lock(out), pytest.raises(DiladiffError) as err:
        train_ae(**run)  # complete: only the stats rewrite is left, and out is taken
    assert str(err.value).startswith("another run is writing") and "\n" not in str(err.value)
    assert out.read_bytes() == before
    monkeypatch.setattr(ae_module, "save_weights", save)
    train_ae(**run)
    assert held == [True]  # the rewrite found the lock taken: by this run
    written, reference = read_meta(out), read_meta(trained_ae)
    assert written.extra == reference.extra and written.step == reference.step
    mine = safetensors.torch.load_file(str(out))
    for name, tensor in safetensors.torch.load_file(str(trained_ae)).items():
        assert torch.equal(tensor, mine[name]), name


def test_frozen_self_attention_keeps_null_latent_equal_to_base_after_training(tiny_env):
    out = tiny_env.root / "ae-frozen.pt"
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=out, latent_norm="l2")
    cfg = cfg.__class__(
        **{
            **cfg.__dict__,
            "decoder": cfg.decoder.__class__(
                **{**cfg.decoder.__dict__, "trainable": ("compressor", "cross_attn")}
            ),
        }
    )
    train_ae(cfg=cfg, data=tiny_env.data, stage_config=to_dict(cfg), runtime=init_runtime("cpu"))
    loaded = load_autoencoder(out, device=CPU)
    base = load_mdlm(tiny_env.base, device=CPU).model
    tokens, sigma = torch.randint(0, 300, (2, SEQ_LEN)), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(loaded.model.decode_logits(tokens, sigma, None), base(tokens, sigma))
        z = torch.randn(2, 4, 8)
        assert not torch.equal(loaded.model.decode_logits(tokens, sigma, z), base(tokens, sigma))


def test_reconstruct_from_blocks_and_texts(tiny_env, trained_ae):
    settings = SampleSettings(num_samples=1, batch_size=2, ndisc=4, selection="confidence")
    blocks = Sources(num_blocks=3)
    result = generate(
        model="reconstruct",
        checkpoint=trained_ae,
        settings=settings,
        runtime=init_runtime("cpu"),
        sources=blocks,
    )
    assert result.tokens.shape == (3, SEQ_LEN) and len(result.info["sources"]) == 3
    assert 0 <= result.info["token_accuracy"] <= 1 and result.settings.num_samples == 3
    assert (result.tokens != tiny_env.info.mask_id).all()
    again = generate(
        model="reconstruct",
        checkpoint=trained_ae,
        settings=settings,
        runtime=init_runtime("cpu"),
        sources=blocks,
    )
    assert torch.equal(result.tokens, again.tokens)  # seeded
    texts = generate(
        model="reconstruct",
        checkpoint=trained_ae,
        settings=settings,
        runtime=init_runtime("cpu"),
        sources=Sources(texts=("the king rode to the sea.",)),
    )
    assert texts.tokens.shape == (1, SEQ_LEN) and texts.timing.seconds_latent > 0


# ----------------------------------------------------------------------------- bad input


def test_encoder_that_cannot_be_loaded_is_one_line(tiny_env):
    cfg = ae_config(
        base=tiny_env.base, bert=tiny_env.root / "no-such-bert", out=tiny_env.root / "x.pt"
    )
    with pytest.raises(DiladiffError, match="cannot load") as err:
        load_encoder(cfg.encoder, device=CPU)
    assert "\n" not in str(err.value)
    cfg = ae_config(base=tiny_env.base, bert="org/not-a-model", out=tiny_env.root / "x.pt")
    with pytest.raises(DiladiffError, match="unreachable"):
        load_encoder(cfg.encoder, device=CPU)
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=tiny_env.root / "x.pt")
    too_long = cfg.encoder.__class__(name=str(tiny_env.bert), max_len=500)
    with pytest.raises(DiladiffError, match="exceeds the 96 positions"):
        load_encoder(too_long, device=CPU)


def test_decoder_checkpoint_that_does_not_fit(tiny_env):
    wrong = build_mdlm(
        tiny_env.root / "mdlm-v999.pt", tiny_env.info, tiny_env.data.out, vocab_size=999
    )
    with pytest.raises(DiladiffError, match="vocab_size 999 does not match"):
        load_base_decoder(str(wrong), tiny_env.info)
    with pytest.raises(DiladiffError, match="checkpoint not found|does not exist"):
        load_base_decoder(str(tiny_env.root / "missing.pt"), tiny_env.info)
    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=tiny_env.root / "x.pt")
    bad_heads = cfg.decoder.__class__(
        base=str(tiny_env.base), cross_attn_after=(0, 1), cross_attn_heads=5
    )
    with pytest.raises(DiladiffError, match="not divisible by 5 heads"):
        build_autoencoder(
            cfg.__class__(**{**cfg.__dict__, "decoder": bad_heads}),
            dit=load_base_decoder(str(tiny_env.base), tiny_env.info).dit,
            encoder_dim=32,
        )
    bad_pos = cfg.decoder.__class__(base=str(tiny_env.base), cross_attn_after=(0, 5))
    with pytest.raises(DiladiffError, match="block indices"):
        build_autoencoder(
            cfg.__class__(**{**cfg.__dict__, "decoder": bad_pos}),
            dit=load_base_decoder(str(tiny_env.base), tiny_env.info).dit,
            encoder_dim=32,
        )


def test_text_longer_than_encoder_max_len_refused_or_truncated(trained_ae):
    loaded = load_autoencoder(trained_ae, device=CPU)
    long_text = "the king " * 60
    with pytest.raises(DiladiffError, match=r"longer than the encoder's max length 48.*--truncate"):
        encode_texts(loaded, [long_text])
    out = encode_texts(loaded, ["a short one.", long_text], truncate=True)
    assert out.latents.shape == (2, 4, 8) and out.truncated == [1] and out.lengths[1] > 48
    with pytest.raises(DiladiffError, match="empty"):
        encode_texts(loaded, ["  "])


def test_not_an_ae_checkpoint(tiny_env):
    with pytest.raises(DiladiffError, match="expected an 'ae' one"):
        load_autoencoder(tiny_env.base, device=CPU)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str):
    """Run the CLI in-process (a subprocess would pay the torch import for every call)."""
    from typer.testing import CliRunner

    from diladiff_cli.cli import app

    return CliRunner().invoke(app, list(args))


def _json(result) -> dict:
    assert result.exit_code == 0, (result.output + result.stderr)[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_cli_train_ae_encode_and_reconstruct(tiny_env, tmp_path):
    import yaml

    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=tmp_path / "ae.pt")
    recipe = {
        "name": "ae-cli",
        "data": to_dict(tiny_env.data),
        "mdlm": {"model": {"vocab_size": 300}, "train": {}},
        "ae": to_dict(cfg),
        "encode": {
            "checkpoint": str(tmp_path / "ae.pt"),
            "out": str(tmp_path / "latents"),
            "shard_size": 16,
            "batch_size": 8,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _json(_cli("train-ae", str(path), "--device", "cpu"))["step"] == 3
    encoded = _json(_cli("encode", str(path), "--split", "valid", "--device", "cpu"))
    assert encoded["latents"][0]["count"] > 0
    assert (tmp_path / "latents" / "valid" / "index.json").is_file()
    z = tmp_path / "z.safetensors"
    text = _json(_cli("encode", str(path), "--text", "the sea.", "--save", str(z)))
    assert text["shape"] == [1, 4, 8] and z.exists()
    rec = tmp_path / "rec.jsonl"
    args = ("--reconstruct", "2", "--ndisc", "4", "--batch-size", "2", "--out", str(rec))
    assert _json(_cli("sample", str(path), *args))["samples"] == str(rec)
    meta = json.loads((tmp_path / "rec.meta.json").read_text())
    assert 0 <= meta["token_accuracy"] <= 1 and len(meta["sources"]) == 2
    bad = _cli("encode", str(path), "--text", "the king " * 60)
    assert bad.exit_code == 1 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1 and bad.stderr.strip().splitlines()[-1] == errors[0]
    )  # progress may precede it
    assert errors[0].startswith("error: text 0 is 122 encoder tokens, longer than")


def test_train_ae_two_process_gloo_matches_one_process(tiny_env, tmp_path):
    """DDP: the augmentation noise comes from the step context, so two processes train the
    same weights as one (up to float rounding: each micro-batch pads to its own length)."""
    import subprocess
    import sys

    import yaml

    cfg = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=tmp_path / "ae1.pt")
    cfg = cfg.__class__(
        **{
            **cfg.__dict__,
            "latent_norm": "l2",
            "train": TrainConfig(steps=2, batch_size=4, lr=3e-3),
        }
    )
    train_ae(cfg=cfg, data=tiny_env.data, stage_config=to_dict(cfg), runtime=init_runtime("cpu"))
    recipe = {
        "name": "ddp",
        "data": to_dict(tiny_env.data),
        "mdlm": {"model": {"vocab_size": 300}, "train": {}},
        "ae": {**to_dict(cfg), "out": str(tmp_path / "ae2.pt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "diladiff_cli", "train-ae", str(path), "--device", "cpu"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = safetensors.torch.load_file(str(tmp_path / "ae1.pt"))
    two = safetensors.torch.load_file(str(tmp_path / "ae2.pt"))
    for name, tensor in one.items():
        # At step 2 the gradients of the compressor and of the cross-attention's inputs
        # pass through an output projection updated once from zero: ~1e-9, where
        # Adam's eps (1e-8) turns float rounding into update differences of ~1e-4 (a
        # step is lr = 3e-3: unsynchronised gradients would differ by that much). The
        # decoder and the output projections match to 1e-5.
        behind_zero = name.startswith("compressor.") or (
            ".cross_attn." in name and not name.endswith("to_out.weight")
        )
        atol = 5e-4 if behind_zero else 1e-5
        torch.testing.assert_close(tensor, two[name], rtol=1e-4, atol=atol, msg=name)
