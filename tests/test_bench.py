"""scripts/bench.py (diladiff_cli.analysis.benchmark) --quick on a micro recipe with every stage: random init when the
recipe's checkpoints are missing, the checkpoints once they exist; the markdown section and
the JSON record hold every training stage and every sampler at every Ndisc with positive
figures; a second run appends instead of overwriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _ae_tiny import build_bert, build_data

from diladiff_cli.analysis.bench_inputs import random_checkpoints, resolve_weights
from diladiff_cli.config import load_recipe
from diladiff_cli.errors import DiladiffError

ROOT = Path(__file__).resolve().parent.parent
MICRO = Path(__file__).parent / "recipes" / "micro.yaml"
TRAIN_STAGES = ["mdlm", "ae", "ae-cached", "prior", "distill-meanflow", "distill-tvm"]


def micro_recipe(root: Path) -> Path:
    """micro.yaml plus seconds-scale ae / prior / distill sections; no checkpoint exists."""
    _, info = build_data(root)
    bert = build_bert(root)
    small_train = {"steps": 2, "batch_size": 4, "lr": 0.001}
    recipe = {
        "extends": str(MICRO),
        "data": {"out": info.out_dir, "seq_len": info.seq_len},
        "mdlm": {"out": str(root / "mdlm.pt")},
        "ae": {
            "out": str(root / "ae.pt"),
            "encoder": {"name": str(bert), "max_len": 48},
            "compressor": {"num_latents": 4, "latent_dim": 8, "width": 32, "depth": 1, "heads": 2},
            "decoder": {"base": str(root / "mdlm.pt"), "cross_attn_after": [0, 1]},
            "augment": {"embed_noise": 0.5, "latent_mask": 0.3, "latent_dropout": 0.2},
            "train": small_train,
        },
        "prior": {
            "out": str(root / "ladiff.pt"),
            "latents": None,
            "autoencoder": str(root / "ae.pt"),
            "model": {"num_latents": 4, "latent_dim": 8, "hidden": 16, "depth": 1, "heads": 2},
            "train": small_train,
        },
        "distill": {
            "teacher": str(root / "ladiff.pt"),
            "out": str(root / "diladiff.pt"),
            "train": small_train,
        },
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_quick_bench_reports_every_stage(tmp_path):
    recipe = micro_recipe(tmp_path)
    out = tmp_path / "docs" / "bench.md"
    args = ["--recipe", str(recipe), "--quick", "--device", "cpu", "--threads", "1"]
    args += ["--ncont-ladiff", "10", "--out", str(out)]
    done = bench(*args)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = json.loads(out.with_suffix(".json").read_text())
    assert len(runs) == 1
    run = runs[0]
    assert run["trained_checkpoints"] is False and "random" in run["weights"]
    assert run["device"] == "cpu (1 threads)" and run["threads"] == 1
    assert run["torch"] and run["git"]
    assert [f["stage"] for f in run["train"]] == TRAIN_STAGES
    for f in run["train"]:
        assert f["steps"] == 2 and f["batch"] == 4 and f["seconds"] > 0, f
        assert f["steps_per_s"] > 0 and f["tokens_per_s"] > 0 and f["dense_params"] > 0, f
        assert (f["latents_per_s"] is not None) == f["stage"].startswith(("prior", "distill"))
        assert f["mfu"] is None  # CPU: no peak figure
        assert f["loss"] == f["loss"], f  # finite: not NaN
    seq_len, ncont = 32, {"mdlm": 0, "ladiff": 10, "diladiff": 5}
    cells = {(f["model"], f["ndisc"]) for f in run["sample"]}
    assert cells == {(m, n) for m in ("mdlm", "ladiff", "diladiff") for n in (2, 8, seq_len)}
    for f in run["sample"]:
        assert f["seconds_per_sample"] > 0 and f["tokens_per_s"] > 0, f
        assert f["tokens_per_s"] == seq_len / f["seconds_per_sample"]
        assert (f["latent_share"] > 0) == (f["model"] != "mdlm"), f
        assert f["ncont"] == ncont[f["model"]]
        assert f["timing"]["latent_share"] == f["latent_share"]

    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert f"on {run['device']}" in text and "random initialisation" in text
    for stage in TRAIN_STAGES:
        assert f"\n| {stage} | " in text
    for model in ("mdlm", "ladiff", "diladiff"):
        assert text.count(f"\n| {model} | {ncont[model]} | ") == 3

    # The recipe's checkpoints now exist (random ones, in the stages' formats): a second
    # run uses them by default, trains on random tokens where no data is prepared, and
    # appends a section and a record.
    random_checkpoints(load_recipe(recipe), tmp_path)
    absent = f"data.out={tmp_path / 'absent'}"
    again = bench(*args, "--stages", "mdlm,ae,sample", "--set", absent)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())
    assert len(runs) == 2 and runs[1]["trained_checkpoints"] is True
    assert runs[1]["data"].startswith("random tokens")
    assert [f["stage"] for f in runs[1]["train"]] == ["mdlm", "ae", "ae-cached"]
    assert all(f["tokens_per_s"] > 0 for f in runs[1]["train"]) and len(runs[1]["sample"]) == 9
    assert out.read_text().startswith(text) and out.read_text().count("\n## ") == 2


def test_use_checkpoints_refuses_missing_ones(tmp_path):
    recipe = load_recipe(MICRO, [f"mdlm.out={tmp_path / 'none.pt'}"])
    with pytest.raises(DiladiffError, match="missing .*none.pt"):
        resolve_weights(recipe, "checkpoints", tmp_path)


def test_gpu_standins_pack_and_build_a_loadable_encoder(tmp_path):
    """scripts/gpu_standins.py: the packed tokenizers are GPT-2's and the uncased WordPiece,
    and the random BERT built from them loads as the autoencoder's frozen encoder."""
    from transformers import AutoTokenizer

    from diladiff_cli.config import EncoderConfig
    from diladiff_cli.encoder import load_encoder

    script = ROOT / "scripts" / "gpu_standins.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    pack = tmp_path / "carry"
    subprocess.run([sys.executable, script, "pack", pack], check=True, env=env)
    gpt2 = AutoTokenizer.from_pretrained(pack / "gpt2-tokenizer")
    assert len(gpt2) == 50257 and gpt2.encode("Hello world") == [15496, 995]
    assert len(AutoTokenizer.from_pretrained(pack / "uncased-wordpiece")) == 30522
    out = tmp_path / "bert"
    cmd = [
        sys.executable,
        script,
        "bert",
        pack,
        out,
        "--layers",
        "2",
        "--hidden",
        "64",
        "--heads",
        "2",
    ]
    subprocess.run(cmd, check=True, env=env)
    encoder, _ = load_encoder(
        EncoderConfig(name=str(out), layer=-1, max_len=32), device=torch.device("cpu")
    )
    assert encoder.hidden_size == 64


def test_the_minilm_travels_in_fp16_and_is_found_through_the_override(tmp_path, monkeypatch):
    """scripts/gpu_standins.py: the shipped MiniLM in fp16 (half the bytes), widened back to
    fp32 there, holds the fp16-rounded weights; DILADIFF_MINILM_DIR points the toolkit at
    such a copy (the encoder and the oracle's word list alike), and a folder without a
    model is refused in one line."""
    import importlib.util

    from safetensors.torch import load_file

    from diladiff_cli import hub
    from diladiff_cli.oracle import bert_whole_words

    spec = importlib.util.spec_from_file_location("gpu_standins", ROOT / "scripts/gpu_standins.py")
    standins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standins)
    shipped = hub.minilm_dir()
    standins.minilm(tmp_path / "m16", dtype="float16")
    standins.minilm(tmp_path / "m32", dtype="float32", source=tmp_path / "m16")
    weights = "model.safetensors"
    assert (tmp_path / "m16" / weights).stat().st_size < 0.55 * (shipped / weights).stat().st_size
    original, widened = load_file(shipped / weights), load_file(tmp_path / "m32" / weights)
    assert widened.keys() == original.keys()
    for key, value in original.items():
        assert widened[key].dtype == torch.float32
        assert torch.equal(widened[key], value.half().float()), key
    assert {p.name for p in (tmp_path / "m32").iterdir()} >= {"config.json", "vocab.txt"}
    words = bert_whole_words()  # the oracle's lexicon is drawn from the MiniLM's vocabulary
    monkeypatch.setenv(hub.MINILM_DIR_ENV, str(tmp_path / "m32"))
    assert hub.minilm_dir() == tmp_path / "m32"
    (tmp_path / "m32" / "vocab.txt").write_text("[PAD]\nthe\n##s\ncat\n")
    assert bert_whole_words() == {"the", "cat"} and len(words) > 20000
    monkeypatch.setenv(hub.MINILM_DIR_ENV, str(tmp_path))
    with pytest.raises(DiladiffError, match=r"DILADIFF_MINILM_DIR=.* holds no model"):
        hub.minilm_dir()
