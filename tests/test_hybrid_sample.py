"""Hybrid sampling (latent first, then tokens) on seconds-scale checkpoints: a 3-step
autoencoder, a prior trained on its latents encoded on the fly, and a student distilled
from that prior."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _ae_tiny import TinyEnv, tiny_env, trained_ae  # noqa: F401  (fixtures)

from diladiff_cli.config import DistillStageConfig, LatentDiTConfig, PriorStageConfig, TrainConfig
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.prior import distill, train_prior
from diladiff_cli.sample import (
    SampleSettings,
    Sources,
    generate,
    meta_path,
    resolve_request,
    write_samples,
)

STEPS = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=2, eval_batches=1)


@pytest.fixture(scope="module")
def latent_models(tiny_env: TinyEnv, trained_ae):  # noqa: F811
    runtime = init_runtime("cpu")
    net = LatentDiTConfig(num_latents=4, latent_dim=8, hidden=16, depth=1, heads=2, cond_dim=8)
    prior = PriorStageConfig(
        model=net,
        train=STEPS,
        out=str(tiny_env.root / "ladiff.pt"),
        latents=None,  # encode on the fly
        autoencoder=str(trained_ae),
    )
    train_prior(cfg=prior, data_dir=tiny_env.data.out, runtime=runtime)
    student = DistillStageConfig(
        teacher=prior.out, out=str(tiny_env.root / "diladiff.pt"), train=STEPS
    )
    distill(cfg=student, data_dir=tiny_env.data.out, runtime=runtime)
    return prior.out, student.out


SETTINGS = SampleSettings(num_samples=3, batch_size=2, ndisc=4)


@pytest.mark.parametrize(("which", "ncont", "name"), [(0, 3, "ladiff"), (1, 2, "diladiff")])
def test_hybrid_sampling_timing_record(latent_models, trained_ae, tmp_path, which, ncont, name):  # noqa: F811
    result = generate(
        model=name,
        checkpoint=latent_models[which],
        autoencoder=trained_ae,
        ncont=ncont,
        settings=SETTINGS,
        runtime=init_runtime("cpu"),
    )
    t = result.timing
    assert result.info["model"] == name and result.info["ncont"] == ncont
    assert result.tokens.shape == (3, 32) and len(result.texts) == 3
    assert t.seconds_total == pytest.approx(t.seconds_latent + t.seconds_discrete)
    assert 0 < t.latent_share < 1
    # the prior's default solver is Heun: 2 evaluations a step, the last step Euler;
    # the student: one evaluation a step
    assert t.forward_passes_latent == {"ladiff": 2 * ncont - 1, "diladiff": ncont}[name]
    assert 0 < t.forward_passes_discrete <= SETTINGS.ndisc + 1
    out = tmp_path / f"{name}.jsonl"
    write_samples(result, out)
    record = json.loads(meta_path(out).read_text())
    assert record["model"] == name and record["timing"]["latent_share"] == t.latent_share


def test_null_latent_is_the_mdlm_baseline(trained_ae):  # noqa: F811
    result = generate(
        model="mdlm",
        checkpoint=trained_ae,
        settings=SETTINGS,
        runtime=init_runtime("cpu"),
    )
    assert result.info["model"] == "mdlm"
    assert result.timing.seconds_latent == 0 and result.timing.forward_passes_latent == 0


def test_latent_cache_draws_each_z_once_and_keeps_its_measured_cost(
    latent_models,
    trained_ae,  # noqa: F811
    tmp_path,
):
    runtime = init_runtime("cpu")
    cache = tmp_path / "latents"

    def draw(settings):
        return generate(
            model="ladiff",
            checkpoint=latent_models[0],
            autoencoder=trained_ae,
            ncont=3,
            settings=settings,
            runtime=runtime,
            latent_cache=cache,
        )

    first = draw(SETTINGS)
    files = sorted(cache.iterdir())
    assert len(files) == 2  # one per batch (3 samples in batches of 2)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = draw(dataclasses.replace(SETTINGS, ndisc=2))  # another discrete setting
    assert [f.stat().st_mtime_ns for f in sorted(cache.iterdir())] == stamps  # not redrawn
    assert again.timing.seconds_latent == first.timing.seconds_latent  # the measured cost
    assert again.timing.forward_passes_latent == first.timing.forward_passes_latent
    plain = generate(
        model="ladiff",
        checkpoint=latent_models[0],
        autoencoder=trained_ae,
        ncont=3,
        settings=SETTINGS,
        runtime=runtime,
    )
    assert plain.tokens.tolist() == first.tokens.tolist()  # the cache changes no sample
    assert draw(SETTINGS).tokens.tolist() == first.tokens.tolist()
    draw(dataclasses.replace(SETTINGS, seed=1))
    assert len(list(cache.iterdir())) == 4  # another seed: other latents


def test_pareto_mdlm_cell_on_an_autoencoder_decodes_with_the_null_latent(trained_ae, tmp_path):  # noqa: F811
    from diladiff_cli.pareto import Cell, sample_cell

    runtime = init_runtime("cpu")
    cell = Cell(model="mdlm", ncont=0, ndisc=SETTINGS.ndisc, selection="random", temperature=1.0)
    out = sample_cell(
        cell,
        checkpoint=str(trained_ae),
        num_samples=SETTINGS.num_samples,
        batch_size=SETTINGS.batch_size,
        seed=SETTINGS.seed,
        top_p=1.0,
        out=tmp_path / "mdlm.jsonl",
        runtime=runtime,
        precision="fp32",
    )
    null = generate(model="mdlm", checkpoint=trained_ae, settings=SETTINGS, runtime=runtime)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens"] for r in rows] == null.tokens.tolist()
    assert json.loads(meta_path(out).read_text())["model"] == "mdlm"


def test_bad_ncont_and_foreign_latent_model(latent_models, trained_ae, tmp_path):  # noqa: F811
    runtime = init_runtime("cpu")
    with pytest.raises(DiladiffError, match="ncont"):
        generate(
            model="diladiff",
            checkpoint=latent_models[1],
            autoencoder=trained_ae,
            ncont=0,
            settings=SETTINGS,
            runtime=runtime,
        )
    # the same autoencoder weights, but another file content: the prior must refuse it
    other = tmp_path / "other_ae.pt"
    data = bytearray(trained_ae.read_bytes())
    other.write_bytes(bytes(data))
    from diladiff_cli.checkpoint import load_checkpoint, save_weights

    ckpt = load_checkpoint(trained_ae, stage="ae")
    meta = dataclasses.replace(ckpt.meta, step=ckpt.meta.step + 1)
    save_weights(other, ckpt.tensors, meta)
    with pytest.raises(DiladiffError, match="autoencoder"):
        generate(
            model="ladiff",
            checkpoint=latent_models[0],
            autoencoder=other,
            ncont=2,
            settings=SETTINGS,
            runtime=runtime,
        )


def test_a_latent_model_of_the_other_kind_is_refused(latent_models, trained_ae):  # noqa: F811
    with pytest.raises(DiladiffError, match="is a diladiff latent model, not a ladiff one"):
        generate(
            model="ladiff",
            checkpoint=latent_models[1],
            autoencoder=trained_ae,
            settings=SETTINGS,
            runtime=init_runtime("cpu"),
        )


def test_resolve_request_maps_models_to_checkpoints_and_outputs():
    from diladiff_cli.config import SampleConfig

    cfg = SampleConfig(out="s/mdlm.jsonl", ncont=0)
    assert resolve_request(cfg) == resolve_request(cfg, explicit=frozenset({"ncont"}))
    plain = resolve_request(cfg)
    assert (plain.model, plain.checkpoint, plain.out) == ("mdlm", cfg.checkpoint, "s/mdlm.jsonl")
    null = resolve_request(cfg, explicit=frozenset({"autoencoder"}))
    assert (null.model, null.checkpoint, null.out) == ("mdlm", cfg.autoencoder, "s/mdlm.jsonl")
    teacher = resolve_request(SampleConfig(out="s/x.jsonl", model="ladiff"))
    assert (teacher.checkpoint, teacher.autoencoder, teacher.ncont) == (
        "runs/tiny/ladiff.pt", "runs/tiny/ae.pt", None,
    )  # fmt: skip
    assert teacher.out == "s/ladiff.jsonl"
    student = resolve_request(
        SampleConfig(model="diladiff", ncont=0), explicit=frozenset({"ncont"})
    )
    assert student.ncont == 0  # an explicit 0 reaches the sampler, which refuses it
    kept = resolve_request(
        SampleConfig(out="a/b.jsonl", model="diladiff"), explicit=frozenset({"out"})
    )
    assert kept.out == "a/b.jsonl"
    rec = resolve_request(SampleConfig(out="s/m.jsonl"), reconstruct=True, ae_checkpoint="ae.pt")
    assert (rec.model, rec.checkpoint, rec.out) == ("reconstruct", "ae.pt", "s/reconstruct.jsonl")


def test_reconstruct_needs_exactly_one_kind_of_source(trained_ae):  # noqa: F811
    for sources in (Sources(), Sources(texts=("a b",), num_blocks=2)):
        with pytest.raises(DiladiffError, match="either texts"):
            generate(
                model="reconstruct",
                checkpoint=trained_ae,
                settings=SETTINGS,
                runtime=init_runtime("cpu"),
                sources=sources,
            )


def test_a_short_latent_draw_is_costed_at_the_median_of_three():
    """A student's draw (well under LATENT_REPEAT_BELOW) is timed three times and costed
    at the median, so one stall does not stand for its cost; a long draw is timed once."""
    from diladiff_cli.sample import LATENT_REPEAT_BELOW, _latent_seconds

    again = iter([0.01, 0.02])
    assert _latent_seconds(0.30, lambda: next(again)) == 0.02  # a stalled first draw
    calls = []
    long = LATENT_REPEAT_BELOW * 4
    assert _latent_seconds(long, lambda: calls.append(1) or 0.0) == long and not calls
