"""The base masked diffusion LM stage: train or fine-tune (`train-mdlm`), and load it back.

The network is :class:`~diladiff_cli.models.dit.DiT`, the process and loss live in
:mod:`diladiff_cli.diffusion.masked`, the loop in :mod:`diladiff_cli.train`; this
module only wires them to the prepared data and the checkpoint format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diladiff_cli.checkpoint import CheckpointMeta, load_checkpoint, load_into, read_meta
from diladiff_cli.config.data import DataConfig
from diladiff_cli.config.models import DiTConfig
from diladiff_cli.config.train import Precision, TrainConfig
from diladiff_cli.data import DataInfo, DataRecord, load_blocks, load_data_info
from diladiff_cli.diffusion.masked import LogLinearSchedule, MaskedDiffusionLoss, TokenBatch
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.models.dit import DiT
from diladiff_cli.models.mdlm_import import load_mdlm_pretrained
from diladiff_cli.structs import from_dict, to_dict
from diladiff_cli.train import Reporter, TrainResult, seed_everything, train

STAGE = "mdlm"


class TokenBlocks:
    """A prepared split as an :class:`~diladiff_cli.train.ExampleSource` of token blocks."""

    def __init__(self, data_dir: str | Path, split: str) -> None:
        self.blocks = load_blocks(data_dir, split)

    def __len__(self) -> int:
        return len(self.blocks)

    def batch(self, indices: np.ndarray) -> TokenBatch:
        return TokenBatch(tokens=self.blocks.tokens(indices))


def check_model_fits_data(model: DiTConfig, info: DataInfo, *, source: str) -> None:
    if model.vocab_size != info.vocab_size:
        raise DiladiffError(
            f"{source}: model vocab_size {model.vocab_size} does not match the prepared data's "
            f"vocabulary {info.vocab_size} (tokenizer {info.tokenizer_dir})"
        )
    if model.max_len < info.seq_len:
        raise DiladiffError(
            f"{source}: model max_len {model.max_len} is shorter than the data's seq_len {info.seq_len}"
        )


def init_weights(model: DiT, init_from: str) -> None:
    """Warm-start from a project checkpoint (any stage holding a DiT under the same
    names) or from released MDLM weights (a hub id or a local directory)."""
    path = Path(init_from)
    if path.is_file():
        ckpt = load_checkpoint(path, stage=STAGE)
        load_into(model, ckpt.tensors, source=str(path))
        return
    config, tensors = load_mdlm_pretrained(init_from)
    for name in ("vocab_size", "hidden", "depth", "heads", "cond_dim"):
        if getattr(config, name) != getattr(model.config, name):
            raise CheckpointError(
                f"{init_from}: its {name} is {getattr(config, name)}, the recipe's model has "
                f"{getattr(model.config, name)}"
            )
    load_into(model, tensors, source=init_from)


def train_mdlm(
    *,
    model_cfg: DiTConfig,
    train_cfg: TrainConfig,
    data: DataConfig,
    out: str,
    init_from: str | None,
    noise_eps: float,
    stage_config: dict[str, Any],
    runtime: Runtime,
    precision: Precision,
    resume: bool,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train (or fine-tune) the MDLM on the prepared blocks of ``data.out``."""
    info = load_data_info(data.out)
    check_model_fits_data(model_cfg, info, source="mdlm.model")
    seed_everything(train_cfg.seed)
    model = DiT.from_config(model_cfg)
    if init_from:
        init_weights(model, init_from)
    objective = MaskedDiffusionLoss(schedule=LogLinearSchedule(eps=noise_eps), mask_id=info.mask_id)
    meta = CheckpointMeta(
        stage=STAGE, step=0, config=stage_config, extra=to_dict(DataRecord.of(info, data.out))
    )
    return train(
        model=model,
        objective=objective,
        train_data=TokenBlocks(data.out, "train"),
        valid_data=TokenBlocks(data.out, "valid"),
        cfg=train_cfg,
        out=out,
        meta=meta,
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )


@dataclass
class LoadedMDLM:
    """A decoder ready to sample.

    Attributes:
        model: the DiT in eval mode on the requested device.
        config: its architecture.
        data: the data it was trained on (vocab, special tokens, tokenizer, seq_len).
        schedule: its noise schedule.
        step: training steps it had.
    """

    model: DiT
    config: DiTConfig
    data: DataRecord
    schedule: LogLinearSchedule
    step: int


def load_mdlm(path: str | Path, *, device: torch.device) -> LoadedMDLM:
    """Load a ``train-mdlm`` checkpoint for inference."""
    meta = read_meta(path)
    if meta.stage != STAGE:
        raise CheckpointError(f"{path} is a '{meta.stage}' checkpoint, expected an 'mdlm' one")
    ckpt = load_checkpoint(path, stage=STAGE)
    try:
        config = from_dict(DiTConfig, meta.config["model"], source=f"{path} metadata")
    except KeyError:
        raise CheckpointError(f"{path}: its metadata has no model config") from None
    model = DiT.from_config(config)
    load_into(model, ckpt.tensors, source=str(path))
    model.to(device).eval()
    schedule = LogLinearSchedule(eps=float(meta.config.get("noise_eps", 1e-3)))
    return LoadedMDLM(
        model=model,
        config=config,
        data=DataRecord.from_extra(meta.extra, source=f"{path} metadata"),
        schedule=schedule,
        step=meta.step,
    )
