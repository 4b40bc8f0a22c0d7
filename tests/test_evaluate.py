"""Evaluation: GenPPL against hand computation, entropy, MAUVE ordering, EOS policies,
records, and bad input (one line, no partial record). CPU, offline, seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import make_data, make_judge, shuffled_blocks, write_samples

from diladiff_cli import hub
from diladiff_cli.config import EvalConfig, MauveConfig, ScorerConfig
from diladiff_cli.data import load_blocks, load_data_info
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import (
    BlockText,
    EvalRecord,
    Evaluator,
    record_path,
    speed_from_meta,
    write_record,
)
from diladiff_cli.metrics import (
    TextFeaturizer,
    bertscore_f1,
    entropy,
    genppl,
    mauve_score,
    scoring_windows,
    token_entropy,
)

TEXTS = ["the quick brown fox jumps over a lazy dog.", "seven wise owls", "a"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def judge_dir(data_dir, tmp_path_factory) -> Path:
    return make_judge(data_dir, tmp_path_factory.mktemp("judge") / "judge", n_positions=8)


def _load(judge_dir: Path):
    from transformers import AutoModelForCausalLM

    model = hub.load_auto_model(str(judge_dir), AutoModelForCausalLM).eval()
    return model, hub.load_tokenizer(str(judge_dir))


def _cfg(scorer: Path, **kw) -> EvalConfig:
    mauve = MauveConfig(kmeans_redo=1, batch_size=64)
    return EvalConfig(scorer=ScorerConfig(name=str(scorer)), mauve=mauve, **kw)


def _evaluator(cfg: EvalConfig, data_dir: Path) -> Evaluator:
    return Evaluator(cfg=cfg, data_dir=data_dir, device=torch.device("cpu"))


def _evaluate(evaluator: Evaluator, samples: Path) -> EvalRecord:
    """Evaluate one sample file and write its record beside it, as `diladiff eval` does."""
    record = evaluator.evaluate(samples)
    write_record(record, record_path(samples))
    return record


# ----------------------------------------------------------------------------- GenPPL


def test_scoring_windows_predict_every_token_once():
    for length in range(0, 30):
        for context in (2, 3, 8):
            targets = [t for a, b in scoring_windows(length, context) for t in range(a + 1, b)]
            assert targets == list(range(1, length))
            assert all(b - a <= context for a, b in scoring_windows(length, context))


def test_genppl_of_a_uniform_model_is_the_vocabulary_size(judge_dir):
    model, tokenizer = _load(judge_dir)
    with torch.no_grad():  # zero logits: every token has probability 1 / V
        model.lm_head.weight.zero_()
    result = genppl(TEXTS, model=model, tokenizer=tokenizer, batch_size=2)
    assert result.genppl == pytest.approx(model.config.vocab_size, rel=1e-6)
    encoded = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    assert result.num_tokens.tolist() == [len(e) for e in encoded]  # BOS prefixed, not scored


@pytest.mark.parametrize("context", [0, 3, 5])
def test_genppl_equals_hand_computation(judge_dir, context):
    """Token by token: each target predicted from the tokens of its window before it."""
    model, tokenizer = _load(judge_dir)
    ctx = context or model.config.n_positions
    bos = tokenizer.bos_token_id
    total_nll, count = 0.0, 0
    for text in TEXTS:
        ids = [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        for j in range(1, len(ids)):
            start = (j - 1) // (ctx - 1) * (ctx - 1)  # the window whose targets include j
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[start:j]])).logits[0, -1]
            total_nll -= float(torch.log_softmax(logits.double(), -1)[ids[j]])
            count += 1
    result = genppl(TEXTS, model=model, tokenizer=tokenizer, batch_size=3, context=context)
    assert result.total_tokens == count
    assert result.genppl == pytest.approx(math.exp(total_nll / count), rel=1e-5)


def test_genppl_context_beyond_the_model_is_an_error(judge_dir):
    model, tokenizer = _load(judge_dir)
    with pytest.raises(DiladiffError, match="exceeds"):
        genppl(TEXTS, model=model, tokenizer=tokenizer, context=64)


# ----------------------------------------------------------------------------- entropy


def test_entropy_of_known_token_lists():
    assert token_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert token_entropy([7, 7, 7]) == 0.0
    assert token_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert token_entropy([]) == 0.0
    assert token_entropy([5, 5, 5, 9]) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )
    assert entropy([[1, 1, 2, 2], [1, 2, 3, 4]]) == pytest.approx(1.5 * math.log(2))


# ----------------------------------------------------------------------------- MAUVE


def test_mauve_orders_identical_above_shifted_features():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 16)).astype(np.float32)
    same = mauve_score(p, p.copy(), kmeans_redo=1)
    small = mauve_score(p, rng.normal(size=(200, 16)) + 0.5, kmeans_redo=1)
    large = mauve_score(p, rng.normal(size=(200, 16)) + 4.0, kmeans_redo=1)
    assert same.mauve > 0.99
    assert same.mauve > small.mauve > large.mauve
    assert large.mauve < 0.1
    assert same.num_clusters == 20  # mauve's auto rule: n / 10


def test_local_featurizers(judge_dir):
    """mean/last pooling by hand; "mauve" = the package's own featuriser (last token)."""
    from transformers import AutoModel

    base = hub.load_auto_model(str(judge_dir), AutoModel).eval()
    tok = hub.load_tokenizer(str(judge_dir))
    texts = ["owls", "a dog"]
    mine = {
        pooling: TextFeaturizer(
            name=str(judge_dir),
            pooling=pooling,
            max_length=8,
            batch_size=2,
            device=torch.device("cpu"),
        )(texts)
        for pooling in ("mean", "last", "mauve")
    }
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= 8  # no truncation in this comparison
        with torch.no_grad():
            h = base(input_ids=ids).last_hidden_state[0]
        np.testing.assert_allclose(mine["mean"][i], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mine["last"][i], h[-1].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mine["mauve"][i], h[-1].numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- BERTScore


def test_bertscore_with_the_local_minilm():
    refs = ["the cat sat on the mat", "a ship sails at dawn"]
    same = bertscore_f1(refs, refs, batch_size=2)
    other = bertscore_f1(["stocks fell sharply today", "a ship sails at dawn"], refs, batch_size=2)
    assert same == pytest.approx([1.0, 1.0], abs=1e-4)
    assert other[0] < 0.9 and other[1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(DiladiffError, match="paired"):
        bertscore_f1(["a"], refs)


# ----------------------------------------------------------------------------- text and records


def test_eos_policies(data_dir):
    info = load_data_info(data_dir)
    tok = hub.load_tokenizer(info.tokenizer_dir)
    a, b = (
        tok("owls", add_special_tokens=False)["input_ids"],
        tok(" dog", add_special_tokens=False)["input_ids"],
    )
    block = [info.bos_id, *a, info.eos_id, *b, info.mask_id, info.eos_id]
    kw = dict(tokenizer=tok, bos_id=info.bos_id, eos_id=info.eos_id, mask_id=info.mask_id)
    kept, texts = BlockText(policy="strip", **kw)([block])
    assert kept == [a + b] and texts == ["owls dog"]  # text after the first EOS kept
    kept, texts = BlockText(policy="truncate", **kw)([block])
    assert kept == [a] and texts == ["owls"]  # cut at the first EOS


def test_evaluator_writes_a_complete_record(data_dir, judge_dir, tmp_path):
    samples = write_samples(tmp_path / "s.jsonl", shuffled_blocks(data_dir, 24), data_dir)
    evaluator = _evaluator(_cfg(judge_dir), data_dir)
    record = _evaluate(evaluator, samples)
    saved = json.loads(record_path(samples).read_text())
    assert saved["genppl"] == pytest.approx(record.genppl)
    assert math.isfinite(record.genppl) and math.isfinite(record.reference_genppl)
    assert record.scorer_valid_ppl == 42.0  # from the judge's judge.json
    assert 0.0 <= record.mauve <= 1.0
    assert record.mauve_settings["feature_model"] == "minilm"
    assert record.mauve_settings["num_clusters"] == 2 and record.mauve_settings["seed"] == 25
    assert record.mauve_settings["num_references"] == 24
    assert record.scorer["context"] == 8 and record.eos == "strip"
    assert record.speed.tokens_per_forward == 2.0 and record.speed.device.startswith("cpu")
    assert 0 < record.entropy < math.log(16)
    # Real text scored as samples gives the reference numbers: the floor is the same code path.
    refs = load_blocks(data_dir, "valid")
    order = np.random.default_rng(0).permutation(len(refs))[:24]
    real = write_samples(tmp_path / "real.jsonl", refs.tokens(order).numpy(), data_dir)
    again = _evaluate(evaluator, real)  # the references and their scores are reused
    assert again.genppl == pytest.approx(again.reference_genppl, rel=1e-9)
    assert again.entropy == pytest.approx(again.reference_entropy)
    assert again.mauve > 0.99


def _bad(case: str, data_dir: Path, judge_dir: Path, tmp: Path) -> tuple[Path, EvalConfig, str]:
    cfg = _cfg(judge_dir)
    good = shuffled_blocks(data_dir, 8)
    path = tmp / f"{case}.jsonl"
    if case == "empty":
        write_samples(path, good, data_dir)
        path.write_text("")
        return path, cfg, "is empty"
    if case == "other_tokenizer_vocab":
        return write_samples(path, good, data_dir, vocab_size=50258), cfg, "another tokenizer"
    if case == "other_tokenizer_ids":
        bad = good.copy()
        bad[0, 3] = 5000
        return write_samples(path, bad, data_dir, vocab_size=None), cfg, "another tokenizer"
    if case == "other_length":
        return write_samples(path, good[:, :12], data_dir), cfg, "12 tokens long"
    if case == "too_few_references":
        n = len(load_blocks(data_dir, "valid")) + 1
        return write_samples(path, good, data_dir), replace(cfg, num_references=n), "fewer than"
    if case == "no_meta":
        write_samples(path, good, data_dir)
        path.with_name(path.stem + ".meta.json").unlink()
        return path, cfg, "no timing record"
    if case == "scorer_missing":
        cfg = replace(cfg, scorer=ScorerConfig(name=str(tmp / "no" / "judge")))
        return write_samples(path, good, data_dir), cfg, "train-judge"
    if case == "scorer_broken":
        broken = tmp / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        cfg = replace(cfg, scorer=ScorerConfig(name=str(broken)))
        return write_samples(path, good, data_dir), cfg, "cannot load"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "other_tokenizer_vocab",
        "other_tokenizer_ids",
        "other_length",
        "too_few_references",
        "no_meta",
        "scorer_missing",
        "scorer_broken",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, data_dir, judge_dir, tmp_path):
    path, cfg, needle = _bad(case, data_dir, judge_dir, tmp_path)
    with pytest.raises(DiladiffError, match=needle) as err:
        _evaluate(_evaluator(cfg, data_dir), path)
    assert "\n" not in str(err.value)
    assert not record_path(path).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_speed_from_meta():
    from _evalkit import timing

    speed = speed_from_meta({"timing": timing(latent_share=0.05, forward_passes_latent=5.0)})
    assert speed.latent_share == 0.05 and speed.forward_passes_latent == 5.0
    with pytest.raises(DiladiffError, match="no timing record"):
        speed_from_meta({})


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diladiff_cli", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def _recipe(tmp: Path, data_dir: Path, judge_dir: Path) -> Path:
    import yaml

    recipe = {
        "name": "evaltest",
        "data": {"out": str(data_dir), "seq_len": 16, "tokenizer": {"vocab_size": 300}},
        "mdlm": {"model": {"vocab_size": 300, "hidden": 16, "depth": 1, "heads": 2}, "train": {}},
        "eval": {"scorer": {"name": str(judge_dir)}, "mauve": {"kmeans_redo": 1}},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_eval(data_dir, judge_dir, tmp_path):
    recipe = _recipe(tmp_path, data_dir, judge_dir)
    samples = write_samples(tmp_path / "s.jsonl", shuffled_blocks(data_dir, 12), data_dir)
    proc = _cli("eval", str(samples), "--recipe", str(recipe), "--no-mauve", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(record_path(samples).read_text())
    assert record["mauve"] is None and math.isfinite(record["genppl"])
    assert record["scorer_valid_ppl"] == 42.0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = _cli("eval", str(empty), "--recipe", str(recipe), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: sample file {empty} is empty"
    assert not record_path(empty).exists()
