"""Plug-and-play's self-ensemble: the eight flips and quarter turns, and the averaged prior step, against NumPy and
an exact Gaussian denoiser."""

from __future__ import annotations

import numpy as np
import torch
from oracle import GaussianDenoiser

from sda_cli.guidance import PnP
from sda_cli.guidance.pnp import dihedral
from sda_cli.operators import Blur
from sda_cli.schedule import CosineSchedule

F64 = torch.float64
SIDE = 6


def numpy_dihedral(image: np.ndarray, index: int) -> np.ndarray:
    """NumPy's spelling of the same transform: a left-right flip for index >= 4, then index % 4 quarter turns."""
    return np.rot90(np.flip(image, -1) if index >= 4 else image, index % 4, axes=(-2, -1))


def test_dihedral_is_the_group_of_the_square() -> None:
    """On a 3 x 5 image: the eight transforms are NumPy's, pairwise distinct, and each inverse undoes its own."""
    x = torch.randn(2, 3, 3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    seen = []
    for index in range(8):
        out = dihedral(x, index)
        np.testing.assert_array_equal(out.numpy(), numpy_dihedral(x.numpy(), index))
        torch.testing.assert_close(dihedral(out, index, inverse=True), x, rtol=0, atol=0)
        seen.append(out.flatten().tolist())
    assert len({tuple(v) for v in seen}) == 8


def gaussian(mean: torch.Tensor) -> GaussianDenoiser:
    """N(mean, Sigma) on 6 x 6 images, Sigma_ij = 0.25 exp(-|p_i - p_j| / 3), invariant under the eight transforms."""
    rows, cols = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    pixels = torch.stack([rows.flatten(), cols.flatten()], 1).to(F64)
    return GaussianDenoiser(mean, 0.25 * torch.exp(-torch.cdist(pixels, pixels) / 3), CosineSchedule())


def test_ensemble_averages_the_transformed_denoiser() -> None:
    """The prior step with ensemble E is (1/E) sum_e T_e^-1 x_hat(T_e z), computed here with NumPy's transforms, for a
    denoiser that is not symmetric (a random mean): E = 8 differs from E = 1 by more than 0.05. For a prior with
    the square's symmetry (a constant mean) the ensemble changes nothing (1e-12). Network evaluations: steps x E."""
    z = torch.randn(3, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = Blur(1.0)(z)
    rho = 0.3
    skewed = gaussian(torch.randn(SIDE * SIDE, generator=torch.Generator().manual_seed(2), dtype=F64))
    method = PnP(skewed, y, 0.1, operator=Blur(1.0), shape=(1, SIDE, SIDE), ensemble=8, steps=5)
    assert method.nfe == 40
    t = float(skewed.schedule.time_of_ratio(torch.tensor(rho, dtype=F64)))
    alpha = float(skewed.schedule.alpha_sigma(torch.tensor(t, dtype=F64))[0])
    expected = np.zeros(z.shape)
    for index in range(8):
        turned = torch.from_numpy(numpy_dihedral(alpha * z.numpy(), index).copy())
        denoised = skewed(turned, t).numpy()
        expected += (
            np.flip(np.rot90(denoised, -(index % 4), axes=(-2, -1)), -1)
            if index >= 4
            else np.rot90(denoised, -(index % 4), axes=(-2, -1))
        )
    expected /= 8
    got = method.prior_step(z, rho)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    single = PnP(skewed, y, 0.1, operator=Blur(1.0), shape=(1, SIDE, SIDE)).prior_step(z, rho)
    assert float((got - single).abs().max()) > 0.05
    symmetric = gaussian(torch.full((SIDE * SIDE,), 0.3, dtype=F64))
    eight = PnP(symmetric, y, 0.1, operator=Blur(1.0), shape=(1, SIDE, SIDE), ensemble=8).prior_step(z, rho)
    one = PnP(symmetric, y, 0.1, operator=Blur(1.0), shape=(1, SIDE, SIDE)).prior_step(z, rho)
    torch.testing.assert_close(eight, one, rtol=0, atol=1e-12)


def test_defaults_follow_the_operator() -> None:
    """Deblurring (a blur or kernel alone): 8 iterations and lam 0.15; a blur with decimation: 10 and 0.15; a block
    average or a mask: DPIR's 24 and 0.23. Values given are kept."""
    from sda_cli.operators import Compose, Decimate, Downsample, Kernel, Mask

    prior = gaussian(torch.zeros(SIDE * SIDE, dtype=F64))
    y = torch.zeros(1, 1, SIDE, SIDE, dtype=F64)
    cases = [
        (Blur(1.0), y, 8, 0.15),
        (Kernel([[0.2, 0.6, 0.2]]), y, 8, 0.15),
        (Compose([Blur(1.0, "circular"), Decimate(2)]), y[..., :3, :3], 10, 0.15),
        (Compose([Blur(1.0), Downsample(2)]), y[..., :3, :3], 24, 0.15),
        (Downsample(2), y[..., :3, :3], 24, 0.23),
        (Mask(torch.ones(SIDE, SIDE)), y, 24, 0.23),
    ]
    for operator, observation, steps, lam in cases:
        method = PnP(prior, observation, 0.1, operator=operator, shape=(1, SIDE, SIDE))
        assert (method.steps, method.lam) == (steps, lam), operator
        given = PnP(prior, observation, 0.1, operator=operator, shape=(1, SIDE, SIDE), steps=5, lam=0.3)
        assert (given.steps, given.lam) == (5, 0.3)
