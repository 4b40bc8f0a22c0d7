"""Drives the training loop on a tiny MDLM over random tokens, for the resume and DDP tests.

Usage: python _train_driver.py OUT STEPS [--kill-at K] [--micro M] [--dropout P] [--tensorboard]
Prints one JSON line with the final loss. ``--kill-at K`` SIGKILLs the process right
after the checkpoint of step K (a real kill: no cleanup, no finally blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import torch

from diladiff_cli.checkpoint import CheckpointMeta
from diladiff_cli.config import DiTConfig, LoggingConfig, TensorBoardConfig, TrainConfig
from diladiff_cli.diffusion.masked import LogLinearSchedule, MaskedDiffusionLoss, TokenBatch
from diladiff_cli.distributed import init_runtime, shutdown
from diladiff_cli.models.dit import DiT
from diladiff_cli.structs import to_dict
from diladiff_cli.train import seed_everything, train

VOCAB, LEN = 48, 16


class RandomTokens:
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        # a learnable pattern: token i+1 follows token i
        start = torch.randint(0, VOCAB - 1, (n, 1), generator=g)
        self.tokens = (start + torch.arange(LEN)) % (VOCAB - 1)

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: np.ndarray) -> TokenBatch:
        return TokenBatch(tokens=self.tokens[torch.as_tensor(indices)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--micro", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.9)
    p.add_argument("--tensorboard", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    model_cfg = DiTConfig(
        vocab_size=VOCAB, hidden=32, depth=2, heads=2, cond_dim=16, max_len=LEN, dropout=a.dropout
    )
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=8,
        micro_batch_size=a.micro,
        lr=3e-3,
        warmup_steps=2,
        ema=a.ema,
        log_every=1,
        ckpt_every=2,
        eval_batches=1,
        seed=3,
        logging=LoggingConfig(tensorboard=TensorBoardConfig(enabled=a.tensorboard)),
    )
    runtime = init_runtime("cpu")
    seed_everything(cfg.seed)
    model = DiT.from_config(model_cfg)

    def on_checkpoint(step: int) -> None:
        if step == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(
        model=model,
        objective=MaskedDiffusionLoss(schedule=LogLinearSchedule(), mask_id=VOCAB - 1),
        train_data=RandomTokens(64, 0),
        valid_data=RandomTokens(16, 1),
        cfg=cfg,
        out=a.out,
        meta=CheckpointMeta(
            stage="mdlm", step=0, config={"model": to_dict(model_cfg), "train": to_dict(cfg)}
        ),
        runtime=runtime,
        on_checkpoint=on_checkpoint,
    )
    if runtime.is_main:
        print(
            json.dumps(
                {
                    "loss": result.train_metrics.get("loss"),
                    "skipped": result.skipped,
                    "resumed_from": result.resumed_from,
                }
            )
        )
    shutdown()


if __name__ == "__main__":
    main()
