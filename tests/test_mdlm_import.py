"""Importing MDLM's released checkpoint layout into the DiT."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from diladiff_cli.config import DiTConfig
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.mdlm_import import (
    MDLM_OWT_CONFIG,
    config_from_hf,
    convert_mdlm_state_dict,
    load_mdlm_pretrained,
)

SMALL = DiTConfig(vocab_size=40, hidden=32, depth=2, heads=4, cond_dim=16, max_len=16, dropout=0.0)


def released_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """The released checkpoint's tensors, written out from anchors.md (independently
    of the DiT code), at any size."""
    d, c, v = cfg.hidden, cfg.cond_dim, cfg.vocab_size
    shapes = {
        "backbone.vocab_embed.embedding": (v, d),
        "backbone.sigma_map.mlp.0.weight": (c, 256),
        "backbone.sigma_map.mlp.0.bias": (c,),
        "backbone.sigma_map.mlp.2.weight": (c, c),
        "backbone.sigma_map.mlp.2.bias": (c,),
        "backbone.rotary_emb.inv_freq": (d // cfg.heads // 2,),
    }
    for n in range(cfg.depth):
        p = f"backbone.blocks.{n}."
        shapes |= {
            p + "norm1.weight": (d,),
            p + "attn_qkv.weight": (3 * d, d),
            p + "attn_out.weight": (d, d),
            p + "norm2.weight": (d,),
            p + "mlp.0.weight": (4 * d, d),
            p + "mlp.0.bias": (4 * d,),
            p + "mlp.2.weight": (d, 4 * d),
            p + "mlp.2.bias": (d,),
            p + "adaLN_modulation.weight": (6 * d, c),
            p + "adaLN_modulation.bias": (6 * d,),
        }
    shapes |= {
        "backbone.output_layer.norm_final.weight": (d,),
        "backbone.output_layer.linear.weight": (v, d),
        "backbone.output_layer.linear.bias": (v,),
        "backbone.output_layer.adaLN_modulation.weight": (2 * d, c),
        "backbone.output_layer.adaLN_modulation.bias": (2 * d,),
    }
    return shapes


def released_state_dict(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.2 for k, s in released_shapes(cfg).items()}
    dh = cfg.hidden // cfg.heads
    sd["backbone.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, dh, 2).float() / dh)
    return sd


def test_meta_mdlm_owt_has_the_released_names_shapes_and_size():
    with torch.device("meta"):
        model = DiT.from_config(MDLM_OWT_CONFIG)
    state = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    released = {k.removeprefix("backbone."): s for k, s in released_shapes(MDLM_OWT_CONFIG).items()}
    buffers = dict(model.named_buffers())
    assert len(state) == 130 and len(released) == 131
    assert state == {k: s for k, s in released.items() if k != "rotary_emb.inv_freq"}
    assert set(buffers) == {"rotary_emb.inv_freq"} and buffers["rotary_emb.inv_freq"].shape == (32,)
    assert sum(p.numel() for p in model.parameters()) == 169_627_218


def test_convert_loads_strictly_and_matches_direct_assignment():
    sd = released_state_dict(SMALL)
    converted = convert_mdlm_state_dict(sd, SMALL)
    imported = DiT.from_config(SMALL)
    imported.load_state_dict(converted, strict=True)

    direct = DiT.from_config(SMALL)
    with torch.no_grad():
        for name, p in direct.named_parameters():
            p.copy_(sd["backbone." + name])
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 16), generator=g)
    sigma = torch.rand(2, generator=g)
    out = imported.eval()(tokens, sigma)
    assert out.abs().max() > 1e-3  # the random weights really are in use
    torch.testing.assert_close(out, direct.eval()(tokens, sigma), rtol=0, atol=0)


def test_convert_casts_to_float32_and_accepts_stripped_names():
    sd = {k.removeprefix("backbone."): v.bfloat16() for k, v in released_state_dict(SMALL).items()}
    converted = convert_mdlm_state_dict(sd, SMALL)
    assert all(v.dtype == torch.float32 for v in converted.values())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("backbone.blocks.1.norm2.weight"), "missing 'blocks.1.norm2.weight'"),
        (lambda sd: sd.update({"backbone.extra.weight": torch.zeros(3)}), "unexpected"),
        (
            lambda sd: sd.update({"backbone.blocks.0.attn_out.weight": torch.zeros(32, 31)}),
            "(32, 31)",
        ),
        (lambda sd: sd.update({"backbone.rotary_emb.inv_freq": torch.ones(4)}), "rotary"),
    ],
)
def test_convert_rejects_mismatches(edit, message):
    sd = released_state_dict(SMALL)
    edit(sd)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        convert_mdlm_state_dict(sd, SMALL)
    assert "\n" not in str(e.value)


def test_convert_rejects_another_size():
    with pytest.raises(CheckpointError, match="mis-shaped"):
        convert_mdlm_state_dict(
            released_state_dict(SMALL), DiTConfig(**{**SMALL.__dict__, "vocab_size": 41})
        )


HF_CONFIG = {
    "architectures": ["MDLM"],
    "cond_dim": 128,
    "hidden_dim": 768,
    "model_length": 1024,
    "model_type": "mdlm",
    "n_blocks": 12,
    "n_heads": 12,
    "dropout": 0.1,
    "time_conditioning": False,
    "vocab_size": 50258,
}


def test_config_from_hf():
    assert config_from_hf(HF_CONFIG) == MDLM_OWT_CONFIG
    nested = {
        "model": {
            "hidden_size": 768,
            "cond_dim": 128,
            "length": 1024,
            "n_blocks": 12,
            "n_heads": 12,
            "dropout": 0,
        },
        "vocab_size": 50258,
    }
    cfg = config_from_hf(nested)
    assert cfg.hidden == 768 and cfg.max_len == 1024 and cfg.dropout == 0.0
    with pytest.raises(CheckpointError, match="n_heads"):
        config_from_hf({k: v for k, v in HF_CONFIG.items() if k != "n_heads"})
    with pytest.raises(CheckpointError, match="hidden_dim"):
        config_from_hf({**HF_CONFIG, "hidden_dim": "768"})


def small_hf_config() -> dict:
    return {
        **HF_CONFIG,
        "cond_dim": 16,
        "hidden_dim": 32,
        "model_length": 16,
        "n_blocks": 2,
        "n_heads": 4,
        "vocab_size": 40,
        "dropout": 0.0,
    }


def test_load_pretrained_from_local_directory(tmp_path):
    sd = released_state_dict(SMALL)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(small_hf_config()))
    cfg, state = load_mdlm_pretrained(str(tmp_path))
    assert cfg == SMALL
    DiT.from_config(cfg).load_state_dict(state, strict=True)

    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_mdlm_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mdlm_pretrained(str(tmp_path / "nowhere"))


def test_load_pretrained_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DiladiffError, match="offline") as e:
        load_mdlm_pretrained("no-such-owner/no-such-mdlm")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(e.value) and "no-such-owner/no-such-mdlm" in str(e.value)
