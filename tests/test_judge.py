"""The GenPPL judge: trained with the shared loop, exported as a Hugging Face directory that
loads like gpt2-large, its validation perplexity recorded. CPU, seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _evalkit import make_data

from diladiff_cli.config import DataConfig, JudgeModelConfig, JudgeStageConfig, TrainConfig
from diladiff_cli.data import load_blocks, load_data_info
from diladiff_cli.diffusion.masked import TokenBatch
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.judge import CausalLMLoss, build_judge, checkpoint_path, train_judge
from diladiff_cli.metrics import genppl
from diladiff_cli.structs import to_dict

SMALL = JudgeModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("judgedata"), docs=200)


def _cfg(out: Path, steps: int = 4) -> JudgeStageConfig:
    train = TrainConfig(steps=steps, batch_size=8, lr=3e-3, log_every=2, ckpt_every=2)
    return JudgeStageConfig(out=str(out), model=SMALL, train=train)


def _train(cfg: JudgeStageConfig, data_dir: Path):
    return train_judge(
        cfg=cfg,
        data=DataConfig(out=str(data_dir)),
        stage_config=to_dict(cfg),
        runtime=init_runtime("cpu"),
    )


def test_untrained_judge_with_zero_head_scores_log_vocab(data_dir):
    info = load_data_info(data_dir)
    model = build_judge(SMALL, vocab_size=info.vocab_size, bos_id=info.bos_id, eos_id=info.eos_id)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    tokens = load_blocks(data_dir, "train").tokens(np.arange(4))
    out = CausalLMLoss()(model, TokenBatch(tokens=tokens), ctx=None)
    assert float(out.loss.detach()) == pytest.approx(math.log(info.vocab_size), rel=1e-6)


def test_train_export_and_reload_like_gpt2_large(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "judge"
    result = _train(_cfg(out), data_dir)
    assert result.step == 4 and not result.skipped_training
    # exactly the code path used for gpt2-large
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    info = load_data_info(data_dir)
    assert model.config.vocab_size == info.vocab_size and model.config.n_positions == 16
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(info.tokenizer_dir).get_vocab()
    record = json.loads((out / "judge.json").read_text())
    assert record["valid_ppl"] == pytest.approx(result.valid_ppl)
    assert record["step"] == 4 and record["data_fingerprint"] == info.fingerprint
    # the recorded perplexity is the reloaded model's next-token perplexity on the valid blocks
    valid = load_blocks(data_dir, "valid")
    tokens = valid.tokens(np.arange(result.valid_blocks))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:])
    assert math.exp(float(nll)) == pytest.approx(result.valid_ppl, rel=1e-4)
    assert result.valid_ppl < info.vocab_size  # it learned something in 4 steps
    text = tok.decode(tokens[0, 1:-1].tolist())
    assert math.isfinite(genppl([text], model=model, tokenizer=tok).genppl)
    # no staging directory left behind; a finished run is skipped but still exported
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    again = _train(_cfg(out), data_dir)
    assert again.skipped_training and again.valid_ppl == pytest.approx(result.valid_ppl)
    assert checkpoint_path(out).is_file()


def test_judge_shorter_than_the_blocks_is_an_error(data_dir, tmp_path):
    cfg = JudgeStageConfig(
        out=str(tmp_path / "j"),
        model=JudgeModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=8),
        train=TrainConfig(steps=1, batch_size=4),
    )
    with pytest.raises(DiladiffError, match="n_positions 8 is shorter"):
        _train(cfg, data_dir)
    assert not (tmp_path / "j").exists()


def test_cli_train_judge(data_dir, tmp_path):
    import yaml

    recipe = {
        "name": "judgetest",
        "data": {"out": str(data_dir), "seq_len": 16, "tokenizer": {"vocab_size": 300}},
        "mdlm": {"model": {"vocab_size": 300, "hidden": 16, "depth": 1, "heads": 2}, "train": {}},
        "judge": {
            "out": str(tmp_path / "judge"),
            "model": to_dict(SMALL),
            "train": {"steps": 2, "batch_size": 4, "log_every": 1},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "diladiff_cli", "train-judge", str(path), "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert out["step"] == 2 and math.isfinite(out["valid_ppl"])
    assert (tmp_path / "judge" / "model.safetensors").is_file()
