"""Validation NELBO of MDLM checkpoints as the 4000-step default's final evaluation reads it:
the first 8 batches of 32 validation blocks (256), fixed noise seeded by the training seed."""

import sys

from diladiff_cli.data import load_data_info
from diladiff_cli.diffusion.masked import MaskedDiffusionLoss
from diladiff_cli.distributed import init_runtime
from diladiff_cli.mdlm import TokenBlocks, load_mdlm
from diladiff_cli.train import evaluate

rt = init_runtime("cpu")
info = load_data_info("runs/oracle/data")
for arg in sys.argv[1:]:
    path, seed = arg.split(":")
    m = load_mdlm(path, device=rt.device)
    obj = MaskedDiffusionLoss(schedule=m.schedule, mask_id=info.mask_id)
    r = evaluate(
        model=m.model,
        objective=obj,
        data=TokenBlocks("runs/oracle/data", "valid"),
        batch_size=32,
        batches=8,
        seed=int(seed),
        runtime=rt,
        precision="fp32",
    )
    print(f"{path} seed {seed}: valid NELBO {r['nelbo']:.4f} over 256 blocks")
