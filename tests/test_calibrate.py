"""Fitting the inflation of posterior draws (``sda_cli.calibration``) against closed form, and ``sda calibrate``.

Two oracles with a known factor: draws of the exact posterior of a correlated Gaussian whose spread about the
posterior mean is scaled by 0.8 (factor 1/0.8; exact draws: 1), given to the fit directly; and the whole pipeline on a
model of independent Gaussian pixels asked about data of another variance, where the MMSE error and the posterior
variance, hence the factor and the ratios, are known in closed form.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from conftest import run_sda
from oracle import random_gaussian
from test_restore import IndependentPixels

from sda_cli.calibration import STEPS, Sums, calibrate, fit_level
from sda_cli.checkpoint import read_metadata
from sda_cli.inflation import inflate
from sda_cli.models import load_model
from sda_cli.schedule import CosineSchedule


def _direct_ratios(x: torch.Tensor, m: torch.Tensor, draws: torch.Tensor) -> tuple[float, float]:
    """The two ratios from the draws themselves: mean_k |x - d_k|² / |x - m|², |x - mean|² / ((1 + 1/K) sum s²)."""
    k = draws.shape[0]
    error = float((x - m).square().sum())
    draw = float((x - draws).square().sum()) / k / error
    std = float((x - draws.mean(0)).square().sum()) / ((1 + 1 / k) * float(draws.std(0).square().sum()))
    return draw, std


@pytest.mark.parametrize("scale", [1.0, 0.8])
def test_fit_restores_draws_scaled_about_the_exact_posterior_mean(scale: float) -> None:
    """Exact posterior draws of a correlated Gaussian, shrunk about the posterior mean by ``scale``: the factor is
    1/scale within Monte-Carlo error (an inverted ratio gives ``scale``, a missing square root 1/scale²); the raw
    ratios are those of the draws themselves (1 + scale² and the std identity) and the inflated ones 2 and 1."""
    generator = torch.Generator().manual_seed(0)
    oracle = random_gaussian(CosineSchedule(), dim=16, seed=1)
    n, k, sigma_y = 3000, 2, 0.2
    x = oracle.sample(n, generator)
    y = x + sigma_y * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    m, cov = oracle.posterior(y, sigma_y)
    noise = torch.randn(k, n, oracle.dim, generator=generator, dtype=torch.float64)
    draws = m + scale * noise @ torch.linalg.cholesky(cov).T
    sums = Sums()
    for part in torch.arange(n).chunk(3):  # the sums add over batches
        sums.add(x[part], m[part], draws[:, part].mean(0), draws[:, part].std(0))
    fit = fit_level(0.1, sums, k)
    # Monte-Carlo error of the factor: about 0.4% here (n·D = 48,000 values of each sum).
    assert fit.factor == pytest.approx(1 / scale, rel=0.02)
    assert (fit.raw.draw, fit.raw.std) == pytest.approx(_direct_ratios(x, m, draws), rel=1e-9)
    inflated = inflate(draws, m, fit.factor)
    assert (fit.inflated.draw, fit.inflated.std) == pytest.approx(_direct_ratios(x, m, inflated), rel=1e-9)
    assert fit.raw.draw == pytest.approx(1 + scale**2, rel=0.02)
    assert fit.inflated.draw == pytest.approx(2.0, rel=0.02) and fit.inflated.std == pytest.approx(1.0, rel=0.03)


def test_pipeline_fits_a_model_whose_prior_is_too_narrow_in_closed_form() -> None:
    """Data of independent pixels N(0, v) in model units, and the exact denoiser of N(0, v_m), through the pipeline at
    the default steps (``STEPS``). With gain g = v_m / (v_m + s²), the model's MMSE error per value is
    E = (1 - g)² v + g² s² and its posterior variance P = v_m s² / (v_m + s²): the factor is (E / P)^½, 1 for v = v_m.
    The sampler's own error on the variance (a few per cent at most) is the same for both data, since the draws'
    spread about the mean does not depend on the data for a Gaussian model; it is measured on v = v_m and divided out.
    The model's own calibration table must not change the fit (the draws are raw)."""
    v_model, sigma, k = 0.1, 0.1, 2
    s2 = (2 * sigma) ** 2  # model units
    gain = v_model / (v_model + s2)
    posterior = v_model * s2 / (v_model + s2)
    fits = {}
    for variance in (v_model, 0.3):
        x = 0.5 + math.sqrt(variance) / 2 * torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(2))
        model = IndependentPixels(v_model)
        model.inflation = ((sigma, 1.7),)  # must be ignored: the fit measures raw draws
        fitted = calibrate(model, x, [sigma], samples=k, seed=0)
        assert (fitted.count, fitted.steps) == (256, STEPS)
        assert fitted.table == [[sigma, round(fitted.levels[0].factor, 4)]]
        fits[variance] = fitted.levels[0]
    exact, narrow = fits[v_model], fits[0.3]
    assert 0.97 <= exact.factor <= 1.03  # the sampler's own error at its default steps (measured 0.994), no more
    error = (1 - gain) ** 2 * 0.3 + gain**2 * s2
    assert narrow.factor / exact.factor == pytest.approx(math.sqrt(error / posterior), rel=0.02)  # 1.254
    spread = posterior / exact.factor**2  # what the sampler's draws spread, per value
    assert narrow.raw.draw == pytest.approx(1 + spread / error, rel=0.02)
    assert narrow.raw.std == pytest.approx((error + spread / k) / ((1 + 1 / k) * spread), rel=0.03)
    for fit in (exact, narrow):
        assert fit.inflated.draw == pytest.approx(2.0, rel=0.02) and fit.inflated.std == pytest.approx(1.0, rel=0.03)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_command_writes_a_calibrated_copy(tiny_model: Path, image_dir: Path, tmp_path: Path) -> None:
    """``sda calibrate`` end to end: a copy with one [sigma, factor] per level and a note, the same weights, the input
    untouched; a table of the ratios on standard output."""
    before = _digest(tiny_model)
    out = tmp_path / "calibrated.safetensors"
    result = run_sda(
        "calibrate", image_dir, "--model", tiny_model, "-o", out, "--sigmas", "0.2,25/255", "--count", "3",
        "--steps", "4", "--seed", "0", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _digest(tiny_model) == before
    section = read_metadata(out)["calibration"]
    assert [pair[0] for pair in section["inflation"]] == pytest.approx([25 / 255, 0.2])
    assert all(factor > 0 for _, factor in section["inflation"])
    assert (section["count"], section["samples"], section["steps"]) == (3, 2, 4)
    original, calibrated = load_model(tiny_model, device="cpu"), load_model(out, device="cpu")
    assert calibrated.inflation == tuple(tuple(pair) for pair in section["inflation"])
    for (name, a), (_, b) in zip(original.state_dict().items(), calibrated.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    rows = [line for line in result.stdout.splitlines() if "/255)" in line]
    assert len(rows) == 2 and "draw ratio (2)" in result.stdout, result.stdout
    assert f"wrote {out}" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sigmas", "0.1,abc"], "--sigmas takes noise levels in [0, 1] pixel units separated by commas"),
        (["--sigmas", "0.1,-0.2"], "--sigmas takes noise levels"),
        (["--sigmas", "0.00001"], "outside this model's noise range"),
        (["--samples", "1"], "Invalid value for '--samples'"),
        (["-o", "{tmp}/out.png"], "ending in .safetensors"),
        (["{tmp}/empty"], "no image files found in the inputs"),
    ],
)
def test_calibrate_refuses_bad_input_in_one_line(
    tiny_model: Path, image_dir: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    inputs = [] if arguments[0].endswith("empty") else [str(image_dir)]
    out = tmp_path / "out.safetensors"
    result = run_sda("calibrate", *inputs, "--model", tiny_model, "-o", out, "--steps", "4", *arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.startswith("error:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()
