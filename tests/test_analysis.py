"""diladiff_cli.analysis: the prior-quality measures (MMD^2, Frechet distance, the
verdicts) and the experiment list, on tiny tensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from diladiff_cli.analysis.experiments import (
    EXPERIMENTS,
    SWEEPS,
    base_recipe,
    experiment_recipe,
)
from diladiff_cli.analysis.prior_quality import (
    Distances,
    SamplerRow,
    frechet_distance,
    gaussian_fit,
    parse_teacher_runs,
    verdicts,
)
from diladiff_cli.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def _cloud(n: int, *, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 3, generator=g) + shift  # (n, N, D)


def test_frechet_distance_is_zero_on_itself_symmetric_and_exact_for_shifted_means():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) * 2 + 1
    (mu_a, s_a), (mu_b, s_b) = gaussian_fit(a), gaussian_fit(b)
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-8
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(
        frechet_distance(mu_b, s_b, mu_a, s_a), rel=1e-8
    )
    # Equal covariances: only ||mu1 - mu2||^2 remains.
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    assert frechet_distance(mu_a, s_a, mu_a + shift, s_a) == pytest.approx((shift**2).sum())
    # Isotropic Gaussians: d * (sigma1 - sigma2)^2.
    eye = np.eye(5)
    assert frechet_distance(mu_a, eye, mu_a, 4 * eye) == pytest.approx(5.0)


def test_distances_of_the_held_out_set_to_itself_are_about_zero():
    held = _cloud(64, seed=0)
    d = Distances(held, pca=4)
    assert abs(d.frechet(held)) < 1e-8
    assert abs(d.mmd2(held)) < 0.05  # unbiased estimator: ~0, not exactly 0


def test_distances_grow_with_the_shift_of_the_samples():
    d = Distances(_cloud(64, seed=0), pca=4)
    same, near, far = _cloud(64, seed=1), _cloud(64, seed=1, shift=0.5), _cloud(64, seed=1, shift=2)
    assert d.mmd2(same) < d.mmd2(near) < d.mmd2(far)
    assert d.frechet(same) < d.frechet(near) < d.frechet(far)


def _row(model: str, method: str, ncont: int, mean: float, std: float) -> SamplerRow:
    return SamplerRow(
        model=model, kind="x", method=method, ncont=ncont, forward_passes=ncont,
        mmd2_mean=mean, mmd2_std=std, fd_mean=mean, fd_std=std, seconds_per_1k=0.0,
    )  # fmt: skip


def test_verdicts_apply_the_two_standard_error_rule():
    rows = [
        _row("teacher", "euler", 5, 10.0, 0.1),
        _row("teacher", "heun", 5, 5.0, 0.1),
        _row("teacher", "heun", 200, 1.0, 0.1),
        _row("s", "few_step", 5, 1.1, 0.1),  # within 2 SE (0.163 at 3 seeds) of heun@200
    ]
    checks = verdicts(rows, ["s"], seeds=3)
    assert [c["metric"] for c in checks] == ["mmd2", "fd"]
    for c in checks:
        assert c["within_noise_of_teacher_200"] and not c["better_than_teacher_200"]
        assert c["clearly_closer_than_teacher_heun_5"] and c["clearly_closer_than_teacher_euler_5"]
    rows[-1] = _row("s", "few_step", 5, 4.9, 0.1)  # 0.1 below heun@5: within its noise
    (c, _) = verdicts(rows, ["s"], seeds=3)
    assert not c["within_noise_of_teacher_200"] and not c["clearly_closer_than_teacher_heun_5"]


def test_teacher_runs_parse():
    assert parse_teacher_runs("euler:5,heun:200") == [("euler", 5), ("heun", 200)]


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_every_experiment_has_its_recipe(scale):
    assert len(EXPERIMENTS) == 6 and SWEEPS == tuple(EXPERIMENTS[i] for i in range(2, 7))
    assert load_recipe(ROOT / base_recipe(scale)).name
    for number in EXPERIMENTS:
        assert (ROOT / experiment_recipe(scale, number)).is_file()


def test_gap_curve_averages_over_seeds_with_their_standard_error(tmp_path):
    from diladiff_cli.analysis.gap import COLUMNS, Floor, GapCurve, _average, write_gap
    from diladiff_cli.oracle import OracleMeasures

    def measures(nll: float) -> dict:
        return dataclasses.asdict(
            OracleMeasures(
                num_sequences=4, nll_per_token=nll, nll_per_token_se=0.1, ppl=1.0, words=8,
                bad_transitions=1.0, off_topic=0.0, purity=1.0, oov=2, texts_with_oov=1,
                posterior_max=1.0, posterior_entropy=0.0, topic_kl=0.0, topic_share=[1.0],
            )
        )  # fmt: skip

    per_seed = [
        {"model": "mdlm", "ndisc": nd, "seed": s, "tokens_per_forward": 128 / nd,
         "seconds_per_sample": 1.0, **measures(nll)}
        for nd, nlls in ((128, (2.0, 2.2)), (8, (3.0, 3.4)))
        for s, nll in enumerate(nlls)
    ]  # fmt: skip
    floor = Floor(entropy_rate=2.0, entropy_rate_se=0.01, num_samples=10,
                  held_out=OracleMeasures(**measures(2.0)))  # fmt: skip
    rows = _average(per_seed, floor)
    assert [r["ndisc"] for r in rows] == [128, 8]  # fewest tokens per forward first
    assert rows[1]["oracle_nll"] == pytest.approx(3.2)
    assert rows[1]["oracle_nll_se"] == pytest.approx(0.2)  # std(3.0, 3.4) / sqrt(2)
    assert rows[1]["gap_over_h"] == pytest.approx(0.6) and rows[1]["oov"] == 0.5
    paths = write_gap(GapCurve(rows=rows, per_seed=per_seed, floor=floor), tmp_path)
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert header == list(COLUMNS) and paths["plot"].stat().st_size > 0
    one = [r for r in per_seed if r["seed"] == 0]  # one seed: no standard error, no bars
    rows = _average(one, floor)
    assert [r["oracle_nll_se"] for r in rows] == [None, None]
    plot = write_gap(GapCurve(rows=rows, per_seed=one, floor=floor), tmp_path / "one")["plot"]
    assert plot.stat().st_size > 0
