"""The test helpers of ``tests/oracle.py`` themselves: :func:`oracle.assert_gaussian` passes exact draws and fails
draws that are too narrow or too wide.

Sizes are those of ``test_guidance_operators.py::test_mmps_draws_are_exact_posterior_draws`` (N = 300 draws of a
D = 36 Gaussian with a correlated covariance), where a statistic that only grows with one kind of error would let
draws shrunk by 10% pass: the covariance statistic N/2 |S - I|_F^2 gets *smaller* when the draws shrink a little.
"""

from __future__ import annotations

import pytest
import torch
from oracle import assert_gaussian, gaussian_statistics, random_gaussian
from scipy.stats import binom

from sda_cli.schedule import CosineSchedule

N, DIM, LEVEL = 300, 36, 1e-4


def draws(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N exact draws of a random correlated Gaussian (eigenvalues 0.05 to 1), its mean and covariance."""
    oracle = random_gaussian(CosineSchedule(), DIM, seed=0)
    return oracle.sample(N, torch.Generator().manual_seed(seed)), oracle.mean, oracle.cov


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_draws_pass(seed: int) -> None:
    """Three seeded sets of exact draws pass all three checks; each check's false-alarm rate is LEVEL = 1e-4, so a
    set fails by chance with probability at most 3e-4 (and these seeds are fixed: the result never changes)."""
    x, mean, cov = draws(seed)
    assert_gaussian(x, mean, cov, LEVEL)


@pytest.mark.parametrize("scale", [0.9, 1.1, 0.95, 1.05])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_draws_scaled_about_the_mean_fail(seed: int, scale: float) -> None:
    """The same draws scaled about the mean by 0.9 or 1.1 (the standard deviation 10% off, the variance 19-21%) and
    by 0.95 or 1.05 fail, on the two-sided variance check: sum |w|^2 is chi2 with N D = 10,800 degrees of freedom,
    whose relative spread is sqrt(2 / N D) = 1.4%, so a variance off by 10% is 7 standard deviations away and its
    interval at level 1e-4 is within 3.9 of them. Shrunk draws pass the covariance check alone (see below)."""
    x, mean, cov = draws(seed)
    with pytest.raises(AssertionError, match="variance off"):
        assert_gaussian(mean + scale * (x - mean), mean, cov, LEVEL)


def test_the_covariance_check_alone_misses_shrunk_draws() -> None:
    """Why the variance check exists: draws shrunk by 10% pass the covariance statistic (it is one-sided and grows
    only with the deviation's square, which shrinking first makes smaller), for every one of the three seeds."""
    for seed in (1, 2, 3):
        x, mean, cov = draws(seed)
        statistics = {
            name: (value, high)
            for name, value, _, high in gaussian_statistics(0.9 * (x - mean) + mean, mean, cov, LEVEL)
        }
        value, high = statistics["covariance"]
        assert value <= high, (seed, value, high)


@pytest.mark.parametrize("n", [300, 40])
def test_false_alarm_rates_are_as_stated(n: int) -> None:
    """At level 0.1, over 1000 seeded sets of n exact draws (D = 36), each check rejects a number of sets within the
    binomial(1000, 0.1) interval of probability 1 - 1e-4, [65, 139] (measured at n = 300: mean 114, variance 96,
    covariance 105; at n = 40: 104, 112, 99). The mean and variance statistics are exactly chi-square; the covariance
    statistic's limit matches its exact mean and variance, and at n = 40 the plain chi-square limit it had before
    rejected 208 sets of 1000 (and 1.9% at level 1e-4): its variance is three times the chi-square's when n is close
    to D. A check whose interval were too narrow or too wide (e.g. one degree of freedom per draw instead of per
    value) would fail here."""
    oracle = random_gaussian(CosineSchedule(), DIM, seed=0)
    generator = torch.Generator().manual_seed(4)
    rejected = dict.fromkeys(("mean", "variance", "covariance"), 0)
    for _ in range(1000):
        x = oracle.sample(n, generator)
        for name, value, low, high in gaussian_statistics(x, oracle.mean, oracle.cov, 0.1):
            rejected[name] += not low <= value <= high
    low, high = binom.ppf(LEVEL / 2, 1000, 0.1), binom.isf(LEVEL / 2, 1000, 0.1)
    assert all(low <= count <= high for count in rejected.values()), (rejected, low, high)
