"""Held-out measurements of a trained autoencoder, and the paper's latent analysis.

Writes ``docs/autoencoder.md`` (tables) and ``docs/autoencoder.json`` (every number and
the settings that made it). The measures are :mod:`diladiff_cli.analysis.latent_analysis`;
this script loads the recipe's checkpoints, calls
:func:`~diladiff_cli.analysis.latent_analysis.analyse_autoencoder` and writes. Everything is measured on the held-out (valid) split:

1. Validation NELBO (nats/token, MDLM's continuous-time bound, same times and masks for
   every model) of the decoder given the encoder's z, given the null latent, and of the
   base MDLM.
2. Reconstruction at Ndisc = L/16 and L/4, random and confidence selection: decode from
   the latent of each held-out block; token accuracy against the block and BERTScore-F1
   against its text; the same for the null latent and the plain MDLM (unconditional
   samples paired with the same blocks: the chance level).
3. Latent analysis: perturb each latent, z_t = (1 - t) z + t noise, decode 8 steps;
   BERTScore-F1 against the t = 0 decode and against the ground truth, per t.
   Intra-pool (same latent, two seeds) vs inter-pool (two latents, same seed). Every
   mean has its standard error over the held-out blocks (``<key>_se``). On an oracle
   corpus (``oracle.json`` in the data) also the exact counterpart: per t the share of
   decodes that keep the source block's topic (argmax of the oracle's posterior), and
   the share of pool pairs decoded with the same topic.
4. Step time of training (encoder forward and full step, median of a few steps).

BERTScore uses the shipped MiniLM (``metrics.bertscore_f1``, no baseline rescaling) with
the layer given by ``--bertscore-layers``. The encoder of the embedded default is that same
MiniLM, so BERTScore here measures closeness in the encoder's own feature space.

Usage (the embedded default, after prepare, train-mdlm and train-ae)::

    HF_HUB_OFFLINE=1 python scripts/ae_report.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diladiff_cli.ae import load_autoencoder
from diladiff_cli.analysis.latent_analysis import analyse_autoencoder, latent_analysis_markdown
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import load_recipe
from diladiff_cli.distributed import device_name, init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_text, read_jsonl
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.train import metrics_path

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe (default: the embedded one, recipes/oracle/default.yaml)",
    )
    p.add_argument("--checkpoint", default=None, help="autoencoder (default: the recipe's ae.out)")
    p.add_argument("--mdlm", default=None, help="base MDLM (default: the recipe's mdlm.out)")
    p.add_argument("--nelbo-batches", type=int, default=8, help="valid batches of 32 for NELBO")
    p.add_argument("--blocks", type=int, default=64, help="held-out blocks to reconstruct")
    p.add_argument("--analysis-blocks", type=int, default=32, help="blocks of the latent analysis")
    p.add_argument("--bertscore-layers", type=int, default=6, help="MiniLM layer for BERTScore")
    p.add_argument("--bench-steps", type=int, default=5, help="training steps to time (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (the decodes and NELBO)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-md", default=str(ROOT / "docs" / "autoencoder.md"))
    p.add_argument("--out-json", default=str(ROOT / "docs" / "autoencoder.json"))
    return p.parse_args()


def main() -> None:
    try:
        report(parse())
    except DiladiffError as err:  # bad input or a damaged file: one line, no traceback
        raise SystemExit(f"error: {err}") from None


def report(args: argparse.Namespace) -> None:
    if args.device != "cpu" and args.bench_steps:
        raise DiladiffError(
            "--bench-steps times training steps on the CPU: pass --bench-steps 0 with "
            f"--device {args.device} (scripts/bench.py times them on a GPU)"
        )
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    checkpoint = args.checkpoint or recipe.ae.out
    mdlm_path = args.mdlm or recipe.mdlm.out
    log = metrics_path(Path(checkpoint))
    train_log = read_jsonl(log) if log.exists() else []  # first: a corrupt log stops it early
    runtime = init_runtime(args.device)
    ae = load_autoencoder(checkpoint, device=runtime.device)
    mdlm = load_mdlm(mdlm_path, device=runtime.device)
    t0 = time.perf_counter()
    result = analyse_autoencoder(
        ae,
        mdlm,
        data_dir=recipe.data.out,
        runtime=runtime,
        nelbo_batches=args.nelbo_batches,
        blocks=args.blocks,
        analysis_blocks=args.analysis_blocks,
        bertscore_layers=args.bertscore_layers,
        bench_steps=args.bench_steps,
        seed=args.seed,
        progress=lambda line: print(line, flush=True),
    )
    record = {
        "settings": {
            "checkpoint": checkpoint,
            "ae_step": ae.step,
            "mdlm": mdlm_path,
            "mdlm_step": read_meta(mdlm_path).step,
            "encoder": ae.config.encoder.name,
            "latent_shape": list(ae.model.latent_shape),
            "latent_norm": ae.model.latent_norm,
            "blocks": args.blocks,
            "bertscore_layers": args.bertscore_layers,
            "seed": args.seed,
            "device": device_name(runtime.device)
            if runtime.device.type == "cuda"
            else f"cpu ({args.threads} threads, {platform.processor() or platform.machine()})",
            "seconds": time.perf_counter() - t0,
        },
        "commands": [
            "diladiff prepare && diladiff train-mdlm && diladiff train-ae",
            "HF_HUB_OFFLINE=1 python scripts/ae_report.py",
        ],
        "nelbo": result.nelbo,
        "reconstruction": result.reconstruction,
        "latent_analysis": result.latent_analysis,
        "timing": result.timing,
        "train_log": train_log,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_json, json.dumps(record, indent=1) + "\n")
    atomic_write_text(args.out_md, latent_analysis_markdown(record))
    print(latent_analysis_markdown(record))


if __name__ == "__main__":
    main()
