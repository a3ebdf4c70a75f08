"""The denoising pipeline in pixel units (``sda_cli.restore``) and the Python API, against closed form and the CLI.

An oracle model wraps the exact denoiser of Gaussian data (``oracle.GaussianDenoiser``) so that the pipeline's
outputs, in pixel units, can be compared with the exact posterior: its mean, its standard deviation (model units are
twice pixel units), and its variance in tile overlaps and tile centres.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_sda
from oracle import GaussianDenoiser
from PIL import Image
from scipy.stats import norm
from torch import Tensor, nn

from sda_cli import denoise, load_model, sample
from sda_cli.schedule import CosineSchedule
from sda_cli.tiles import TiledDenoiser

LEVEL = 1e-4
Z = float(norm.isf(LEVEL / 2))


class OracleModel(nn.Module):
    """The exact denoiser of images ``(C, H, W)`` whose values are N(mean, cov) in model units, as a model the
    pipeline takes (a schedule, a backbone's channel count, parameters that say the device)."""

    def __init__(self, oracle: GaussianDenoiser, channels: int) -> None:
        super().__init__()
        self.oracle, self.schedule = oracle, oracle.schedule
        self.anchor = nn.Parameter(torch.zeros(()))
        self.backbone = SimpleNamespace(config=SimpleNamespace(channels=channels))

    def forward(self, x_t: Tensor, t: float) -> Tensor:
        return self.oracle(x_t.double(), t).to(x_t.dtype)


class IndependentPixels(nn.Module):
    """The exact denoiser of images whose values are independent N(0, v) in model units: a pointwise gain, so a
    tiled evaluation is exact and any seam in the draws comes from the sampling, not from the network."""

    def __init__(self, variance: float) -> None:
        super().__init__()
        self.variance, self.schedule = variance, CosineSchedule()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.backbone = SimpleNamespace(config=SimpleNamespace(channels=1))

    def forward(self, x_t: Tensor, t: float) -> Tensor:
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return alpha * self.variance / (alpha**2 * self.variance + sigma**2) * x_t


def test_std_map_is_the_posterior_standard_deviation_in_pixel_units() -> None:
    """The mean of K draws and their standard deviation, in pixel units, against the exact posterior of a correlated
    Gaussian: the average of std² over images is diag(S) / 4 (S in model units) within Monte-Carlo error plus the
    ancestral sampler's O(1/steps) loss of variance (measured 0.90-1.00 per direction at 128 steps, 1% at 512), and
    the mmse output is the exact posterior mean (m + 1) / 2."""
    generator = torch.Generator().manual_seed(0)
    dim = 16
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    cov = (q * torch.logspace(-2, -0.5, dim, dtype=torch.float64)) @ q.T
    oracle = GaussianDenoiser(torch.full((dim,), 0.1), cov, CosineSchedule())
    model = OracleModel(oracle, channels=1)
    n, k, sigma = 400, 8, 0.1  # pixel units: sigma_y = 0.2 in model units
    x = oracle.sample(n, generator)
    y = x + 2 * sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    pixels = ((y + 1) / 2).reshape(n, 1, 4, 4).float()
    mean, _ = oracle.posterior(y, 2 * sigma)
    estimate, none = denoise(model, pixels, sigma)
    assert none is None
    torch.testing.assert_close(estimate.flatten(1).double(), (mean + 1) / 2, rtol=0, atol=1e-5)
    _, std = denoise(model, pixels, sigma, method="mean", samples=k, steps=512, generator=generator)
    assert std is not None and std.shape == pixels.shape
    _, post = oracle.posterior(y[:1], 2 * sigma)
    expected = post.diagonal() / 4  # pixel variance: model units are twice pixel units
    variance = std.flatten(1).double().square().mean(0)
    bound = Z * expected * math.sqrt(2 / (n * (k - 1))) + 0.02 * expected
    assert bool(((variance - expected).abs() <= bound).all()), variance / expected


def test_draws_have_no_seams_in_tile_overlaps() -> None:
    """One 40x40 image in 16-pixel tiles (overlap 2): the per-pixel variance of many posterior draws is the same in
    tile overlaps as in tile centres, and the same as without tiles, within Monte-Carlo error. Sampling each tile with
    its own noise and crossfading them would leave as little as half the variance in the overlaps; the pipeline
    samples the whole image as one field and tiles only the network evaluation."""
    variance, sigma, k, steps = 0.3, 0.15, 160, 24
    model = IndependentPixels(variance)
    generator = torch.Generator().manual_seed(1)
    pixels = (0.5 + sigma * torch.randn(1, 1, 40, 40, generator=generator)).expand(k, -1, -1, -1).contiguous()
    spreads = []
    for tile in (16, 64):  # tiled, and whole
        drawn, _ = denoise(model, pixels, sigma, method="posterior", steps=steps, tile=tile, generator=generator)
        spreads.append(drawn[:, 0].var(0).double())  # pixel units, over the k draws of the same observation
    tiled, whole = spreads
    overlap = torch.zeros(40, 40, dtype=torch.bool)
    for start in (14, 24):  # tile_starts(40, 16, 2)[1:]
        overlap[start : start + 2, :] = True
        overlap[:, start : start + 2] = True
    # a mean of m independent per-pixel sample variances has relative standard error sqrt(2 / ((k - 1) m))
    inside, outside = float(tiled[overlap].mean()), float(tiled[~overlap].mean())
    error = Z * math.sqrt(2 / ((k - 1) * int(overlap.sum()))) + Z * math.sqrt(2 / ((k - 1) * int((~overlap).sum())))
    assert abs(inside / outside - 1) < error, (inside, outside, error)
    reference = float(whole.mean())
    assert abs(float(tiled.mean()) / reference - 1) < 2 * Z * math.sqrt(2 / ((k - 1) * 1600)), (tiled.mean(), reference)


def test_tiled_denoiser_vjp_matches_autograd() -> None:
    """The tile-by-tile vector-Jacobian product equals autograd through the tiled evaluation of a convolution."""
    torch.manual_seed(2)
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()

    class Local(nn.Module):
        schedule = CosineSchedule()

        def forward(self, x: Tensor, t: float) -> Tensor:
            return torch.tanh(conv(x))

    tiled = TiledDenoiser(Local(), tile=16, overlap=4, batch_pixels=16 * 16)
    x = torch.randn(2, 1, 30, 37, dtype=torch.float64)
    v = torch.randn_like(x)
    x_hat, product = tiled.mean_and_vjp(x, 0.5, lambda _: v)
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        from sda_cli.tiles import map_tiles

        out = map_tiles(lambda z: Local()(z, 0.5), leaf, 16, 4, batch_pixels=16 * 16)
        (expected,) = torch.autograd.grad(out, leaf, v)
    torch.testing.assert_close(x_hat, out.detach())
    torch.testing.assert_close(product, expected)


def test_python_api_gives_the_numbers_of_the_command_line(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    """``denoise`` and ``sample`` from Python with the CLI's seed equal ``sda denoise`` and ``sda sample``."""
    noisy = tmp_path / "noisy.png"
    Image.open(image_dir / "img_004.png").save(noisy)
    model = load_model(tiny_model, device="cpu", precision="fp32")
    pixels = torch.from_numpy(np.asarray(Image.open(noisy), dtype=np.float32) / 255).permute(2, 0, 1)
    runs = {"mmse": [], "mean": ["--samples", "3", "--steps", "4"], "sda": ["--steps", "3"]}
    for method, extra in runs.items():
        out, std = tmp_path / f"{method}.npy", tmp_path / f"{method}_std.npy"
        with_std = ["--std", str(std)] if method == "mean" else []
        result = run_sda("denoise", noisy, "--sigma", "0.1", "--model", tiny_model, "--precision", "fp32",
                         "--method", method, *extra, *with_std, "--seed", "5", "-o", out)  # fmt: skip
        assert result.returncode == 0, result.stderr
        options = {"samples": 3, "steps": 4} if method == "mean" else {"steps": 3} if method == "sda" else {}
        estimate, spread = denoise(model, pixels, 0.1, method=method, bit_depth=8, seed=5, **options)
        expected = np.load(out).transpose(2, 0, 1)
        np.testing.assert_allclose(estimate.numpy(), expected, rtol=0, atol=1e-6)
        if method == "mean":
            assert spread is not None
            np.testing.assert_allclose(spread.numpy(), np.load(std).transpose(2, 0, 1), rtol=0, atol=1e-6)
    grid = tmp_path / "grid.npy"
    result = run_sda("sample", "-n", "2", "--steps", "3", "--model", tiny_model, "--precision", "fp32",
                     "--seed", "9", "-o", tmp_path / "samples")  # fmt: skip
    assert result.returncode == 0, result.stderr
    images = sample(model, 2, steps=3, seed=9)
    written = np.asarray(Image.open(tmp_path / "samples" / "sample_0.png"), dtype=np.float64) / 255
    assert np.abs(written - images[0].permute(1, 2, 0).double().numpy()).max() <= 0.5 / 255 + 1e-6
    assert not grid.exists()


def test_bad_arguments_are_refused() -> None:
    model = IndependentPixels(0.3)
    pixels = torch.full((1, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match="unknown method"):
        denoise(model, pixels, 0.1, method="nope")
    with pytest.raises(ValueError, match="samples needs a sampling method"):
        denoise(model, pixels, 0.1, samples=2)
    with pytest.raises(ValueError, match="takes no option"):
        denoise(model, pixels, 0.1, method="posterior", levels=3)
    with pytest.raises(ValueError, match="outside this model's noise range"):
        denoise(model, pixels, 1e-6)
    with pytest.raises(ValueError, match="noise levels for"):
        denoise(model, pixels, [0.1, 0.2])


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("mmse", {}),
        ("posterior", {"steps": 3, "inflation": 1.1}),
        ("mean", {"steps": 2, "samples": 3}),
        ("mean", {"steps": 2, "samples": 2, "inflation": "sure"}),
        ("mean", {"steps": 2, "samples": 2, "inflation": "sure", "tile": 64}),
        ("sda", {"steps": 2}),
        ("langevin", {"steps": 2, "levels": 2}),
        ("guided", {"steps": 3}),
    ],
)
def test_progress_counts_every_tile_the_network_evaluates(method: str, options: dict) -> None:
    """The progress callback's count of tiles reaches its announced total exactly, in steps that never go back:
    the total (tiles per evaluation times the method's evaluations, draws, sda's split backward pass and the
    inflation's extra evaluation, SURE's forward and backward pass) is what the network is actually asked to do, in
    tiles of 16 and, with ``tile`` 64, whole."""
    calls: list[tuple[int, int]] = []
    pixels = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    denoise(IndependentPixels(0.3), pixels, 0.1, method=method, seed=0, progress=lambda *c: calls.append(c),
            **{"tile": 16, **options})  # fmt: skip
    done = [d for d, _ in calls]
    assert len({total for _, total in calls}) == 1 and done == sorted(done)
    assert done[-1] == calls[-1][1] and done[-1] > 0, calls[-3:]
