"""Stage 2 (LaDiff): the Gaussian process and its conversions, the ODE samplers against
closed forms, the latent denoiser, train-prior on synthetic latents and its bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import LatentDiTConfig, PriorStageConfig, TimeSamplingConfig, TrainConfig
from diladiff_cli.diffusion.flow import (
    GaussianFlow,
    LatentBatch,
    LatentDiffusionLoss,
    sample_ode,
    sample_times,
)
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import CheckpointError, DiladiffError, TrainingDiverged
from diladiff_cli.models.latent_dit import LatentDiT
from diladiff_cli.objective import StepContext
from diladiff_cli.prior import (
    LatentData,
    LatentSource,
    check_autoencoder,
    fit_prior,
    load_prior,
    open_latents,
    sample_latents,
)
from tests._latents_synthetic import SHAPE, mixture, write_latents

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
S0 = 0.5  # data std of the Gaussian test case: z ~ N(0, S0^2 I)


def ctx(batch: int, step: int = 0) -> StepContext:
    return StepContext(
        seed=0, step=step, index=torch.arange(batch), global_batch=batch, device=torch.device("cpu")
    )


# ----------------------------------------------------------------------------- Gaussian case


def gaussian_posterior(flow: GaussianFlow, z_t: torch.Tensor, t: torch.Tensor):
    """Exact E[z | z_t], E[eps | z_t] and E[v | z_t] for z ~ N(0, S0^2 I)."""
    alpha, sigma, d_alpha, d_sigma = (c[:, None, None] for c in flow.coefficients(t))
    var = alpha**2 * S0**2 + sigma**2  # Var z_t
    x0 = alpha * S0**2 / var * z_t
    eps = sigma / var * z_t
    v = (d_alpha * alpha * S0**2 + d_sigma * sigma) / var * z_t
    return x0, eps, v


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_conversions_agree_on_the_gaussian_case(schedule):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    z_t = torch.randn(25, 3, 4, dtype=torch.float64)
    x0, eps, v = gaussian_posterior(GaussianFlow(schedule=schedule), z_t, t)
    for prediction, out in (("x0", x0), ("eps", eps), ("v", v)):
        flow = GaussianFlow(schedule=schedule, prediction=prediction, t_min=1e-3)
        torch.testing.assert_close(flow.to_velocity(out, z_t, t), v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_gaussian_posterior_matches_monte_carlo(schedule):
    # The closed forms above are the regression of each target on z_t: check them empirically.
    flow = GaussianFlow(schedule=schedule)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    z = S0 * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    z_t = flow.noise(z, t, eps)
    x0, _, v = gaussian_posterior(flow, z_t, t)
    for exact, target in ((x0, z), (v, flow.velocity(z, eps, t))):
        coef = (target * z_t).mean() / (z_t * z_t).mean()
        assert abs(float(coef - (exact / z_t).mean())) < 0.03  # ~5 standard errors


def test_linear_process_and_velocity_conventions():
    flow = GaussianFlow(schedule="linear")
    z, eps = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    t = torch.tensor([0.0, 0.4, 1.0])
    torch.testing.assert_close(flow.noise(z, t, eps)[0], z[0])  # t = 0 is data
    torch.testing.assert_close(flow.noise(z, t, eps)[2], eps[2])  # t = 1 is noise
    torch.testing.assert_close(flow.noise(z, t, eps)[1], 0.6 * z[1] + 0.4 * eps[1])
    torch.testing.assert_close(flow.velocity(z, eps, t), eps - z)


def test_cosine_velocity_is_the_time_derivative():
    flow = GaussianFlow(schedule="cosine")
    z, eps = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)
    t, h = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64), 1e-6
    fd = (flow.noise(z, t + h, eps) - flow.noise(z, t - h, eps)) / (2 * h)
    torch.testing.assert_close(flow.velocity(z, eps, t), fd, rtol=1e-6, atol=1e-8)


def test_time_samplers():
    u = sample_times(TimeSamplingConfig(kind="uniform"), ctx(4000))
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    ln = sample_times(TimeSamplingConfig(kind="logit_normal", mean=-1.0, std=1.0), ctx(4000))
    assert abs(float(ln.median()) - 1 / (1 + math.e)) < 0.02  # median = sigmoid(mean)
    assert torch.equal(
        ln, sample_times(TimeSamplingConfig(kind="logit_normal", mean=-1.0), ctx(4000))
    )


# ----------------------------------------------------------------------------- ODE samplers


def linear_field(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact probability-flow velocity of N(0, S0^2) data; the flow map from t = 1 to
    0 is z -> S0 z (closed form)."""
    _, _, v = gaussian_posterior(GaussianFlow(), z, t)
    return v


def ode_error(method: str, steps: int) -> float:
    z1 = torch.randn(8, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample_ode(linear_field, z1, steps=steps, method=method)
    expected_passes = steps if method == "euler" else 2 * steps - 1
    assert out.forward_passes == expected_passes and out.latents.dtype == torch.float64
    return float((out.latents - S0 * z1).abs().max())


def test_euler_error_falls_linearly_and_heun_quadratically():
    euler = [ode_error("euler", n) for n in (10, 20, 40, 80)]
    heun = [ode_error("heun", n) for n in (10, 20, 40, 80)]
    for coarse, fine in zip(euler, euler[1:], strict=False):
        assert 1.7 < coarse / fine < 2.3, euler  # first order
    for coarse, fine in zip(heun, heun[1:], strict=False):
        assert 3.4 < coarse / fine < 4.6, heun  # second order
    assert heun[-1] < euler[-1] / 50


def test_dopri5_reference_is_accurate():
    pytest.importorskip("torchdiffeq")
    z1 = torch.randn(4, 2, 3, dtype=torch.float64)
    out = sample_ode(linear_field, z1, steps=1, method="dopri5", rtol=1e-8, atol=1e-8)
    assert float((out.latents - S0 * z1).abs().max()) < 1e-6 and out.forward_passes > 6


def test_bad_step_counts_are_one_line_errors():
    with pytest.raises(DiladiffError, match="--ncont"):
        sample_ode(linear_field, torch.randn(2, 2, 3), steps=0)
    with pytest.raises(DiladiffError, match="solver"):
        sample_ode(linear_field, torch.randn(2, 2, 3), steps=2, method="rk9")


# ----------------------------------------------------------------------------- network


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Give every parameter (the zero-initialised gates included) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


def test_latent_dit_shapes_zero_init_and_config():
    net = LatentDiT(num_latents=4, latent_dim=8, hidden=32, depth=2, heads=2, cond_dim=16)
    z, t = torch.randn(3, 4, 8), torch.rand(3)
    assert torch.equal(net(z, t), torch.zeros(3, 4, 8))  # zero-initialised head
    randomize(net)
    out = net(z, t)
    assert out.shape == (3, 4, 8) and float(out.detach().abs().mean()) > 0
    assert not torch.allclose(out, net(z, t.flip(0)))  # time conditioning matters
    assert net.config == LatentDiTConfig(4, 8, 32, 2, 2, 16)
    with pytest.raises(ValueError, match="one time"):
        net(z, t, t)
    with pytest.raises(ValueError, match="heads"):
        LatentDiTConfig(num_latents=4, latent_dim=8, hidden=30, heads=4)


def test_latent_dit_attention_backends_agree():
    from diladiff_cli.models.dit import math_attention

    net = LatentDiT(num_latents=4, latent_dim=8, hidden=32, depth=2, heads=2, cond_dim=16)
    randomize(net)
    z, t = torch.randn(3, 4, 8), torch.rand(3)
    with math_attention():
        slow = net(z, t)
    torch.testing.assert_close(net(z, t), slow, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the stage


def tiny_prior_cfg(out: Path, **train) -> PriorStageConfig:
    return PriorStageConfig(
        model=LatentDiTConfig(
            num_latents=SHAPE[0], latent_dim=SHAPE[1], hidden=32, depth=2, heads=2, cond_dim=32
        ),
        out=str(out),
        latents=None,
        train=TrainConfig(
            **{
                "steps": 30,
                "batch_size": 32,
                "lr": 3e-3,
                "log_every": 10,
                "ckpt_every": 10,
                **train,
            }
        ),
        time=TimeSamplingConfig(kind="logit_normal"),
    )


def synthetic(n: int = 256, seed: int = 0, sha: str = "a" * 64) -> LatentData:
    return LatentData(
        train=LatentSource(mixture(n, seed=seed)),
        valid=LatentSource(mixture(64, seed=seed + 1)),
        shape=SHAPE,
        record={"shape": list(SHAPE), "autoencoder": {"path": "x", "sha256": sha}, "latents": None},
    )


def test_train_prior_learns_saves_and_samples(tmp_path):
    out = tmp_path / "ladiff.pt"
    cfg = tiny_prior_cfg(out)
    first = fit_prior(cfg=cfg, data=synthetic(), runtime=CPU)
    meta = read_meta(out)
    assert meta.stage == "prior" and meta.step == 30
    assert meta.extra["shape"] == list(SHAPE) and meta.extra["autoencoder"]["sha256"] == "a" * 64
    assert meta.config["flow"]["prediction"] == "x0" and meta.config["flow"]["schedule"] == "linear"
    log = [
        line
        for line in (tmp_path / "ladiff.metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    losses = [float(line.split('"loss": ')[1].split(",")[0]) for line in log]
    assert losses[-1] < losses[0]
    assert first.valid_metrics["mse"] > 0

    prior = load_prior(out)
    assert prior.kind == "prior" and prior.shape == SHAPE and prior.ncont == 200
    a = sample_latents(prior, num_samples=5, ncont=4, method="heun", batch_size=2, seed=3)
    b = sample_latents(prior, num_samples=5, ncont=4, method="heun", batch_size=5, seed=3)
    assert a.latents.shape == (5, *SHAPE) and a.latents.dtype == torch.float32
    assert a.forward_passes == 7 and a.kind == "prior" and a.seconds > 0
    torch.testing.assert_close(a.latents, b.latents)  # noise independent of the batching
    assert sample_latents(prior, num_samples=2, ncont=3, method="euler").forward_passes == 3
    with pytest.raises(DiladiffError, match="--ncont"):
        sample_latents(prior, num_samples=2, ncont=0)
    fake_ae = tmp_path / "ae.pt"
    fake_ae.write_bytes(b"another autoencoder")
    with pytest.raises(DiladiffError, match="another autoencoder"):
        check_autoencoder(prior, fake_ae)


def test_open_latents_reads_encode_output_and_refuses_another_autoencoder(tmp_path):
    z = mixture(100)
    write_latents(tmp_path / "lat", z, split="train", shard_size=32)
    write_latents(tmp_path / "lat", mixture(20, seed=5), split="valid")
    data = open_latents(tmp_path / "lat")
    assert data.shape == SHAPE and len(data.train) == 100 and len(data.valid) == 20
    torch.testing.assert_close(data.train.batch(np.array([0, 99])).latents, z[[0, 99]])
    assert data.record["autoencoder"]["sha256"] == "a" * 64
    ae = tmp_path / "ae.pt"
    ae.write_bytes(b"not the autoencoder of these latents")
    with pytest.raises(DiladiffError, match="another autoencoder"):
        open_latents(tmp_path / "lat", autoencoder=ae)
    with pytest.raises(DiladiffError, match="no latents"):
        open_latents(tmp_path / "missing")


def test_prior_refuses_latents_of_another_shape(tmp_path):
    cfg = tiny_prior_cfg(tmp_path / "p.pt")
    data = synthetic()
    data.shape = (4, 16)
    with pytest.raises(DiladiffError, match=r"sized for \(4, 8\) latents"):
        fit_prior(cfg=cfg, data=data, runtime=CPU)


def test_load_prior_refuses_other_checkpoints(tmp_path):
    from diladiff_cli.checkpoint import CheckpointMeta, save_weights

    other = tmp_path / "mdlm.pt"
    save_weights(other, {"w": torch.zeros(1)}, CheckpointMeta(stage="mdlm", step=1, config={}))
    with pytest.raises(CheckpointError, match="not a latent prior"):
        load_prior(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_prior(tmp_path / "nope.pt")


class PoisonedAfter:
    """Clean latents for the first ``good`` batches, then NaN (a diverging run)."""

    def __init__(self, good: int) -> None:
        self.inner, self.calls, self.good = LatentSource(mixture(128)), 0, good

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, indices: np.ndarray) -> LatentBatch:
        self.calls += 1
        batch = self.inner.batch(indices)
        return batch if self.calls <= self.good else LatentBatch(batch.latents * float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "p.pt"
    cfg = tiny_prior_cfg(out, steps=8, log_every=1, ckpt_every=2)
    data = LatentData(
        train=PoisonedAfter(5), valid=None, shape=SHAPE, record={"shape": list(SHAPE)}
    )
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        fit_prior(cfg=cfg, data=data, runtime=CPU)
    kept = load_prior(out)
    assert kept.step == 4
    assert all(torch.isfinite(p).all() for p in kept.model.parameters())


def test_loss_is_the_ldm_l2_on_clean_latents():
    # A network that returns the clean latent exactly has zero x0 loss; its implied velocity
    # equals the true one away from t = 0.
    flow = GaussianFlow(prediction="x0")
    z = mixture(16)

    class Oracle(torch.nn.Module):
        def forward(self, z_t, t):
            return z

    out = LatentDiffusionLoss(flow=flow, times=TimeSamplingConfig())(
        Oracle(), LatentBatch(z), ctx(16)
    )
    assert float(out.loss) == 0.0 and float(out.metrics["v_mse"]) < 1e-8


# ----------------------------------------------------------------------------- real stage-1 output

pytest_plugins = ["_ae_tiny"]  # the tiny_env and trained_ae fixtures (a 3-step autoencoder)


def test_train_prior_on_encode_output_and_on_the_fly(tiny_env, trained_ae, tmp_path):
    from diladiff_cli.encode import encode_split
    from diladiff_cli.latent_shards import file_sha256
    from diladiff_cli.prior import train_prior

    for split in ("train", "valid"):
        encode_split(
            checkpoint=trained_ae, data_dir=tiny_env.data.out, split=split,
            out=tmp_path / "lat" / split, shard_size=8, batch_size=8, runtime=CPU,
        )  # fmt: skip
    base = tiny_prior_cfg(tmp_path / "a.pt", steps=2, batch_size=4)
    sha = file_sha256(trained_ae)
    for name, latents in (("a.pt", str(tmp_path / "lat")), ("b.pt", None)):
        cfg = dataclasses.replace(
            base, out=str(tmp_path / name), latents=latents, autoencoder=str(trained_ae)
        )
        train_prior(cfg=cfg, data_dir=tiny_env.data.out, runtime=CPU)
        prior = load_prior(tmp_path / name)
        assert prior.autoencoder_sha256 == sha and prior.latent["shape"] == [4, 8]
        assert prior.latent["normalization"]["kind"] == "stats"
        check_autoencoder(prior, trained_ae)  # the hybrid sampler's check passes
    assert load_prior(tmp_path / "a.pt").latent["latents"] == str((tmp_path / "lat").resolve())
    assert load_prior(tmp_path / "b.pt").latent["latents"] is None  # encoded on the fly
