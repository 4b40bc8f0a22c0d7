"""Hub-format export (`diladiff export`): a tiny trained pipeline written as Hugging
Face-style directories and read back as diladiff checkpoints, exactly: the same tensors
and metadata, the same samples for the same seed. CPU, seconds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from _ae_tiny import TinyEnv, tiny_env, trained_ae  # noqa: F401  (fixtures)

from diladiff_cli.checkpoint import (
    load_checkpoint,
    meta_document,
    read_meta,
    save_weights,
)
from diladiff_cli.config import (
    DistillStageConfig,
    JudgeModelConfig,
    LatentDiTConfig,
    PriorStageConfig,
    TrainConfig,
)
from diladiff_cli.config.stages import SampleConfig
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.export import (
    COMPONENTS,
    PipelinePaths,
    export_pipeline,
    load_exported,
    read_component,
)
from diladiff_cli.judge import build_judge, export_judge
from diladiff_cli.latent_shards import file_sha256
from diladiff_cli.prior import distill, train_prior
from diladiff_cli.sample import SampleSettings, generate

STEPS = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=2, eval_batches=1)
SAMPLE = SampleConfig(ndisc=4, selection="confidence", temperature=0.9, batch_size=2)
MEASURED = {"model": "diladiff", "ndisc": 4, "oracle_nll": 6.4661, "timing": {"latent_share": 0.06}}


@pytest.fixture(scope="module")
def pipeline(tiny_env: TinyEnv, trained_ae, tmp_path_factory) -> PipelinePaths:  # noqa: F811
    """A 3-step autoencoder, a 2-step prior on its latents, a 2-step student and an
    untrained 1-layer judge."""
    root = tmp_path_factory.mktemp("export-run")
    runtime = init_runtime("cpu")
    net = LatentDiTConfig(num_latents=4, latent_dim=8, hidden=16, depth=1, heads=2, cond_dim=8)
    prior = PriorStageConfig(
        model=net,
        train=STEPS,
        out=str(root / "ladiff.pt"),
        latents=None,  # encode on the fly
        autoencoder=str(trained_ae),
    )
    train_prior(cfg=prior, data_dir=tiny_env.data.out, runtime=runtime)
    student = DistillStageConfig(teacher=prior.out, out=str(root / "diladiff.pt"), train=STEPS)
    distill(cfg=student, data_dir=tiny_env.data.out, runtime=runtime)
    info = tiny_env.info
    torch.manual_seed(0)
    judge = build_judge(
        JudgeModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32),
        vocab_size=info.vocab_size,
        bos_id=info.bos_id,
        eos_id=info.eos_id,
    )
    export_judge(
        judge,
        tokenizer_dir=info.tokenizer_dir,
        out=root / "judge",
        record={"step": 3, "valid_tokens_per_block": 31},
    )
    return PipelinePaths(
        mdlm=tiny_env.base,
        autoencoder=Path(trained_ae),
        prior=Path(prior.out),
        student=Path(student.out),
        judge=root / "judge",
        data=Path(tiny_env.data.out),
    )


@pytest.fixture(scope="module")
def exported(pipeline: PipelinePaths, tmp_path_factory) -> Path:
    return export_pipeline(
        paths=pipeline,
        out_dir=tmp_path_factory.mktemp("export") / "out",
        recipe_text="name: tiny-export\n",
        recipe_name="tiny-export",
        description="A seconds-scale pipeline.",
        sample=SAMPLE,
        measured=MEASURED,
    )


@pytest.fixture(scope="module")
def loaded(exported: Path, tmp_path_factory) -> PipelinePaths:
    return load_exported(exported, cache_dir=tmp_path_factory.mktemp("cache"))


def test_layout(exported: Path):
    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    for folder in ("mdlm", "autoencoder", "prior", "student"):
        assert {f"{folder}/config.json", f"{folder}/model.safetensors"} <= files
    assert {"README.md", "export.json", "recipe.yaml", "tokenizer/tokenizer.json"} <= files
    assert {"ar/config.json", "ar/model.safetensors", "ar/judge.json"} <= files
    assert (exported / "recipe.yaml").read_text() == "name: tiny-export\n"


def test_config_json_is_the_metadata_and_weights_the_tensors(pipeline, exported):
    for c in COMPONENTS:
        original = load_checkpoint(getattr(pipeline, c.field), stage=c.stage)
        doc = json.loads((exported / c.folder / "config.json").read_text())
        assert doc == meta_document(original.meta)
        tensors, meta = read_component(exported / c.folder)
        assert meta == original.meta
        assert tensors.keys() == original.tensors.keys()
        for name, tensor in original.tensors.items():
            assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor)


def test_rebuilt_from_the_export_a_checkpoint_is_the_original_file(pipeline, exported, tmp_path):
    for c in COMPONENTS:
        tensors, meta = read_component(exported / c.folder)
        save_weights(tmp_path / c.file, tensors, meta)
        assert (tmp_path / c.file).read_bytes() == getattr(pipeline, c.field).read_bytes()


def test_loaded_checkpoints_equal_the_originals_with_their_files_relocated(pipeline, loaded):
    sha = {c.field: file_sha256(getattr(pipeline, c.field)) for c in COMPONENTS}
    moved = {
        sha[c.field]: {
            "path": str(getattr(loaded, c.field)),
            "sha256": file_sha256(getattr(loaded, c.field)),
        }
        for c in COMPONENTS
    }
    for c in COMPONENTS:
        original = load_checkpoint(getattr(pipeline, c.field), stage=c.stage)
        copy = load_checkpoint(getattr(loaded, c.field), stage=c.stage)
        for name, tensor in original.tensors.items():
            assert copy.tensors[name].dtype == tensor.dtype
            assert torch.equal(copy.tensors[name], tensor)
        assert copy.tensors.keys() == original.tensors.keys()
        a, b = original.meta, copy.meta
        assert (a.stage, a.step, a.config, a.versions) == (b.stage, b.step, b.config, b.versions)
        extra = json.loads(json.dumps(a.extra))
        if "tokenizer" in extra:
            extra["tokenizer"] = str(loaded.tokenizer)
        if c.field == "prior":
            extra["autoencoder"].update(moved[sha["autoencoder"]])
        if c.field == "student":
            extra["teacher"].update(moved[sha["prior"]])
            extra["latent"]["autoencoder"].update(moved[sha["autoencoder"]])
        assert b.extra == extra
    assert loaded.data is None and (loaded.judge / "model.safetensors").is_file()
    assert sorted(p.name for p in loaded.tokenizer.iterdir()) == sorted(
        p.name for p in (pipeline.data / "tokenizer").iterdir()
    )


@pytest.mark.parametrize("model", ["mdlm", "ladiff", "diladiff", "ar"])
def test_same_samples_for_the_same_seed(pipeline, loaded, model):
    def draw(paths: PipelinePaths):
        checkpoint = {
            "mdlm": paths.mdlm,
            "ladiff": paths.prior,
            "diladiff": paths.student,
            "ar": paths.judge,
        }[model]
        return generate(
            model=model,
            checkpoint=checkpoint,
            autoencoder=paths.autoencoder if model in ("ladiff", "diladiff") else None,
            ncont=2 if model in ("ladiff", "diladiff") else None,
            settings=SampleSettings(num_samples=3, batch_size=2, ndisc=4, seed=5),
            runtime=init_runtime("cpu"),
        )

    a, b = draw(pipeline), draw(loaded)
    assert a.texts == b.texts and torch.equal(a.tokens, b.tokens)


def test_model_card(exported: Path, pipeline):
    card = (exported / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: diladiff" in front and "license: unknown" in front
    assert "- diladiff" in front
    assert "# tiny-export" in body and "A seconds-scale pipeline." in body
    assert "`recipe.yaml`" in body
    for c in COMPONENTS:
        meta = read_meta(getattr(pipeline, c.field))
        train = meta.config.get("train")  # _ae_tiny's random MDLM was never trained
        steps = f"{meta.step} of {train['steps']}" if train else str(meta.step)
        assert f"| {meta.stage} | {steps} |" in body
    assert "float64" in body
    assert "Ndisc = 4" in body and "selection = confidence" in body
    assert "temperature = 0.9" in body
    assert "Ncont = 5" in body and "Ncont = 200" in body  # the student's and the prior's
    assert "| oracle_nll | 6.466 |" in body and "| timing.latent_share | 0.06 |" in body


def test_load_again_reuses_the_cache(exported: Path, loaded: PipelinePaths):
    stamp = loaded.autoencoder.stat().st_mtime_ns
    again = load_exported(exported, cache_dir=loaded.mdlm.parent.parent)
    assert again == loaded and loaded.autoencoder.stat().st_mtime_ns == stamp


def test_hub_id_from_the_offline_cache(exported: Path, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-diladiff"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    paths = load_exported("someone/tiny-diladiff", cache_dir=tmp_path / "cache")
    assert read_meta(paths.student).stage == "distill"
    with pytest.raises(DiladiffError) as err:
        load_exported("someone/not-cached", cache_dir=tmp_path / "cache")
    assert "someone/not-cached" in str(err.value) and "\n" not in str(err.value)


def test_export_refuses_a_non_empty_directory_unless_asked(pipeline, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DiladiffError, match="not empty") as err:
        export_pipeline(paths=pipeline, out_dir=out)
    assert "\n" not in str(err.value) and (out / "keep.txt").is_file()
    export_pipeline(paths=pipeline, out_dir=out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "export.json").is_file()
    assert "recipe.yaml" not in {p.name for p in out.iterdir()}


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


def test_export_bad_components(pipeline, tmp_path):
    missing = tmp_path / "nowhere" / "ladiff.pt"
    with pytest.raises(DiladiffError) as err:
        export_pipeline(paths=dataclasses.replace(pipeline, prior=missing), out_dir=tmp_path / "a")
    _one_line(err, "latent prior", str(missing))
    with pytest.raises(DiladiffError) as err:  # the prior given as the student
        export_pipeline(
            paths=dataclasses.replace(pipeline, student=pipeline.prior), out_dir=tmp_path / "b"
        )
    _one_line(err, "distilled student", "'prior'")
    other = tmp_path / "other-ae.pt"  # the same weights, other bytes: another autoencoder
    ckpt = load_checkpoint(pipeline.autoencoder, stage="ae")
    meta = ckpt.meta
    save_weights(other, ckpt.tensors, dataclasses.replace(meta, step=meta.step + 1))
    with pytest.raises(DiladiffError) as err:
        export_pipeline(
            paths=dataclasses.replace(pipeline, autoencoder=other), out_dir=tmp_path / "c"
        )
    _one_line(err, "another autoencoder", str(pipeline.prior))
    with pytest.raises(DiladiffError) as err:
        export_pipeline(
            paths=dataclasses.replace(pipeline, judge=tmp_path / "no-judge"), out_dir=tmp_path / "d"
        )
    _one_line(err, "judge", "no-judge")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"other-ae.pt"}  # nothing half-written


@pytest.fixture
def damaged(exported: Path, tmp_path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    return copy


def test_exported_dir_missing_a_part(damaged: Path, tmp_path):
    (damaged / "autoencoder" / "model.safetensors").unlink()
    with pytest.raises(DiladiffError) as err:
        load_exported(damaged, cache_dir=tmp_path / "cache")
    _one_line(err, "autoencoder", str(damaged / "autoencoder" / "model.safetensors"))
    assert not (tmp_path / "cache").exists()


def test_exported_dir_without_its_tokenizer(damaged: Path, tmp_path):
    shutil.rmtree(damaged / "tokenizer")
    with pytest.raises(DiladiffError) as err:
        load_exported(damaged, cache_dir=tmp_path / "cache")
    _one_line(err, "tokenizer", str(damaged / "tokenizer"))


def test_config_json_not_valid_json(damaged: Path, tmp_path):
    (damaged / "prior" / "config.json").write_text('{"stage": "prior", ')
    with pytest.raises(DiladiffError) as err:
        load_exported(damaged, cache_dir=tmp_path / "cache")
    _one_line(err, str(damaged / "prior" / "config.json"), "not valid JSON")


def test_config_json_edited(damaged: Path, tmp_path):
    config = damaged / "student" / "config.json"
    text = config.read_text()
    assert '"step": 2,' in text
    config.write_text(text.replace('"step": 2,', '"step": 3,', 1))  # the same size
    with pytest.raises(DiladiffError) as err:
        load_exported(damaged, cache_dir=tmp_path / "cache")
    _one_line(err, str(config), "damaged or was edited")


def test_not_an_export(tmp_path):
    with pytest.raises(DiladiffError) as err:
        load_exported(tmp_path, cache_dir=tmp_path / "cache")
    _one_line(err, str(tmp_path), "export.json")
    with pytest.raises(DiladiffError) as err:
        load_exported(tmp_path / "missing" / "dir", cache_dir=tmp_path / "cache")
    _one_line(err, "no such directory")


def test_cli_export_of_a_run_directory_and_pipeline_load_give_the_same_samples(
    pipeline: PipelinePaths, tmp_path
):
    from _clikit import invoke

    from diladiff_cli.pipeline import Pipeline

    run = tmp_path / "run"  # a run directory: the parts under their standard names
    run.mkdir()
    for name, path in (("mdlm.pt", pipeline.mdlm), ("ae.pt", pipeline.autoencoder),
                       ("ladiff.pt", pipeline.prior), ("diladiff.pt", pipeline.student),
                       ("judge", pipeline.judge), ("data", pipeline.data)):  # fmt: skip
        (run / name).symlink_to(path)
    result = invoke("export", str(run), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "export.json").is_file()
    original, shared = Pipeline.load(run, device="cpu"), Pipeline.load(tmp_path / "out")
    for model in ("mdlm", "diladiff"):
        a = original.generate(2, model=model, ndisc=4, seed=7)
        b = shared.generate(2, model=model, ndisc=4, seed=7)
        assert a.texts == b.texts and torch.equal(a.tokens, b.tokens)
    result = invoke("export", str(run), str(tmp_path / "out"))  # exists: one line, exit 1
    assert result.exit_code == 1 and "exists and is not empty" in result.output
    result = invoke("export", str(run), str(tmp_path / "o2"), "--quality", str(tmp_path / "x"))
    assert result.exit_code == 1 and "no sweep results at" in result.output
    assert not (tmp_path / "o2").exists()
