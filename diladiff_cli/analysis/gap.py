"""The factorization gap, measured exactly on an oracle corpus.

A masked diffusion model that unmasks many tokens per forward pass draws them
independently given the context; on data whose distribution is known exactly the price
of that shows as the samples' exact NLL per token rising above the process's entropy
rate H as the tokens per forward pass grow. :func:`factorization_gap` samples a model at
several discrete step counts, each with several sampling seeds, scores every sample with
the oracle and averages per seed: the error bar of a point is the standard error over
seeds (a seed's mean is one measurement), so a difference between points is real only
when it exceeds both points' bars.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diladiff_cli import hub
from diladiff_cli.analysis.verdicts import mean_and_se
from diladiff_cli.data import load_blocks, load_data_info
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_json, atomic_write_text
from diladiff_cli.oracle import Oracle, OracleMeasures, entropy_rate, load_oracle, words_of
from diladiff_cli.plots import plot_gap
from diladiff_cli.sample import Model, SampleSettings, generate
from diladiff_cli.train import Reporter

COLUMNS = (
    "model",
    "ndisc",
    "tokens_per_forward",
    "oracle_nll",
    "oracle_nll_se",
    "seeds",
    "samples_per_seed",
    "gap",
    "gap_over_h",
    "bad_transitions",
    "purity",
    "posterior_max",
    "topic_kl",
    "oov",  # words outside the vocabulary per text (an EOS inside a block counts)
    "seconds_per_sample",
)


@dataclass(frozen=True)
class Floor:
    """What the process itself scores.

    Attributes:
        entropy_rate: H, the mean NLL per token of the oracle's own samples (nats).
        entropy_rate_se: its standard error.
        num_samples: documents it was estimated on.
        held_out: the measures of held-out blocks of the prepared valid split.
    """

    entropy_rate: float
    entropy_rate_se: float
    num_samples: int
    held_out: OracleMeasures


@dataclass(frozen=True)
class GapCurve:
    """The curve: one row per (model, ndisc), averaged over seeds (see :data:`COLUMNS`),
    the per-seed measures, and the floor."""

    rows: list[dict[str, Any]]
    per_seed: list[dict[str, Any]]
    floor: Floor


def sample_words(oracle_tokenizer: Any, tokens: np.ndarray) -> list[list[str]]:
    """Each block's words as the oracle reads them, special tokens kept (an EOS inside a
    block is a word outside the vocabulary: counted, never dropped)."""
    return [
        words_of(oracle_tokenizer.decode(row, skip_special_tokens=False)) for row in tokens.tolist()
    ]


def measure_floor(
    oracle: Oracle, *, data_dir: str | Path, length: int, num_samples: int, seed: int
) -> Floor:
    """H on the oracle's own samples, and the measures of the held-out valid blocks."""
    info = load_data_info(data_dir)
    tokenizer = hub.load_tokenizer(info.tokenizer_dir)
    valid = load_blocks(data_dir, "valid").blocks  # (N, L)
    h, se = entropy_rate(oracle, num_samples=num_samples, length=length, seed=seed)
    return Floor(
        entropy_rate=h,
        entropy_rate_se=se,
        num_samples=num_samples,
        held_out=oracle.measure(sample_words(tokenizer, np.asarray(valid, dtype=np.int64))),
    )


def factorization_gap(
    *,
    model: Model,
    checkpoint: str | Path,
    data_dir: str | Path,
    ndiscs: Sequence[int],
    seeds: Sequence[int],
    num_samples: int,
    batch_size: int,
    runtime: Runtime,
    autoencoder: str | Path | None = None,
    ncont: int | None = None,
    selection: str = "random",
    temperature: float = 1.0,
    floor_samples: int = 2000,
    reporter: Reporter | None = None,
) -> GapCurve:
    """Sample ``model`` at every ``ndisc`` with every seed; score each set exactly.

    Args:
        model: what :func:`~diladiff_cli.sample.generate` draws (``mdlm`` for the gap
            itself; ``ladiff`` / ``diladiff`` to see how much of it a latent closes).
        checkpoint: its checkpoint (see :func:`~diladiff_cli.sample.generate`).
        data_dir: the prepared oracle corpus the model was trained on.
        ndiscs: discrete step counts (tokens per forward pass = L / forward passes).
        seeds: sampling seeds (at least 2, for an error bar).
        num_samples: samples per seed and step count.
        batch_size: samples per batch.
        runtime: device.
        autoencoder: ``ladiff`` / ``diladiff``: the decoder's autoencoder.
        ncont: ``ladiff`` / ``diladiff``: latent steps.
        selection: token selection of the masked sampler.
        temperature: decoder temperature.
        floor_samples: the oracle's own documents H is estimated on.
        reporter: progress messages.

    Raises:
        DiladiffError: fewer than two seeds, not an oracle corpus, or a model of other data.
    """
    if len(set(seeds)) < 2:
        raise DiladiffError("the gap curve needs at least 2 sampling seeds for its error bars")
    oracle = load_oracle(data_dir)
    info = load_data_info(data_dir)
    tokenizer = hub.load_tokenizer(info.tokenizer_dir)
    per_seed = []
    for ndisc in ndiscs:
        for seed in seeds:
            settings = SampleSettings(
                num_samples=num_samples,
                batch_size=batch_size,
                ndisc=ndisc,
                selection=selection,  # type: ignore[arg-type]
                temperature=temperature,
                seed=seed,
            )
            result = generate(
                model=model,
                checkpoint=checkpoint,
                settings=settings,
                runtime=runtime,
                autoencoder=autoencoder,
                ncont=ncont,
            )
            if result.info.get("data_fingerprint") != info.fingerprint:
                raise DiladiffError(
                    f"{checkpoint} was trained on other data than the oracle corpus {data_dir}"
                )
            m = oracle.measure(sample_words(tokenizer, result.tokens.numpy()))
            per_seed.append(
                {
                    "model": result.info["model"],
                    "ndisc": ndisc,
                    "seed": seed,
                    "tokens_per_forward": result.timing.tokens_per_forward,
                    "seconds_per_sample": result.timing.seconds_per_sample,
                    **asdict(m),
                }
            )
            if reporter is not None:
                reporter.log(
                    f"{model} ndisc {ndisc} seed {seed}: {result.timing.tokens_per_forward:.2f} "
                    f"tokens/forward, oracle NLL {m.nll_per_token:.4f}"
                )
    floor = measure_floor(
        oracle, data_dir=data_dir, length=info.seq_len - 2, num_samples=floor_samples, seed=12345
    )
    return GapCurve(rows=_average(per_seed, floor), per_seed=per_seed, floor=floor)


def _average(per_seed: list[dict[str, Any]], floor: Floor) -> list[dict[str, Any]]:
    """One row per (model, ndisc): means over seeds, the NLL's standard error over seeds
    (:func:`~diladiff_cli.analysis.verdicts.mean_and_se`: None from one seed)."""
    rows = []
    for key in sorted({(r["model"], r["ndisc"]) for r in per_seed}, key=lambda k: (k[0], -k[1])):
        mine = [r for r in per_seed if (r["model"], r["ndisc"]) == key]
        mean, se = mean_and_se(r["nll_per_token"] for r in mine)
        rows.append(
            {
                "model": key[0],
                "ndisc": key[1],
                "tokens_per_forward": float(np.mean([r["tokens_per_forward"] for r in mine])),
                "oracle_nll": mean,
                "oracle_nll_se": se,  # None from one seed
                "seeds": len(mine),
                "samples_per_seed": mine[0]["num_sequences"],
                "gap": mean - floor.entropy_rate,
                "gap_over_h": mean / floor.entropy_rate - 1.0,
                **{
                    k: float(np.mean([r[k] for r in mine]))
                    for k in ("bad_transitions", "purity", "posterior_max", "topic_kl")
                },
                "oov": float(np.mean([r["oov"] / r["num_sequences"] for r in mine])),
                "seconds_per_sample": float(np.mean([r["seconds_per_sample"] for r in mine])),
            }
        )
    return rows


def write_gap(curve: GapCurve, out: str | Path) -> dict[str, Path]:
    """``gap.csv`` (the curve), ``gap.json`` (with the per-seed measures and the floor)
    and ``gap.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in curve.rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    atomic_write_text(out / "gap.csv", buf.getvalue())
    record = {"floor": asdict(curve.floor), "rows": curve.rows, "per_seed": curve.per_seed}
    atomic_write_json(out / "gap.json", record)
    plot = plot_gap(curve.rows, floor=curve.floor.entropy_rate, path=out / "gap.png")
    return {"csv": out / "gap.csv", "json": out / "gap.json", "plot": plot}
