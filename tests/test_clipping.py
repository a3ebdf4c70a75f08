"""Imputation of clipped pixels: the truncated-normal mean against scipy, and the MMSE gain on Gaussian data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import GaussianDenoiser, random_covariance
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.stats import truncnorm
from test_cli import ok, sda

from sda_cli.clipping import censored_mean, impute_clipped, local_mean
from sda_cli.schedule import make_schedule


def mmse(oracle: GaussianDenoiser, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
    """The exact posterior mean :math:`\\mathbb{E}[x \\mid y]` of :math:`y = x + \\sigma_y n` for the oracle's Gaussian
    (its closed form), in the shape and dtype of ``y``."""
    mean, _ = oracle.posterior(y.reshape(len(y), -1), sigma_y)
    return mean.to(y.dtype).reshape(y.shape)


@pytest.mark.parametrize("mean", [-3.0, -1.0, 0.0, 0.4, 2.0, 8.0])
@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_censored_mean_is_the_truncated_normal_mean(mean: float, scale: float) -> None:
    bound = 0.5
    below = float(truncnorm.mean(-np.inf, (bound - mean) / scale, loc=mean, scale=scale))
    above = float(truncnorm.mean((bound - mean) / scale, np.inf, loc=mean, scale=scale))
    values = torch.tensor([mean])
    assert float(censored_mean(values, scale, below=bound)) == pytest.approx(below, abs=1e-5 * max(1.0, abs(below)))
    assert float(censored_mean(values, scale, above=bound)) == pytest.approx(above, abs=1e-5 * max(1.0, abs(above)))


def test_censored_mean_stays_finite_and_beyond_the_bound_far_in_the_tails() -> None:
    means = torch.tensor([-1e3, -50.0, 50.0, 1e3])
    below, above = censored_mean(means, 0.1, below=0.0), censored_mean(means, 0.1, above=0.0)
    assert torch.isfinite(below).all() and torch.isfinite(above).all()
    assert (below < 0).all() and (above > 0).all()
    # where the mean lies far inside the kept side, the truncation changes nothing
    assert float(below[0]) == pytest.approx(-1e3) and float(above[-1]) == pytest.approx(1e3)


def test_an_observation_without_clipped_pixels_is_returned_without_evaluating() -> None:
    calls = []
    y = torch.full((2, 3, 4, 4), 0.25)
    out = impute_clipped(y, 0.2, lambda v: calls.append(v) or v)
    assert out is y and not calls


def test_imputation_recovers_most_of_the_mmse_lost_to_clipping() -> None:
    """Gaussian data near the bottom of the range: clipping at -1 raises the MMSE error; imputation removes most
    of the excess, and cannot beat the MMSE of the unclipped observation (which holds more information)."""
    generator = torch.Generator().manual_seed(0)
    schedule = make_schedule({"name": "cosine"})
    dim, n, sigma_y = 6, 20_000, 0.5
    oracle = GaussianDenoiser(torch.full((dim,), -0.7), random_covariance(dim, generator), schedule)
    x = oracle.sample(n, generator).float()
    y = x + sigma_y * torch.randn(x.shape, generator=generator)
    clipped = y.clamp(-1.0, 1.0)
    assert (clipped == -1).float().mean() > 0.2  # the case this is for

    def error(observation: torch.Tensor) -> torch.Tensor:
        return (mmse(oracle, observation, sigma_y) - x).double().square().mean(1)

    def estimate(observation: torch.Tensor) -> torch.Tensor:
        return mmse(oracle, observation, sigma_y)

    exact, naive = error(y), error(clipped)
    imputed = error(impute_clipped(clipped, sigma_y, estimate, step=0.0, rounds=2))

    def margin(a: torch.Tensor, b: torch.Tensor) -> float:
        return 3 * float((a - b).std()) / math.sqrt(n)

    assert naive.mean() - exact.mean() > 10 * margin(naive, exact)
    assert imputed.mean() < naive.mean() - margin(imputed, naive)
    # here x itself often lies below -1 (unlike pixels), which no imputation can recover: about 36% remains
    assert imputed.mean() - exact.mean() < 0.6 * (naive.mean() - exact.mean())
    assert imputed.mean() > exact.mean() - margin(imputed, exact)


def test_clipped_auto_imputes_8_bit_files_and_not_float_files(tmp_path: Path, tiny_model: Path) -> None:
    rng = np.random.default_rng(0)
    clean = np.clip(rng.uniform(-0.2, 0.4, (16, 16, 3)), 0, 1)  # dark: many pixels clip at 0
    noisy = np.clip(clean + 0.2 * rng.standard_normal(clean.shape), 0, 1)
    Image.fromarray(np.round(noisy * 255).astype(np.uint8)).save(tmp_path / "noisy.png")
    np.save(tmp_path / "noisy.npy", (np.round(noisy * 255) / 255).astype(np.float32))
    outputs = {}
    for name, source, flag in [
        ("png_auto", "noisy.png", "auto"),
        ("png_on", "noisy.png", "on"),
        ("png_off", "noisy.png", "off"),
        ("npy_auto", "noisy.npy", "auto"),
        ("npy_off", "noisy.npy", "off"),
    ]:
        target = tmp_path / f"{name}.npy"
        ok("denoise", tmp_path / source, "--sigma", "0.2", "--model", tiny_model, "--precision", "fp32",
           "--clipped", flag, "-o", target)  # fmt: skip
        outputs[name] = np.load(target)
    assert np.array_equal(outputs["png_auto"], outputs["png_on"])
    assert not np.allclose(outputs["png_on"], outputs["png_off"], atol=1e-4)
    assert np.array_equal(outputs["npy_auto"], outputs["npy_off"])
    assert np.allclose(outputs["png_off"], outputs["npy_off"], atol=1e-5)


def test_a_bad_clipped_value_is_a_usage_error(tmp_path: Path, tiny_model: Path) -> None:
    np.save(tmp_path / "noisy.npy", np.zeros((8, 8, 3), np.float32))
    result = sda("denoise", tmp_path / "noisy.npy", "--sigma", "0.1", "--model", tiny_model, "--clipped", "maybe",
                 "-o", tmp_path / "out.npy")  # fmt: skip
    assert result.returncode == 2
    assert "clipped must be auto, on or off" in result.stderr and "Traceback" not in result.stderr


def test_local_mean_is_the_gaussian_filter_with_nearest_border() -> None:
    image = torch.rand(2, 3, 11, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([[gaussian_filter(c, 1.5, mode="nearest", truncate=4.0) for c in i] for i in image.numpy()])
    assert np.allclose(local_mean(image, 1.5).numpy(), expected, atol=1e-12)


def test_imputation_from_the_local_mean_does_as_well_as_from_the_exact_mmse() -> None:
    """Smooth Gaussian images (a squared-exponential covariance of length 3 pixels) near the bottom of the range:
    imputing from a blur of the observation leaves as little of the clipping loss as imputing from the exact MMSE."""
    generator = torch.Generator().manual_seed(0)
    side, n, sigma_y = 12, 4000, 0.3
    grid = torch.cartesian_prod(torch.arange(side), torch.arange(side)).double()
    cov = 0.16 * torch.exp(-torch.cdist(grid, grid).square() / 18) + 1e-3 * torch.eye(side * side, dtype=torch.float64)
    oracle = GaussianDenoiser(torch.full((side * side,), -0.7), cov, make_schedule({"name": "cosine"}))
    x = oracle.sample(n, generator).float().reshape(n, 1, side, side)
    y = x + sigma_y * torch.randn(x.shape, generator=generator)
    clipped = y.clamp(-1.0, 1.0)
    assert (clipped == -1).float().mean() > 0.2

    def excess(observation: torch.Tensor) -> float:
        """The MMSE error from ``observation`` beyond the error from the unclipped one, per pixel."""
        return float(
            (mmse(oracle, observation, sigma_y) - x).square().mean() - (mmse(oracle, y, sigma_y) - x).square().mean()
        )

    naive = excess(clipped)
    from_local_mean = excess(impute_clipped(clipped, sigma_y, step=0.0))
    from_mmse = excess(impute_clipped(clipped, sigma_y, lambda v: mmse(oracle, v, sigma_y), step=0.0))
    assert from_local_mean < 0.25 * naive
    assert abs(from_local_mean - from_mmse) < 0.05 * naive
