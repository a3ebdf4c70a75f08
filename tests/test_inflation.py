"""Multiplicative inflation of posterior draws: the table lookup, the transform, its fit, and its use in denoise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import run_sda
from test_restore import IndependentPixels

from sda_cli import denoise
from sda_cli.inflation import fit_factor, inflate, inflation_factor

TABLE = [[0.05, 1.2], [0.1, 1.1], [0.2, 1.05]]


def test_factor_is_interpolated_in_log_sigma_and_held_at_the_ends() -> None:
    assert inflation_factor([], 0.1) == 1.0
    assert inflation_factor(TABLE, 0.1) == pytest.approx(1.1)
    assert inflation_factor(TABLE, math.sqrt(0.1 * 0.2)) == pytest.approx(1.075)  # halfway in log sigma
    assert inflation_factor(TABLE, 0.01) == 1.2 and inflation_factor(TABLE, 0.9) == 1.05
    assert inflation_factor(list(reversed(TABLE)), 0.07) == inflation_factor(TABLE, 0.07)


def test_inflation_restores_the_identities_it_is_fitted_to() -> None:
    """Draws whose spread is 80% of the error of the mean: after inflation by the fitted factor, the draw error is
    twice the MMSE and the spread equals the error (exactly, on the data fitted)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=generator, dtype=torch.float64)
    m = x + 0.5 * torch.randn(x.shape, generator=generator, dtype=torch.float64)  # an estimate with error 0.25
    draws = m + math.sqrt(0.8 * 0.25) * torch.randn(3, *x.shape, generator=generator, dtype=torch.float64)
    error = float((m - x).square().sum())
    spread = float((draws - m).square().sum() / 3)
    factor = fit_factor(error, spread)
    inflated = inflate(draws, m, factor)
    assert float((inflated - m).square().sum() / 3) == pytest.approx(error)
    assert float((inflated - x).square().sum() / 3) / error == pytest.approx(2.0, abs=0.01)
    with pytest.raises(ValueError, match="positive"):
        fit_factor(0.0, 1.0)


def test_denoise_inflates_draws_about_the_posterior_mean() -> None:
    """With the same seed, inflation by 1.5 moves every draw 1.5 times as far from the mmse estimate, so the std map
    grows by 1.5; mmse itself is untouched."""
    model = IndependentPixels(0.3)
    pixels = 0.5 + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    m, _ = denoise(model, pixels, 0.1)
    runs = {
        factor: denoise(model, pixels, 0.1, method="mean", samples=3, steps=8, inflation=factor, seed=4)
        for factor in (1.0, 1.5)
    }
    (raw_mean, raw_std), (mean, std) = runs[1.0], runs[1.5]
    assert raw_std is not None and std is not None
    torch.testing.assert_close(std, 1.5 * raw_std)
    torch.testing.assert_close(mean - m, 1.5 * (raw_mean - m))
    model.inflation = ((0.1, 1.5),)
    auto_mean, _ = denoise(model, pixels, 0.1, method="mean", samples=3, steps=8, seed=4)
    torch.testing.assert_close(auto_mean, mean)
    with pytest.raises(ValueError, match="inflation"):
        denoise(model, pixels, 0.1, method="mean", inflation=-1.0)


@pytest.mark.parametrize("model_variance", [0.05, 0.1, 0.3, 0.6])
def test_sure_inflation_calibrates_the_draws_of_a_wrong_prior(model_variance: float) -> None:
    """Pixels independent N(0, 0.3) in model units, denoised by the exact denoiser of N(0, v) with v too small, right
    or too large: its raw draws' spread c σ² (c = v / (v + σ²)) is not the error of its mean, (1 - c)² 0.3 + c² σ²
    (2.2 and 4.8 times the spread for v = 0.1 and 0.05; 0.9 times for v = 0.6: a wide Gaussian prior errs less).
    ``inflation="sure"`` measures each image's factor from the image alone, and the draws come out calibrated
    against the truth: draw ratio E|x - d|² / E|x - m|² within [1.9, 2.1] and std ratio within [0.9, 1.1] (exact
    values 2 and 1; 64 images of 32² and K = 4 give a Monte-Carlo error near 1%); the raw draws of the wrong priors
    are outside both ranges where the prior is too narrow."""
    generator = torch.Generator().manual_seed(0)
    n, k, sigma, true_variance = 64, 4, 0.2, 0.3  # pixel sigma: 0.4 in model units
    x = math.sqrt(true_variance) * torch.randn(n, 1, 32, 32, generator=generator)
    y = x + 2 * sigma * torch.randn(x.shape, generator=generator)
    model = IndependentPixels(model_variance)
    truth = (x + 1) / 2
    m, _ = denoise(model, (y + 1) / 2, sigma)

    def ratios(inflation: float | str) -> tuple[float, float]:
        mean, std = denoise(model, (y + 1) / 2, sigma, method="mean", samples=k, steps=32, inflation=inflation, seed=3)
        assert std is not None
        mean_error, spread = float((mean - truth).square().sum()), float(std.square().sum())
        draw_ratio = (mean_error + (k - 1) / k * spread) / float((m - truth).square().sum())
        return draw_ratio, mean_error / ((1 + 1 / k) * spread)

    draw_ratio, std_ratio = ratios("sure")
    assert 1.9 <= draw_ratio <= 2.1 and 0.9 <= std_ratio <= 1.1, (draw_ratio, std_ratio)
    raw_draw_ratio, raw_std_ratio = ratios(1.0)
    if model_variance < true_variance:
        assert not 1.9 <= raw_draw_ratio <= 2.1 and not 0.9 <= raw_std_ratio <= 1.1, (raw_draw_ratio, raw_std_ratio)


def test_sure_inflation_needs_two_draws() -> None:
    pixels = torch.full((1, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match="samples=2 or more"):
        denoise(IndependentPixels(0.3), pixels, 0.1, method="posterior", inflation="sure")


def test_auto_is_sure_for_a_model_without_a_table() -> None:
    """``auto`` on a model without a calibrated table, with 2 draws or more, gives exactly the draws of
    ``inflation="sure"`` (same seed), not the raw ones; one draw stays raw."""
    model = IndependentPixels(0.1)
    pixels = 0.5 + 0.2 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    runs = {
        inflation: denoise(model, pixels, 0.1, method="mean", samples=3, steps=8, inflation=inflation, seed=4)
        for inflation in ("auto", "sure", 1.0)
    }
    torch.testing.assert_close(runs["auto"], runs["sure"], rtol=0, atol=0)
    assert not torch.equal(runs["auto"][1], runs[1.0][1])
    one = {inflation: denoise(model, pixels, 0.1, method="posterior", steps=8, inflation=inflation, seed=4)[0]
           for inflation in ("auto", 1.0)}  # fmt: skip
    torch.testing.assert_close(one["auto"], one[1.0], rtol=0, atol=0)


def test_cli_auto_with_an_estimated_sigma_keeps_raw_draws(tiny_model: Path, image_dir: Path, tmp_path: Path) -> None:
    """``sda denoise --sigma auto``: SURE needs the exact sigma, so ``--inflation auto`` on a model without a table
    gives the raw draws (the files of ``--inflation 1``, byte for byte); ``--verbose`` says which inflation ran."""
    outputs = {}
    for sigma, inflation in (("auto", "auto"), ("auto", "1"), ("0.1", "auto")):
        out, std = tmp_path / f"{sigma}-{inflation}.png", tmp_path / f"{sigma}-{inflation}-std.npy"
        result = run_sda("denoise", image_dir / "img_000.png", "-o", out, "--std", std, "--model", tiny_model,
                         "--sigma", sigma, "--method", "mean", "--samples", "2", "--steps", "4",
                         "--inflation", inflation, "--seed", "1", "--verbose")  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[sigma, inflation] = (out.read_bytes(), std.read_bytes(), result.stderr)
    assert outputs["auto", "auto"][:2] == outputs["auto", "1"][:2]
    assert "inflation of the draws: none (raw draws)" in outputs["auto", "auto"][2]
    assert "inflation of the draws: each image's own factor, from SURE" in outputs["0.1", "auto"][2]
