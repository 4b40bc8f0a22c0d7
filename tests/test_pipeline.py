"""The Python API (`Pipeline`) and the latent-space operations on seconds-scale parts:
given tokens never change, interpolation ends decode like their texts' own latents, the
same seed gives the same samples, the API and `diladiff sample` / `eval` agree, and bad
input is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _ae_tiny import TinyEnv, ae_config, tiny_env, trained_ae  # noqa: F401  (fixtures)
from _clikit import invoke

from diladiff_cli import hub
from diladiff_cli.config import (
    CorpusConfig,
    DataConfig,
    DistillStageConfig,
    EvalConfig,
    LatentDiTConfig,
    MauveConfig,
    PriorStageConfig,
    ScorerConfig,
    TokenizerConfig,
    TrainConfig,
)
from diladiff_cli.config.data import OracleConfig
from diladiff_cli.data import DataRecord, load_blocks, load_data_info, prepare
from diladiff_cli.diffusion.masked import LogLinearSchedule, sample_masked
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import Evaluator
from diladiff_cli.pipeline import Pipeline
from diladiff_cli.prior import distill, train_prior
from diladiff_cli.sample import Prompt, fixed_tokens, latent_path, meta_path
from diladiff_cli.structs import to_dict

STEPS = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=2, eval_batches=1)
NET = LatentDiTConfig(num_latents=4, latent_dim=8, hidden=16, depth=1, heads=2, cond_dim=8)
TEMPLATE = "the [MASK] rode over the [MASK*2] to"
TEXT_A, TEXT_B = "the king rode over the hills.", "seven ships waited for the wind."


@pytest.fixture(scope="module")
def run_dir(tiny_env: TinyEnv, trained_ae, tmp_path_factory) -> Path:  # noqa: F811
    """A run directory: mdlm.pt, ae.pt, and a prior and a student trained on its latents."""
    root = tmp_path_factory.mktemp("run")
    shutil.copy(tiny_env.base, root / "mdlm.pt")
    shutil.copy(trained_ae, root / "ae.pt")
    runtime = init_runtime("cpu")
    prior = PriorStageConfig(
        model=NET,
        train=STEPS,
        out=str(root / "ladiff.pt"),
        latents=None,  # encode on the fly
        autoencoder=str(root / "ae.pt"),
    )
    train_prior(cfg=prior, data_dir=tiny_env.data.out, runtime=runtime)
    student = DistillStageConfig(teacher=prior.out, out=str(root / "diladiff.pt"), train=STEPS)
    distill(cfg=student, data_dir=tiny_env.data.out, runtime=runtime)
    return root


@pytest.fixture(scope="module")
def recipe(run_dir: Path, tiny_env: TinyEnv, tmp_path_factory) -> Path:  # noqa: F811
    """A recipe whose stages' outputs are the run directory's parts."""
    ae = ae_config(base=tiny_env.base, bert=tiny_env.bert, out=run_dir / "ae.pt")
    raw = {
        "name": "pipeline",
        "data": to_dict(tiny_env.data),
        "mdlm": {"out": str(run_dir / "mdlm.pt"), "model": {"vocab_size": 300}, "train": {}},
        "ae": to_dict(ae),
        "prior": {
            "out": str(run_dir / "ladiff.pt"),
            "model": to_dict(NET),
            "latents": None,
            "autoencoder": str(run_dir / "ae.pt"),
        },
        "distill": {"teacher": str(run_dir / "ladiff.pt"), "out": str(run_dir / "diladiff.pt")},
        "sample": {
            "checkpoint": str(run_dir / "mdlm.pt"),
            "autoencoder": str(run_dir / "ae.pt"),
            "prior": str(run_dir / "ladiff.pt"),
            "student": str(run_dir / "diladiff.pt"),
            "num_samples": 3,
            "batch_size": 2,
            "ndisc": 4,
            "out": str(run_dir / "samples" / "mdlm.jsonl"),
        },
    }
    path = tmp_path_factory.mktemp("recipe") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def pipe(run_dir: Path) -> Pipeline:
    return Pipeline.load(run_dir, device="cpu")


def _rows(out: Path, key: str) -> list:
    return [json.loads(line)[key] for line in out.read_text().splitlines()]


# ----------------------------------------------------------------------------- given tokens


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_the_sampler_never_changes_a_given_token(selection):
    vocab, seq_len, mask = 11, 12, 10

    def model_fn(tokens: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(tokens.sum()))  # a function of its input
        return torch.randn(*tokens.shape, vocab, generator=g)

    def draw(fixed: torch.Tensor | None):
        return sample_masked(
            model_fn,
            batch_size=3,
            seq_len=seq_len,
            mask_id=mask,
            steps=4,
            schedule=LogLinearSchedule(),
            selection=selection,
            generator=torch.Generator().manual_seed(1),
            device="cpu",
            fixed=fixed,
        )

    fixed = torch.full((seq_len,), mask)
    fixed[0], fixed[3:6], fixed[-1] = 0, torch.tensor([4, 5, 6]), 1
    out = draw(fixed)
    given = fixed != mask
    assert (out.tokens[:, given] == fixed[given]).all() and not (out.tokens == mask).any()
    if selection == "confidence":  # exactly the free positions are unmasked, over the steps
        assert sum(out.unmasked_per_step) == 3 * int((~given).sum())
    # Nothing given is the sampler as it was: all-mask blocks, the same draws.
    assert torch.equal(draw(None).tokens, draw(torch.full((seq_len,), mask)).tokens)


@pytest.mark.parametrize("model", ["mdlm", "ladiff", "diladiff"])
def test_prefix_and_template_tokens_are_kept(pipe, tiny_env: TinyEnv, model):  # noqa: F811
    tokenizer = hub.load_tokenizer(tiny_env.info.tokenizer_dir)
    data = DataRecord.of(tiny_env.info, tiny_env.data.out)
    for prompt in (Prompt(prefix="the king and the queen"), Prompt(template=TEMPLATE)):
        fixed = fixed_tokens(prompt, tokenizer=tokenizer, data=data)
        given = fixed != data.mask_id
        assert given[0] and given[-1] and 3 <= int((~given).sum()) < data.seq_len - 2
        out = pipe.generate(
            3, model=model, ncont=2, ndisc=4, batch_size=2, seed=1, **prompt.record()
        )
        assert out.tokens.shape == (3, data.seq_len)
        assert (out.tokens[:, given] == fixed[given]).all()
        assert not (out.tokens == data.mask_id).any()
        assert out.info["prompt"] == prompt.record()


def test_template_spans_take_as_many_tokens_as_they_say(tiny_env: TinyEnv):  # noqa: F811
    tokenizer = hub.load_tokenizer(tiny_env.info.tokenizer_dir)
    data = DataRecord.of(tiny_env.info, tiny_env.data.out)
    one = fixed_tokens(Prompt(template="the [MASK] sea"), tokenizer=tokenizer, data=data)
    three = fixed_tokens(Prompt(template="the [MASK*3] sea"), tokenizer=tokenizer, data=data)
    the = len(tokenizer("the", add_special_tokens=False)["input_ids"])
    sea = len(tokenizer(" sea", add_special_tokens=False)["input_ids"])
    assert (one[1 + the] == data.mask_id) and (one[2 + the] != data.mask_id)
    assert (three[1 + the : 4 + the] == data.mask_id).all()
    assert torch.equal(three[4 + the : 4 + the + sea], one[2 + the : 2 + the + sea])


# ----------------------------------------------------------------------------- interpolation


def test_latent_path_ends_are_exact_and_slerp_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)  # equal norms
    for path in ("slerp", "lerp"):
        z = latent_path(a, b, points=5, path=path)
        assert z.shape == (5, 4, 8) and torch.equal(z[0], a) and torch.equal(z[-1], b)
    slerp = latent_path(a, b, points=5, path="slerp")
    torch.testing.assert_close(slerp.norm(dim=-1), a.norm(dim=-1).expand(5, 4))
    middle = latent_path(a, b, points=3, path="lerp")[1]
    torch.testing.assert_close(middle, (a + b) / 2)
    assert (middle.norm(dim=-1) < a.norm(dim=-1)).all()  # what slerp avoids
    parallel = latent_path(a, 2 * a, points=3, path="slerp")  # no angle: lerp's weights
    torch.testing.assert_close(parallel[1], 1.5 * a)


@pytest.mark.parametrize("path", ["slerp", "lerp"])
def test_interpolation_ends_decode_like_their_own_latents(pipe, path):
    texts = pipe.interpolate(TEXT_A, TEXT_B, points=4, path=path, ndisc=4, seed=3)
    assert len(texts) == 4
    assert pipe.decode(pipe.encode(TEXT_A), ndisc=4, seed=3) == texts[:1]
    assert pipe.decode(pipe.encode(TEXT_B), ndisc=4, seed=3) == texts[-1:]
    assert pipe.interpolate(TEXT_A, TEXT_B, points=4, path=path, ndisc=4, seed=3) == texts


def test_encode_is_encode_text(pipe, recipe):
    result = invoke("encode", str(recipe), "--text", TEXT_A, "--device", "cpu")
    assert result.exit_code == 0, result.stderr[-2000:]
    record = json.loads(result.stdout[result.stdout.index("{") :])
    z = pipe.encode([TEXT_A])
    assert list(z.shape) == record["shape"]
    assert [[[round(v, 4) for v in row] for row in zz] for zz in z.tolist()] == record["latents"]


# ----------------------------------------------------------------------------- the same path


def test_the_same_seed_gives_the_same_samples(pipe):
    a = pipe.generate(3, model="diladiff", ndisc=4, batch_size=2, seed=7)
    b = pipe.generate(3, model="diladiff", ndisc=4, batch_size=2, seed=7)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts


def test_pipeline_generate_and_interpolate_are_diladiff_sample(recipe, run_dir, tmp_path):
    common = ("--ndisc", "4", "--batch-size", "2", "--device", "cpu")
    plain, filled, path = tmp_path / "d.jsonl", tmp_path / "t.jsonl", tmp_path / "i.jsonl"
    for out, extra in ((plain, ()), (filled, ("--template", TEMPLATE))):
        args = ("--model", "diladiff", "--num-samples", "3", "--seed", "5", "--out", str(out))
        result = invoke("sample", str(recipe), *common, *args, *extra)
        assert result.exit_code == 0, result.stderr[-2000:]
    between = ("--from-text", TEXT_A, "--to-text", TEXT_B, "--points", "3", "--path", "lerp")
    result = invoke("sample", str(recipe), *common, *between, "--seed", "2", "--out", str(path))
    assert result.exit_code == 0, result.stderr[-2000:]
    record = json.loads(meta_path(path).read_text())
    assert record["interpolation"]["path"] == "lerp" and record["interpolation"]["t"] == [0, 0.5, 1]
    assert record["settings"]["batch_size"] == 1
    assert json.loads(meta_path(filled).read_text())["prompt"] == {"template": TEMPLATE}
    for source in (recipe, run_dir):
        pipe = Pipeline.load(source, device="cpu")
        got = pipe.generate(3, model="diladiff", ndisc=4, batch_size=2, seed=5)
        assert got.tokens.tolist() == _rows(plain, "tokens")
        got = pipe.generate(3, model="diladiff", ndisc=4, batch_size=2, seed=5, template=TEMPLATE)
        assert got.tokens.tolist() == _rows(filled, "tokens")
        texts = pipe.interpolate(TEXT_A, TEXT_B, points=3, path="lerp", ndisc=4, seed=2)
        assert texts == _rows(path, "text")


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> Path:
    """A run directory holding only a prepared oracle corpus (data/)."""
    root = tmp_path_factory.mktemp("oracle-run")
    oracle = OracleConfig(num_documents=40, num_topics=4, seed=3)
    prepare(
        DataConfig(
            corpus=CorpusConfig(source="oracle", valid_fraction=0.25, oracle=oracle),
            tokenizer=TokenizerConfig(vocab_size=1650),
            seq_len=16,
            out=str(root / "data"),
        )
    )
    return root


def test_score_is_what_eval_computes_on_the_oracle_corpus(oracle_run, tmp_path):
    data_dir = oracle_run / "data"
    info = load_data_info(data_dir)
    tokens = load_blocks(data_dir, "valid").tokens(np.arange(4)).numpy()  # (4, L)
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"tokens": row}) + "\n" for row in tokens.tolist()))
    timing = {
        "forward_passes_discrete": 8.0, "tokens_per_forward": 2.0, "seconds_per_sample": 0.1,
        "seconds_total": 0.4,
    }  # fmt: skip
    meta = {"model": "mdlm", "timing": timing, "data_fingerprint": info.fingerprint}
    meta_path(samples).write_text(json.dumps(meta))
    cfg = EvalConfig(
        scorer=ScorerConfig(name="oracle"), mauve=MauveConfig(enabled=False), num_references=4
    )
    record = Evaluator(cfg=cfg, data_dir=data_dir, device=torch.device("cpu")).evaluate(samples)
    texts = hub.load_tokenizer(info.tokenizer_dir).batch_decode(
        tokens.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    scores = Pipeline.load(oracle_run, device="cpu").score(texts)
    assert scores.scorer == "oracle" and scores.num_texts == 4
    assert scores.oracle is not None and scores.oracle == record.oracle
    assert scores.genppl == record.genppl and scores.genppl_tokens == record.genppl_tokens
    assert scores.entropy == pytest.approx(record.entropy)


def test_import_stays_light_and_pipeline_is_exported_lazily():
    code = "import sys, diladiff_cli; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    import diladiff_cli

    assert diladiff_cli.Pipeline is Pipeline
    with pytest.raises(AttributeError):
        diladiff_cli.Nothing  # noqa: B018


# ----------------------------------------------------------------------------- bad input


def test_a_run_directory_with_a_missing_part(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "ae.pt", partial / "ae.pt")
    pipe = Pipeline.load(partial, device="cpu")
    with pytest.raises(DiladiffError) as err:
        pipe.generate(2, model="diladiff")
    message = str(err.value)
    assert "\n" not in message and "distilled student (DiLaDiff) is missing" in message
    assert str(partial / "diladiff.pt") in message and "diladiff distill" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiladiffError, match="is not a run directory: none of mdlm.pt"):
        Pipeline.load(tmp_path / "empty")
    with pytest.raises(DiladiffError, match="no such recipe or run directory"):
        Pipeline.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prefix", "the king and the queen " * 12], "longer than the 30 a block holds"),
        (["--model", "diladiff", "--template", "the king and the queen"], "no masked span"),
        (["--to-text", TEXT_B], "--to-text needs --from-text"),
        (["--from-text", TEXT_A, "--to-text", TEXT_B, "--points", "1"], "--points must be at"),
    ],
)
def test_bad_prompts_and_paths_are_one_line_errors(recipe, args, needle):
    result = invoke("sample", str(recipe), "--device", "cpu", *args)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert needle in errors[0], errors[0]
