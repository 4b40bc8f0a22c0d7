"""A small causal LM for the CPU recipes (`train-judge`): the GenPPL judge on
Shakespeare, the autoregressive baseline on the oracle corpus (the embedded default,
whose samples the oracle scores exactly).

The paper scores samples with ``gpt2-large``, which cannot be downloaded here.
The CPU recipes train their own scorer instead: a small Hugging Face causal
LM (``GPT2LMHeadModel`` built from a config) trained on the training split with
the one training loop, then written with ``save_pretrained`` together with the
data's tokenizer. ``AutoModelForCausalLM.from_pretrained(judge_dir)`` and
``AutoTokenizer.from_pretrained(judge_dir)`` load it exactly as they load
``gpt2-large``, so :mod:`diladiff_cli.evaluate` has one code path for both.

Files (``out`` = ``runs/tiny/judge`` by default):

* ``out/``: the Hugging Face directory (config, weights, tokenizer) and
  ``judge.json`` (its validation perplexity, step, data fingerprint), written
  in a staging directory and renamed into place;
* ``out.pt`` (+ ``out.pt.state/``, ``out.metrics.jsonl``): the training
  checkpoint of the loop, so an interrupted run resumes and a finished one is
  skipped.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diladiff_cli.checkpoint import CheckpointMeta, load_checkpoint, load_into
from diladiff_cli.config.data import DataConfig
from diladiff_cli.config.stages import JudgeModelConfig, JudgeStageConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.data import DataRecord, load_data_info
from diladiff_cli.diffusion.masked import TokenBatch
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import replace_directory
from diladiff_cli.mdlm import TokenBlocks
from diladiff_cli.objective import LossOutput, StepContext
from diladiff_cli.structs import to_dict
from diladiff_cli.train import Reporter, evaluate, seed_everything, train

STAGE = "judge"
JUDGE_RECORD = "judge.json"  # in the judge directory: its validation perplexity, step, data


def read_judge_record(scorer: str) -> dict[str, Any] | None:
    """The ``judge.json`` a trained judge carries (None for any other scorer).

    Args:
        scorer: the scorer's name: a judge directory, or any other hub id or path.

    Returns:
        The record, or None when ``scorer`` holds no readable one.
    """
    path = Path(scorer) / JUDGE_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


@dataclass(frozen=True)
class JudgeResult:
    """What `train-judge` produced.

    Attributes:
        out: the Hugging Face directory.
        step: optimizer steps of the weights in it.
        valid_nll: mean NLL per predicted token on the validation blocks (nats).
        valid_ppl: exp(valid_nll): the judge's own perplexity on held-out blocks.
        valid_blocks: validation blocks it was measured on.
        skipped_training: the checkpoint was already complete.
        train_seconds: wall time of the training loop (0 when skipped).
    """

    out: str
    step: int
    valid_nll: float
    valid_ppl: float
    valid_blocks: int
    skipped_training: bool
    train_seconds: float


class CausalLMLoss:
    """Next-token cross-entropy of a Hugging Face causal LM on token blocks.

    Every position but the first is predicted from the ones before it (BOS and the
    EOS separators included: the judge learns document boundaries too).
    """

    def __call__(self, model: nn.Module, batch: TokenBatch, ctx: StepContext) -> LossOutput:
        tokens = batch.tokens  # (B, L)
        # All blocks are full (no padding); the explicit mask only keeps transformers quiet.
        logits = model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits  # (B, L, V)
        # Classes last and rows flat: the log-softmax runs over contiguous rows (over
        # (B, V, L) with the classes strided it took a tenth of a step on 2 cores).
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
        return LossOutput(loss=loss, metrics={"nll": float(loss.detach())})


def build_judge(cfg: JudgeModelConfig, *, vocab_size: int, bos_id: int, eos_id: int) -> nn.Module:
    """A fresh ``GPT2LMHeadModel``.

    Untied input and output embeddings: safetensors (our checkpoints) refuses
    tensors that share memory.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)


def checkpoint_path(out: str | Path) -> Path:
    """The loop's training checkpoint beside the judge directory (``judge`` -> ``judge.pt``)."""
    out = Path(out)
    return out.with_name(out.name + ".pt")


def export_judge(
    model: nn.Module, *, tokenizer_dir: str | Path, out: str | Path, record: dict[str, Any]
) -> Path:
    """Write the judge as a Hugging Face directory, atomically (staging dir + rename).

    Args:
        model: the trained ``GPT2LMHeadModel``.
        tokenizer_dir: the data's tokenizer directory, copied in.
        out: the target directory; an existing one is replaced.
        record: written as ``judge.json``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the judge is an ordinary directory
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()  # save_pretrained's shard bar: noise in the CLI
        model.save_pretrained(str(staging))
        for item in Path(tokenizer_dir).iterdir():
            if item.is_file():
                shutil.copyfile(item, staging / item.name)
        (staging / JUDGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless the write failed
    return out


def train_judge(
    *,
    cfg: JudgeStageConfig,
    data: DataConfig,
    stage_config: dict[str, Any],
    runtime: Runtime,
    precision: Precision = "fp32",
    resume: bool = True,
    reporter: Reporter | None = None,
) -> JudgeResult:
    """Train the judge on ``data``'s training split and export it to ``cfg.out``.

    Its validation perplexity is measured on the validation blocks (all whole
    batches of them) with the trained weights and stored in ``judge.json``, so
    that every GenPPL it produces can be reported beside it.

    Args:
        cfg: model, optimisation and output.
        data: the prepared data (its ``out`` directory).
        stage_config: the section as plain data (stored with the checkpoint; a
            change of it refuses to resume).
        runtime: process topology and device.
        precision: autocast precision.
        resume: continue an interrupted run.
        reporter: progress sink.

    Returns:
        A :class:`JudgeResult` (on every process; only the main one writes).
    """
    info = load_data_info(data.out)
    if cfg.model.n_positions < info.seq_len:
        raise DiladiffError(
            f"judge.model.n_positions {cfg.model.n_positions} is shorter than the data's "
            f"seq_len {info.seq_len}"
        )
    seed_everything(cfg.train.seed)
    model = build_judge(
        cfg.model, vocab_size=info.vocab_size, bos_id=info.bos_id, eos_id=info.eos_id
    )
    ckpt = checkpoint_path(cfg.out)
    objective = CausalLMLoss()
    result = train(
        model=model,
        objective=objective,
        train_data=TokenBlocks(data.out, "train"),
        valid_data=None,  # measured below on the whole validation split
        cfg=cfg.train,
        out=ckpt,
        meta=CheckpointMeta(
            stage=STAGE, step=0, config=stage_config, extra=to_dict(DataRecord.of(info, data.out))
        ),
        runtime=runtime,
        precision=precision,
        resume=resume,
        reporter=reporter,
    )
    # The exported weights are the checkpoint's (the EMA when the recipe asks for one).
    load_into(model, load_checkpoint(ckpt, stage=STAGE).tensors, source=str(ckpt))
    valid_data = TokenBlocks(data.out, "valid")
    batch = min(cfg.train.batch_size, len(valid_data))
    metrics = evaluate(
        model=model,
        objective=objective,
        data=valid_data,
        batch_size=batch,
        batches=len(valid_data) // batch,
        seed=cfg.train.seed,
        runtime=runtime,
        precision=precision,
    )
    blocks = len(valid_data) // batch * batch
    nll = float(metrics["loss"])
    judge = JudgeResult(
        out=cfg.out,
        step=result.step,
        valid_nll=nll,
        valid_ppl=math.exp(nll),
        valid_blocks=blocks,
        skipped_training=result.skipped,
        train_seconds=result.seconds,
    )
    if runtime.is_main:
        record = {
            "valid_ppl": judge.valid_ppl,
            "valid_nll": nll,
            "valid_blocks": blocks,
            "valid_tokens_per_block": info.seq_len - 1,
            "step": result.step,
            "data_dir": str(Path(data.out).resolve()),
            "data_fingerprint": info.fingerprint,
            "config": stage_config,
        }
        export_judge(model.cpu(), tokenizer_dir=info.tokenizer_dir, out=cfg.out, record=record)
    return judge
