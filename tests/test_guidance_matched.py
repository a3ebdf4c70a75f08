"""Denoising a Gaussian observation against the closed-form posterior of Gaussian data.

For x ~ N(mu, Sigma) and y = x + sigma_y n, p(x | y) = N(m, S) with S = (Sigma^{-1} + I / sigma_y^2)^{-1} and
m = S (Sigma^{-1} mu + y / sigma_y^2) (see :meth:`oracle.GaussianDenoiser.posterior`).
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import CountingDenoiser, GaussianDenoiser, assert_gaussian, random_gaussian

from sda_cli.guidance import MatchedPosterior, matched_time
from sda_cli.sampler import make_sampler
from sda_cli.schedule import CosineSchedule, LinearSchedule, Schedule, VESchedule

DIM = 6
K = 8000
LEVEL = 1e-4
STEPS = 1024  # the solver's bias on the posterior covariance at this count is far under the Monte Carlo resolution
F64 = torch.float64
SCHEDULES = [CosineSchedule(), VESchedule(), LinearSchedule()]


def gaussian(schedule: Schedule) -> GaussianDenoiser:
    return random_gaussian(schedule, DIM)


def mmse(denoiser: object, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
    return MatchedPosterior(denoiser, y, sigma_y).mean()  # type: ignore[arg-type]


def posterior_sample(
    denoiser: object, y: torch.Tensor, sigma_y: float, *, steps: int = 128, samples: int = 1, generator=None
) -> torch.Tensor:
    """``samples`` draws per observation, ``(K, B, ...)``, drawn as one batch as ``sda denoise`` draws them."""
    batch = y.unsqueeze(0).expand(samples, *y.shape).reshape(samples * y.shape[0], *y.shape[1:])
    drawn = MatchedPosterior(denoiser, batch, sigma_y, steps=steps).sample(generator=generator)  # type: ignore[arg-type]
    return drawn.reshape(samples, *y.shape)


def observe(oracle: GaussianDenoiser, n: int, sigma_y: float, seed: int) -> torch.Tensor:
    """``n`` observations y = x + sigma_y n of fresh draws x, shaped as images ``(n, 1, D, 1)``."""
    generator = torch.Generator().manual_seed(seed)
    x = oracle.sample(n, generator)
    return (x + sigma_y * torch.randn(x.shape, generator=generator, dtype=F64)).reshape(n, 1, DIM, 1)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("sigma_y", [0.01, 0.2, 1.5])
def test_matched_time_inverts_the_noise_ratio(schedule: Schedule, sigma_y: float) -> None:
    t = matched_time(schedule, sigma_y)
    assert 0.0 <= t <= 1.0
    assert math.isclose(float(schedule.ratio(torch.tensor(t, dtype=F64))), sigma_y, rel_tol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_matched_time_range_ends_and_errors(schedule: Schedule) -> None:
    low, high = schedule.ratio_range()
    assert matched_time(schedule, low) == pytest.approx(0.0, abs=1e-6)
    assert matched_time(schedule, high) == pytest.approx(1.0, abs=1e-9)
    for bad in (0.0, -0.1, low / 2, high * 2):
        with pytest.raises(ValueError, match="outside the range"):
            matched_time(schedule, bad)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("sigma_y", [0.05, 0.4])
def test_mmse_is_the_posterior_mean(schedule: Schedule, sigma_y: float) -> None:
    oracle = CountingDenoiser(gaussian(schedule))
    y = observe(oracle.denoiser, 64, sigma_y, seed=1)
    expected, _ = oracle.denoiser.posterior(y.flatten(1), sigma_y)
    estimate = mmse(oracle, y, sigma_y)
    assert oracle.calls == 1 and estimate.shape == y.shape
    torch.testing.assert_close(estimate.flatten(1), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("schedule", "sigma_y"), [(CosineSchedule(), 0.3), (VESchedule(), 0.08)], ids=["cosine", "ve"])
def test_posterior_samples_follow_the_posterior(schedule: Schedule, sigma_y: float) -> None:
    """K samples for each of two observations: each set is N(m(y), S) within Monte Carlo error."""
    oracle = gaussian(schedule)
    y = observe(oracle, 2, sigma_y, seed=2)
    draws = posterior_sample(oracle, y, sigma_y, steps=STEPS, samples=K, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (K, *y.shape)
    means, cov = oracle.posterior(y.flatten(1), sigma_y)
    for b in range(2):
        assert_gaussian(draws[:, b].flatten(1), means[b], cov, LEVEL, what=f"posterior samples of y[{b}]")


def test_default_steps_give_calibrated_draws() -> None:
    """At the default step count (what ``sda denoise --method posterior`` and ``mean`` run), on a Gaussian whose
    spectrum spans four decades as images' do: the draws' error is 2 times the MMSE within [1.9, 2.1] (the
    calibration the draws must have on real images too), and every eigen-direction's variance is within [0.85, 1.1]
    of the posterior's. Measured at the default 32 steps of the second-order SDE solver: 1.991 and 2.022, each
    direction 0.97-1.06 (the ancestral sampler it replaced gave 1.95 at 128 steps)."""
    generator = torch.Generator().manual_seed(21)
    dim = 32
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=F64))
    cov = (q * torch.logspace(-4, 0, dim, dtype=F64)) @ q.T
    oracle = GaussianDenoiser(torch.zeros(dim), cov, CosineSchedule())
    for sigma_y in (0.2, 0.4):
        n = 4000
        x = oracle.sample(n, generator)
        y = (x + sigma_y * torch.randn(x.shape, generator=generator, dtype=F64)).reshape(n, 1, dim, 1)
        mean = mmse(oracle, y, sigma_y).flatten(1)
        draw = posterior_sample(oracle, y, sigma_y, steps=MatchedPosterior.STEPS, generator=generator)[0].flatten(1)
        ratio = float((x - draw).square().sum() / (x - mean).square().sum())
        assert 1.9 <= ratio <= 2.1, f"draw ratio {ratio:.3f} at sigma_y {sigma_y}"
        _, post = oracle.posterior(y.flatten(1), sigma_y)
        values, vectors = torch.linalg.eigh(post)
        spread = ((draw - mean) @ vectors).var(0) / values
        # each direction's variance from n draws has relative standard error sqrt(2 / n) = 2.2%
        assert float(spread.min()) > 0.85 and float(spread.max()) < 1.1, spread


def test_posterior_sampling_is_reproducible_and_random() -> None:
    oracle, sigma_y = gaussian(CosineSchedule()), 0.2
    y = observe(oracle, 2, sigma_y, seed=6)
    runs = [
        posterior_sample(oracle, y, sigma_y, steps=8, samples=3, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0][0], runs[0][1])  # the K draws differ


def test_why_a_deterministic_sampler_is_refused() -> None:
    """From the fixed start alpha y, DDIM sends every copy to the same point: no posterior spread at all."""
    oracle, sigma_y = gaussian(CosineSchedule()), 0.2
    y = observe(oracle, 1, sigma_y, seed=8)
    t = matched_time(oracle.schedule, sigma_y)
    alpha = float(oracle.schedule.alpha_sigma(torch.tensor(t, dtype=F64))[0])
    out = make_sampler("ddim", oracle)((alpha * y).expand(16, -1, -1, -1), t, 0.0, 64)
    assert float(out.std(0).max()) < 1e-12
    _, cov = oracle.posterior(y.flatten(1), sigma_y)
    assert float(cov.diagonal().min()) > 1e-3


def test_bad_arguments() -> None:
    oracle = gaussian(CosineSchedule())
    y = observe(oracle, 1, 0.2, seed=9)
    with pytest.raises(ValueError, match="outside the range"):
        mmse(oracle, y, 1e-6)
    with pytest.raises(ValueError, match="outside the range"):
        posterior_sample(oracle, y, 5e3)
    with pytest.raises(ValueError, match="steps"):
        posterior_sample(oracle, y, 0.2, steps=0)
