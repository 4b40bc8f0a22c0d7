"""Benchmark the MDLM stage and append the figures to docs/benchmarks.md.

`make bench` runs scripts/bench.py (every stage's throughput and sampling speed); this older
script is kept for what that one does not measure: the trained MDLM's validation NELBO over
the whole split and one sample's text.

What it measures, on whatever device it runs:

* training throughput (tokens/s) of the recipe's MDLM through the real training loop;
* the trained checkpoint's validation NELBO and perplexity over the whole validation split
  (``--checkpoint``, default: the recipe's ``mdlm.out``; run ``make reproduce`` first);
* sampling seconds per sample and forward passes at several Ndisc, and one sample's text;
* on CUDA, additionally MDLM-small (12 x 768, L = 1024, bf16) training tokens/s and
  model-FLOPs utilisation, and sampling seconds per sample at Ndisc = 1024, batch 16.

Usage: python scripts/bench_mdlm.py [--recipe recipes/tiny/default.yaml] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from diladiff_cli.checkpoint import CheckpointMeta
from diladiff_cli.config import DiTConfig, TrainConfig, load_recipe
from diladiff_cli.data import load_data_info
from diladiff_cli.diffusion.masked import LogLinearSchedule, MaskedDiffusionLoss, TokenBatch
from diladiff_cli.distributed import device_name, init_runtime
from diladiff_cli.mdlm import TokenBlocks, load_mdlm
from diladiff_cli.models.dit import DiT
from diladiff_cli.sample import SampleSettings, generate
from diladiff_cli.structs import to_dict
from diladiff_cli.train import evaluate, train

# Dense bf16 peak (TFLOP/s) for model-FLOPs utilisation.
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def train_throughput(
    model_cfg: DiTConfig, data, *, steps: int, batch: int, micro: int, runtime, precision: str
) -> float:
    """Tokens per second of the real training loop, after a 2-step warm-up run."""
    torch.manual_seed(0)
    objective = MaskedDiffusionLoss(schedule=LogLinearSchedule(), mask_id=data.mask_id)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            objective=objective,
            train_data=data.source,
            valid_data=None,
            out=Path(tmp) / "bench.pt",
            meta=CheckpointMeta(stage="bench", step=0, config={}),
            runtime=runtime,
            precision=precision,
            resume=False,
        )
        cfg = dict(batch_size=batch, micro_batch_size=micro, log_every=10**9, ckpt_every=10**9)
        # a short first run takes the one-off costs (allocator, kernels, compile)
        train(model=DiT.from_config(model_cfg), cfg=TrainConfig(steps=2, **cfg), **common)
        full = train(
            model=DiT.from_config(model_cfg), cfg=TrainConfig(steps=steps, **cfg), **common
        )
    return steps * batch * data.seq_len / full.seconds


class _Data:
    def __init__(self, source, mask_id: int, seq_len: int) -> None:
        self.source, self.mask_id, self.seq_len = source, mask_id, seq_len


class RandomBlocks:
    """Uniform random tokens: throughput does not depend on the text."""

    def __init__(self, n: int, seq_len: int, vocab: int) -> None:
        self.tokens = torch.randint(0, vocab - 1, (n, seq_len))

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: np.ndarray) -> TokenBatch:
        return TokenBatch(tokens=self.tokens[torch.as_tensor(indices)])


def flops_per_token(cfg: DiTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention scores (PaLM's count)."""
    n = 12 * cfg.depth * cfg.hidden**2 + cfg.hidden * cfg.vocab_size
    return 6 * n + 12 * cfg.depth * cfg.hidden * seq_len


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    recipe = load_recipe(args.recipe)
    runtime = init_runtime("auto")
    dev = runtime.device
    info = load_data_info(recipe.data.out)
    rows: list[tuple[str, str]] = []
    record: dict = {"device": device_name(dev), "recipe": recipe.name}

    # 1. training throughput of the recipe's model on the prepared data
    train_cfg = recipe.mdlm.train
    tps = train_throughput(
        recipe.mdlm.model,
        _Data(TokenBlocks(recipe.data.out, "train"), info.mask_id, info.seq_len),
        steps=args.steps,
        batch=train_cfg.batch_size,
        micro=train_cfg.micro_batch_size,
        runtime=runtime,
        precision="bf16" if dev.type == "cuda" else "fp32",
    )
    record["train_tokens_per_s"] = tps
    m = recipe.mdlm.model
    rows.append(
        (
            f"train-mdlm {m.depth}x{m.hidden}, V={m.vocab_size}, L={info.seq_len}, batch {train_cfg.batch_size}",
            f"{tps:,.0f} tokens/s",
        )
    )

    # 2. the trained checkpoint: validation NELBO / PPL over the whole split
    ckpt = Path(args.checkpoint or recipe.mdlm.out)
    if ckpt.exists():
        loaded = load_mdlm(ckpt, device=dev)
        valid = TokenBlocks(recipe.data.out, "valid")
        objective = MaskedDiffusionLoss(schedule=loaded.schedule, mask_id=info.mask_id)
        metrics = evaluate(
            model=loaded.model,
            objective=objective,
            data=valid,
            batch_size=32,
            batches=math.ceil(len(valid) / 32),
            seed=1234,
            runtime=runtime,
            precision="fp32",
        )
        record.update(checkpoint=str(ckpt), step=loaded.step, valid_nelbo=metrics["nelbo"])
        record["valid_ppl_bound"] = math.exp(metrics["nelbo"])
        rows.append(
            (
                f"{ckpt} (step {loaded.step}) validation NELBO, {len(valid)} blocks",
                f"{metrics['nelbo']:.3f} nats/token (PPL <= {math.exp(metrics['nelbo']):.1f}; "
                f"uniform = ln V = {math.log(info.vocab_size):.2f})",
            )
        )
        # 3. sampling speed
        for ndisc in sorted({info.seq_len, info.seq_len // 4, info.seq_len // 16}):
            res = generate(
                model="mdlm",
                checkpoint=ckpt,
                settings=SampleSettings(
                    num_samples=args.samples, batch_size=args.samples, ndisc=ndisc
                ),
                runtime=runtime,
            )
            t = res.timing
            record[f"sample_ndisc{ndisc}"] = to_dict(t)
            rows.append(
                (
                    f"sample Ndisc={ndisc}, batch {args.samples}",
                    f"{t.seconds_per_sample * 1e3:.1f} ms/sample, {t.forward_passes_discrete:.1f} "
                    f"forward passes, {t.tokens_per_forward:.2f} tokens/forward",
                )
            )
            if ndisc == info.seq_len:
                record["sample_text"] = res.texts[0]

    # 4. GPU only: MDLM-small at paper size
    if dev.type == "cuda":
        small = DiTConfig(
            vocab_size=50258, hidden=768, depth=12, heads=12, cond_dim=128, max_len=1024
        )
        data = _Data(RandomBlocks(4096, 1024, 50258), 50257, 1024)
        tps = train_throughput(
            small, data, steps=args.steps, batch=64, micro=16, runtime=runtime, precision="bf16"
        )
        peak = next((v for k, v in PEAK_BF16.items() if k in device_name(dev)), None)
        mfu = tps * flops_per_token(small, 1024) / (peak * 1e12) if peak else float("nan")
        record.update(small_train_tokens_per_s=tps, small_mfu=mfu)
        rows.append(("MDLM-small 12x768 L=1024 bf16 train", f"{tps:,.0f} tokens/s, MFU {mfu:.1%}"))

    print(json.dumps(record, indent=2))
    if not args.no_write:
        write_markdown(record, rows)


def write_markdown(record: dict, rows: list[tuple[str, str]]) -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nAppended by `make bench` (scripts/bench_mdlm.py); newest last.\n"
        )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## MDLM, recipe `{record['recipe']}`, {record['device']} ({stamp})\n",
        "| what | figure |",
        "| --- | --- |",
    ]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if "sample_text" in record:
        text = record["sample_text"].replace("\n", " / ")[:600]
        lines.append(f"\nA sample (Ndisc = L, random selection, T = 1):\n\n> {text}\n")
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
