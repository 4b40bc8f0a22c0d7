"""Paper-scale recipes: every one validates with --dry-run, and each runs shrunk on CPU
through the same code path, with local stand-ins for the hub parts (a local text corpus,
the real GPT-2 tokenizer files, an MDLM checkpoint directory with the released names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _clikit import cli

from diladiff_cli.config import load_recipe
from diladiff_cli.hub import gpt2_tokenizer_dir
from diladiff_cli.models.dit import DiT, DiTConfig

PAPER = sorted((Path(__file__).parent.parent / "recipes" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_paper_recipe_validates(recipe, tmp_path):
    r = load_recipe(recipe)
    assert r.data.seq_len == 1024 and r.data.tokenizer.name == "gpt2"
    assert r.mdlm.model.vocab_size == 50258 and r.mdlm.init_from == "kuleshov-group/mdlm-owt"
    proc = cli("train-mdlm", str(recipe), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kuleshov-group/mdlm-owt" in proc.stdout


def fake_released_mdlm(path: Path, cfg: DiTConfig) -> None:
    """A directory shaped like the released checkpoint (``backbone.`` names, HF config)."""
    path.mkdir()
    torch.manual_seed(0)
    model = DiT.from_config(cfg)
    sd = {
        f"backbone.{k}": v.clone() + 0.01 * torch.randn_like(v)
        for k, v in model.state_dict().items()
    }
    safetensors.torch.save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(
        json.dumps(
            {
                "vocab_size": cfg.vocab_size,
                "hidden_dim": cfg.hidden,
                "n_blocks": cfg.depth,
                "n_heads": cfg.heads,
                "cond_dim": cfg.cond_dim,
                "model_length": cfg.max_len,
                "time_conditioning": False,
            }
        )
    )


@pytest.mark.parametrize(
    "recipe", [p for p in PAPER if p.name == "mdlm_owt.yaml"], ids=lambda p: p.name
)
def test_paper_mdlm_runs_shrunk(recipe, tmp_path):
    corpus = tmp_path / "owt_standin.jsonl"
    texts = [
        f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(60)
    ]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    gpt2 = gpt2_tokenizer_dir(tmp_path)
    small = DiTConfig(
        vocab_size=50258, hidden=16, depth=1, heads=2, cond_dim=8, max_len=32, dropout=0.1
    )
    fake_released_mdlm(tmp_path / "mdlm-owt", small)
    shrink = [
        f"data.corpus.source={corpus}",
        "data.corpus.valid_fraction=0.2",
        f"data.tokenizer.name={gpt2}",
        "data.seq_len=32",
        "data.num_proc=1",
        f"mdlm.init_from={tmp_path / 'mdlm-owt'}",
        "mdlm.model.hidden=16",
        "mdlm.model.depth=1",
        "mdlm.model.heads=2",
        "mdlm.model.cond_dim=8",
        "mdlm.model.max_len=32",
        "mdlm.train.steps=2",
        "mdlm.train.batch_size=4",
        "mdlm.train.micro_batch_size=2",
        "mdlm.train.eval_batches=1",
        "mdlm.train.compile=false",
        "sample.num_samples=2",
        "sample.ndisc=4",
    ]
    sets = [x for s in shrink for x in ("--set", s)]
    assert cli("prepare", str(recipe), *sets, cwd=tmp_path).returncode == 0
    proc = cli("train-mdlm", str(recipe), *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("sample", str(recipe), *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "runs/paper/samples/mdlm_T1024.jsonl").read_text().splitlines()
    assert len(rows) == 2
