"""Import MDLM's released weights (``kuleshov-group/mdlm-owt``) into :class:`DiT`.

The released checkpoint is a Hugging Face repo with a ``config.json`` and a
``model.safetensors`` whose tensors are named ``backbone.<name>``, where
``<name>`` is exactly a :class:`DiT` parameter name (anchors.md lists them), plus
the rotary buffer ``backbone.rotary_emb.inv_freq``. Conversion is a prefix strip
with strict checks, so that a wrong file fails here with a one-line message
rather than as a shape error deep in ``load_state_dict``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from diladiff_cli.config.models import DiTConfig
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.models.dit import DiT, RotaryEmbedding

MDLM_OWT_CONFIG = DiTConfig(
    vocab_size=50258,
    hidden=768,
    depth=12,
    heads=12,
    cond_dim=128,
    max_len=1024,
    dropout=0.1,
    time_conditioning=False,
)
"""The shape of ``kuleshov-group/mdlm-owt`` (MDLM-small, GPT-2 vocabulary + mask)."""

_PREFIX = "backbone."
_ROTARY_BUFFER = "rotary_emb.inv_freq"

# DiTConfig field -> accepted spellings: the HF config.json first, then the
# names of MDLM's Hydra config (model.hidden_size, model.length, ...).
_HF_KEYS: dict[str, tuple[str, ...]] = {
    "vocab_size": ("vocab_size",),
    "hidden": ("hidden_dim", "hidden_size"),
    "depth": ("n_blocks",),
    "heads": ("n_heads",),
    "cond_dim": ("cond_dim",),
    "max_len": ("model_length", "length"),
    "dropout": ("dropout",),
    "time_conditioning": ("time_conditioning",),
}
_HF_OPTIONAL = {"dropout", "time_conditioning"}  # DiTConfig defaults apply


def _find_key(cfg: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` found, searching nested dicts breadth-first."""
    level: list[Mapping[str, Any]] = [cfg]
    while level:
        for name in names:
            for d in level:
                if name in d and not isinstance(d[name], Mapping):
                    return d[name]
        level = [v for d in level for v in d.values() if isinstance(v, Mapping)]
    return None


def config_from_hf(cfg: Mapping[str, Any]) -> DiTConfig:
    """Map an MDLM ``config.json`` (or a nested Hydra-style dict) to a :class:`DiTConfig`.

    Args:
        cfg: the parsed JSON. Keys are looked up at the top level first, then in
            nested dicts (``{"model": {"hidden_size": ...}}``).

    Returns:
        The DiT shape.

    Raises:
        CheckpointError: a required key is missing or has the wrong type.
    """
    defaults = DiTConfig(vocab_size=1)
    values: dict[str, Any] = {}
    for field, names in _HF_KEYS.items():
        value = _find_key(cfg, names)
        if value is None:
            if field not in _HF_OPTIONAL:
                raise CheckpointError(f"MDLM config has no '{names[0]}' (needed for DiT {field})")
            value = getattr(defaults, field)
        expected = type(getattr(defaults, field))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise CheckpointError(
                f"MDLM config '{names[0]}' is {value!r}, expected a {expected.__name__}"
            )
        values[field] = value
    return DiTConfig(**values)


def expected_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor of ``DiT.from_config(cfg)`` and its shape (built on ``meta``)."""
    with torch.device("meta"):
        model = DiT.from_config(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def convert_mdlm_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: DiTConfig
) -> dict[str, torch.Tensor]:
    """Turn a released MDLM state dict into a :class:`DiT` state dict.

    Strips ``backbone.``, checks and drops ``rotary_emb.inv_freq`` (the DiT
    recomputes it), and casts floating tensors to float32 (models are built in
    fp32; precision is chosen at run time).

    Args:
        sd: tensors as stored in MDLM's ``model.safetensors``.
        cfg: the shape the weights must have.

    Returns:
        A state dict that ``DiT.from_config(cfg).load_state_dict(..., strict=True)`` accepts.

    Raises:
        CheckpointError: a tensor is missing, unexpected or mis-shaped; the
            message names the first offender and gives the counts.
    """
    stripped = {(k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): v for k, v in sd.items()}
    expected = expected_shapes(cfg)

    inv_freq = stripped.pop(_ROTARY_BUFFER, None)
    if inv_freq is not None:
        head_dim = cfg.hidden // cfg.heads
        ours = RotaryEmbedding(head_dim=head_dim).inv_freq
        if tuple(inv_freq.shape) != tuple(ours.shape) or not torch.allclose(
            inv_freq.float(), ours, rtol=1e-2
        ):
            raise CheckpointError(
                f"MDLM checkpoint '{_PREFIX}{_ROTARY_BUFFER}' {tuple(inv_freq.shape)} is not "
                f"rotary base 10000 over head width {head_dim}"
            )

    missing = [k for k in expected if k not in stripped]
    unexpected = [k for k in stripped if k not in expected]
    misshaped = [k for k in expected if k in stripped and tuple(stripped[k].shape) != expected[k]]
    if missing or unexpected or misshaped:
        if missing:
            first = f"missing '{missing[0]}' {expected[missing[0]]}"
        elif unexpected:
            first = f"unexpected '{unexpected[0]}' {tuple(stripped[unexpected[0]].shape)}"
        else:
            k = misshaped[0]
            first = f"'{k}' is {tuple(stripped[k].shape)}, expected {expected[k]}"
        raise CheckpointError(
            f"MDLM checkpoint does not fit {cfg}: {first} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped)"
        )
    return {
        k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in stripped.items()
    }


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _fetch(name: str, filename: str) -> Path:
    """Path of ``filename`` of hub repo ``name`` (downloaded or from the cache)."""
    # Imported here: only the hub path needs it.
    from huggingface_hub import hf_hub_download

    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    try:
        # local_files_only when offline: huggingface_hub reads HF_HUB_OFFLINE at
        # import time only, and a late setting must still fail fast.
        return Path(hf_hub_download(name, filename, etag_timeout=10, local_files_only=offline))
    except Exception as e:  # the hub boundary: HTTP, connection, offline, bad name
        raise DiladiffError(
            f"cannot load MDLM weights '{name}' ({filename}): the machine is offline "
            f"(HF_HUB_OFFLINE=1) or the name is wrong ({type(e).__name__})"
        ) from None


def load_mdlm_pretrained(name_or_dir: str) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """Load a released MDLM checkpoint as a DiT config and state dict.

    Args:
        name_or_dir: a local directory holding ``config.json`` and
            ``model.safetensors``, or a Hugging Face repo id
            (``kuleshov-group/mdlm-owt``).

    Returns:
        ``(config, state_dict)`` ready for ``DiT.from_config(config).load_state_dict``.

    Raises:
        DiladiffError: the hub cannot be reached or the name does not exist.
        CheckpointError: the files are missing, unreadable or of another shape.
    """
    local = Path(name_or_dir).expanduser()
    if local.is_dir():
        config_path, weights_path = local / "config.json", local / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"MDLM directory '{local}' has no {path.name}")
    elif local.is_absolute() or name_or_dir.startswith((".", "~")):
        raise CheckpointError(f"MDLM directory '{name_or_dir}' does not exist")
    else:
        config_path = _fetch(name_or_dir, "config.json")
        weights_path = _fetch(name_or_dir, "model.safetensors")

    try:
        hf_config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read MDLM config '{config_path}': {e}") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"MDLM config '{config_path}' is not a JSON object")
    cfg = config_from_hf(hf_config)
    try:
        raw = load_file(str(weights_path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read MDLM weights '{weights_path}': {e}") from None
    return cfg, convert_mdlm_state_dict(raw, cfg)
