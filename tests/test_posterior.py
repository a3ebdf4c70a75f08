"""Denoising a Gaussian observation against the closed-form posterior of Gaussian data.

For x ~ N(mu, Sigma) and y = x + sigma_y n, p(x | y) = N(m, S) with S = (Sigma^{-1} + I / sigma_y^2)^{-1} and
m = S (Sigma^{-1} mu + y / sigma_y^2) (see :meth:`oracle.GaussianDenoiser.posterior`).
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import CountingDenoiser, GaussianDenoiser, assert_gaussian, random_gaussian
from scipy.stats import norm

from sda_cli.posterior import POSTERIOR_SAMPLERS, matched_time, mmse, posterior_mean_std, posterior_sample
from sda_cli.sampler import SAMPLERS, sample
from sda_cli.schedule import CosineSchedule, LinearSchedule, Schedule, VESchedule

DIM = 6
K = 8000
LEVEL = 1e-4
STEPS = 1024  # ancestral bias on the posterior covariance is O(1/steps): about 1% here, under the MC resolution
F64 = torch.float64
SCHEDULES = [CosineSchedule(), VESchedule(), LinearSchedule()]


def gaussian(schedule: Schedule) -> GaussianDenoiser:
    return random_gaussian(schedule, DIM)


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


def test_posterior_mean_std_agree_with_the_posterior() -> None:
    """Per pixel: the mean of K samples is within z sqrt(S_ii / K) of m_i; the sample standard deviation within
    z sqrt(S_ii / 2(K - 1)) of sqrt(S_ii) (its large-K standard error) plus 1% for the ancestral bias (about 0.4%
    at 1024 steps, from an exact variance recursion); and both equal the moments of the draws."""
    oracle, sigma_y = gaussian(CosineSchedule()), 0.3
    y = observe(oracle, 2, sigma_y, seed=4)
    mean, std = posterior_mean_std(
        oracle, y, sigma_y, steps=STEPS, samples=K, generator=torch.Generator().manual_seed(5)
    )
    assert mean.shape == y.shape and std.shape == y.shape
    m, cov = oracle.posterior(y.flatten(1), sigma_y)
    sd = cov.diagonal().sqrt()
    z = norm.isf(LEVEL / 2)
    assert bool(((mean.flatten(1) - m).abs() <= z * sd / math.sqrt(K)).all())
    assert bool(((std.flatten(1) - sd).abs() <= z * sd / math.sqrt(2 * (K - 1)) + 0.01 * sd).all())
    small = {"steps": 16, "samples": 5}
    mean, std = posterior_mean_std(oracle, y, sigma_y, generator=torch.Generator().manual_seed(6), **small)
    draws = posterior_sample(oracle, y, sigma_y, generator=torch.Generator().manual_seed(6), **small)
    torch.testing.assert_close(mean, draws.mean(0), rtol=0, atol=0)
    torch.testing.assert_close(std, draws.std(0), rtol=0, atol=0)


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


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - set(POSTERIOR_SAMPLERS)))
def test_samplers_that_do_not_sample_the_posterior_are_refused(name: str) -> None:
    oracle = gaussian(CosineSchedule())
    y = observe(oracle, 1, 0.2, seed=7)
    with pytest.raises(ValueError, match="does not sample p"):
        posterior_sample(oracle, y, 0.2, sampler=name)


def test_why_a_deterministic_sampler_is_refused() -> None:
    """From the fixed start alpha y, DDIM sends every copy to the same point: no posterior spread at all."""
    oracle, sigma_y = gaussian(CosineSchedule()), 0.2
    y = observe(oracle, 1, sigma_y, seed=8)
    t = matched_time(oracle.schedule, sigma_y)
    alpha = float(oracle.schedule.alpha_sigma(torch.tensor(t, dtype=F64))[0])
    out = sample(oracle, (alpha * y).expand(16, -1, -1, -1), t, 0.0, 64, "ddim")
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
    with pytest.raises(ValueError, match="samples"):
        posterior_sample(oracle, y, 0.2, samples=0)
    with pytest.raises(ValueError, match="at least 2"):
        posterior_mean_std(oracle, y, 0.2, samples=1)
