"""What the autoencoder's latent z carries on the oracle corpus: NELBO of the decoders
given z, the null latent, another block's z and the true topic (the bound); linear probes
of the topic, the word class at each position and the scene of each word on z; decodes
of the encoder's z against the null latent at a few Ndisc, scored exactly.

The measures are :mod:`diladiff_cli.analysis.latent_probe` and the pipeline's own
sampler and scorer; this script loads the recipe's checkpoints and latents, calls them
and writes a JSON record and a Markdown table. About two minutes on 2 CPU cores at the
defaults, half of it the decodes (``--decode-ndisc`` with no value skips them).

Usage (after the oracle pipeline: prepare, train-mdlm, train-ae, train-bound, encode)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/latent_probe.py \\
        --recipe recipes/oracle/default.yaml --out results/oracle/latent_probe/probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from diladiff_cli.ae import load_autoencoder
from diladiff_cli.analysis.latent_probe import (
    BlockEstimate,
    block_labels,
    compare_nelbo,
    probe_latents,
    probe_markdown,
)
from diladiff_cli.config import load_recipe
from diladiff_cli.data import decode_blocks, load_blocks, load_data_info
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_text
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.latent_shards import LatentShards
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.oracle import load_oracle
from diladiff_cli.pipeline import Pipeline


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/oracle/default.yaml")
    p.add_argument("--ae", default=None, help="autoencoder (default: the recipe's ae.out)")
    p.add_argument(
        "--bound", default=None, help="bound (default: the recipe's pareto.checkpoints.bound)"
    )
    p.add_argument("--mdlm", default=None, help="base MDLM (default: the recipe's mdlm.out)")
    p.add_argument("--latents", default=None, help="latent dir (default: the recipe's encode.out)")
    p.add_argument("--blocks", type=int, default=256, help="valid blocks for the NELBO")
    p.add_argument("--probe-train", type=int, default=0, help="train latents to fit (0: all)")
    p.add_argument("--probe-test", type=int, default=0, help="valid latents to test (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--decode-ndisc",
        type=int,
        nargs="*",
        default=[4, 16],
        help="decode the encoder's z and the null latent at these Ndisc (none: skip)",
    )
    p.add_argument("--decode-blocks", type=int, default=96, help="valid blocks to decode")
    p.add_argument("--decode-seeds", type=int, default=3, help="sampling seeds per Ndisc")
    p.add_argument("--out", default="results/oracle/latent_probe/probe.json")
    p.add_argument("--md", default=None, help="Markdown table (default: --out with .md)")
    return p.parse_args()


def split_latents(latents: str, split: str, ae: str, data_dir: str, limit: int):
    """The first ``limit`` latents of a split, their blocks' texts, checked against the
    autoencoder (sha256) and the data (fingerprint)."""
    shards = LatentShards(Path(latents) / split, autoencoder=ae)
    info = load_data_info(data_dir)
    if shards.index.data.get("fingerprint") not in (None, info.fingerprint):
        raise DiladiffError(f"{latents}/{split} was encoded from other data than {data_dir}")
    n = min(limit or len(shards), len(shards))
    z = shards.latents(list(range(n)))  # (n, N, D): shard rows are blocks 0 .. count - 1
    texts = decode_blocks(
        load_tokenizer(info.tokenizer_dir),
        load_blocks(data_dir, split).tokens(list(range(n))),
        skip_special_tokens=True,
    )
    return z, texts


def decode_latents(
    recipe: str,
    ae_path: str,
    z: torch.Tensor,
    *,
    ndiscs: list[int],
    seeds: range,
    seq_len: int,
) -> dict:
    """Decode ``z`` and the null latent (the sweeps' MDLM baseline: the same decoder, no
    latent) at each Ndisc with each sampling seed, and score the texts exactly: does the
    decoder keep what z carries when it unmasks many tokens at once? No prior is involved,
    so this separates the decoder's use of z from the prior's samples."""
    pipe = Pipeline.load(recipe, device="cpu")
    # "mdlm" as the sweeps take it: the autoencoder's decoder given the null latent
    pipe = dataclasses.replace(pipe, parts={**pipe.parts, "autoencoder": ae_path, "mdlm": ae_path})
    n = len(z)

    def estimates(texts_per_seed: list[list[str]]) -> dict:
        scores = [pipe.score(texts).oracle for texts in texts_per_seed]
        return {
            "nll": dataclasses.asdict(BlockEstimate.of([sc.nll_per_token for sc in scores])),
            "purity": dataclasses.asdict(BlockEstimate.of([sc.purity for sc in scores])),
        }

    rows = []
    for ndisc in ndiscs:
        z_texts = [pipe.decode(z, ndisc=ndisc, seed=s, batch_size=n) for s in seeds]
        null_texts = [
            pipe.generate(n, model="mdlm", ndisc=ndisc, seed=s, batch_size=n).texts for s in seeds
        ]
        row = {
            "ndisc": ndisc,
            "tokens_per_pass": seq_len / ndisc,
            "z": estimates(z_texts),
            "null": estimates(null_texts),
        }
        rows.append(row)
        print(f"decodes at Ndisc {ndisc}: {row}", flush=True)
    return {"blocks": len(z), "seeds": list(seeds), "rows": rows}


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    data_dir = recipe.data.out
    ae_path = args.ae or recipe.ae.out
    bound_path = args.bound or recipe.pareto.checkpoints["bound"]
    mdlm_path = args.mdlm or recipe.mdlm.out
    latents = args.latents or recipe.encode.out
    device = torch.device("cpu")
    oracle = load_oracle(data_dir)
    t0 = time.perf_counter()

    ae = load_autoencoder(ae_path, device=device)
    bound = load_autoencoder(bound_path, device=device)
    if ae.is_bound or not bound.is_bound:
        raise DiladiffError(f"{bound_path} must be the bound and {ae_path} the autoencoder")
    mdlm = load_mdlm(mdlm_path, device=device)
    nelbo = compare_nelbo(
        ae, bound, mdlm, oracle, data_dir=data_dir, blocks=args.blocks, seed=args.seed
    )
    t1 = time.perf_counter()
    print(f"nelbo ({t1 - t0:.1f}s): {nelbo.nelbo}", flush=True)

    z_train, texts_train = split_latents(latents, "train", ae_path, data_dir, args.probe_train)
    z_test, texts_test = split_latents(latents, "valid", ae_path, data_dir, args.probe_test)
    results = probe_latents(
        z_train,
        block_labels(oracle, texts_train),
        z_test,
        block_labels(oracle, texts_test),
        num_topics=oracle.num_topics,
        num_scenes=int(oracle.config.get("num_scenes", 1)),
    )
    t2 = time.perf_counter()
    print(f"probes ({t2 - t1:.1f}s): " + ", ".join(
        f"{k} {dataclasses.asdict(r)}" for k, r in results.items()
    ), flush=True)  # fmt: skip

    decodes = (
        decode_latents(
            args.recipe,
            ae_path,
            z_test[: args.decode_blocks],
            ndiscs=args.decode_ndisc,
            seeds=range(args.decode_seeds),
            seq_len=recipe.data.seq_len,
        )
        if args.decode_ndisc
        else None
    )
    t3 = time.perf_counter()

    record = {
        "command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python "
        + shlex.join(["scripts/latent_probe.py", *sys.argv[1:]]),
        "settings": {
            "recipe": args.recipe,
            "ae": ae_path,
            "ae_step": ae.step,
            "bound": bound_path,
            "bound_step": bound.step,
            "mdlm": mdlm_path,
            "latents": latents,
            "latent_shape": list(ae.model.latent_shape),
            "seed": args.seed,
            "threads": args.threads,
            "seconds": {"nelbo": t1 - t0, "probes": t2 - t1, "decodes": t3 - t2},
        },
        "nelbo": dataclasses.asdict(nelbo),
        "probes": {
            "settings": {
                "method": "ridge regression onto one-hot targets, closed form; ridge picked "
                "on the last fifth of the train latents, then refitted on all",
                "features": "flattened normalised z from the encode shards",
                "train_blocks": len(z_train),
                "test_blocks": len(z_test),
            },
            "results": {k: dataclasses.asdict(r) for k, r in results.items()},
        },
        "decodes": decodes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    md = Path(args.md) if args.md else out.with_suffix(".md")
    atomic_write_text(md, probe_markdown(record))
    print(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()
