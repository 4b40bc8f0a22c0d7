"""Runs `distill` (the real stage function) on synthetic latents, for the DDP test.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 _distill_ddp_driver.py \
           TEACHER LATENTS OUTDIR STEPS
(or plain `python _distill_ddp_driver.py ...` for one process). Distils with MeanFlow then
with TVM into OUTDIR/meanflow.pt and OUTDIR/tvm.pt; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diladiff_cli.config import DistillStageConfig, TimePairConfig, TrainConfig
from diladiff_cli.distributed import init_runtime, shutdown
from diladiff_cli.prior import distill


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("teacher")
    p.add_argument("latents")
    p.add_argument("outdir")
    p.add_argument("steps", type=int)
    a = p.parse_args()
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    losses = {}
    for objective in ("meanflow", "tvm"):
        cfg = DistillStageConfig(
            teacher=a.teacher,
            out=str(Path(a.outdir) / f"{objective}.pt"),
            latents=a.latents,
            objective=objective,
            # r != t on half the batch, so the JVP term matters
            time=TimePairConfig(mean=-1.0, std=1.0, equal_share=0.5),
            train=TrainConfig(
                steps=a.steps, batch_size=8, lr=1e-3, log_every=1, ckpt_every=a.steps, seed=5
            ),
        )
        result = distill(cfg=cfg, data_dir="unused", runtime=runtime, resume=False)
        losses[objective] = result.train_metrics.get("loss")
    if runtime.is_main:
        print(json.dumps({"loss": losses, "world": runtime.world_size}))
    shutdown()


if __name__ == "__main__":
    main()
