r"""``sda_cli.restore.restore`` with a linear operator against the closed-form posterior, in pixel units.

The model is the exact denoiser of Gaussian images: x ~ N(mu, Sigma) in model units on 6 x 6 one-channel images
(Sigma_ij = 0.25 exp(-|p_i - p_j| / 3), as in ``test_guidance_operators.py``). In pixel units p = (x + 1) / 2, so

    p ~ N(mu_p, Sigma_p),  mu_p = (mu + 1) / 2,  Sigma_p = Sigma / 4,

and for an observation y = A p + sigma n in pixel units the posterior is p | y ~ N(m, S) with

    S = Sigma_p - Sigma_p A^T K^+ A Sigma_p,  m = mu_p + Sigma_p A^T K^+ (y - A mu_p),  K = A Sigma_p A^T + sigma^2 I,

computed here in pixel units only: ``restore`` must itself turn y into the model's observation 2 y - A 1 =
A x + 2 sigma n (sigma_y = 2 sigma) and its draws back into pixels, and any slip there (the offset A 1, which is 0.9
for the off-centre kernel below and not 1; the factor 2 of sigma_y; the factor 1/2 of the standard deviation) moves
the draws away from N(m, S).

Draws: MMPS, K per observation (``samples=K``), float inputs (``bit_depth=None``, no clipping), 15 GMRES steps
(``solver_steps=15``): with these its posterior denoiser is exact to 3e-7 on this prior, so what remains is the
pipeline and Heun's 64 steps (measured here: the K-draw means' error variance 1.02-1.03 times S / K, the variance
1.00-1.01 times S). With the default 3 steps MMPS's own approximation shows: the K-draw means' error variance is 1.18
(blur) and 1.35 (kernel) times S / K, a bias of 0.15-0.2 posterior standard deviations that
``test_guidance_operators.py`` bounds for MMPS itself; this file tests the pixel-unit pipeline.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from oracle import GaussianDenoiser, assert_gaussian
from scipy.stats import chi2
from torch import Tensor, nn

from sda_cli.operators import Blur, Kernel, LinearOperator, Mask, operator_matrix
from sda_cli.restore import restore
from sda_cli.schedule import CosineSchedule

F64 = torch.float64
SIDE = 6
DIM = SIDE * SIDE
IMAGE = (1, SIDE, SIDE)
LEVEL = 1e-4
N, K = 40, 6  # observations, and draws of each
EXACT = {"solver_steps": 15}


def image_prior() -> GaussianDenoiser:
    """N(mu, Sigma) in model units on 6 x 6 images (module docstring)."""
    rows, cols = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    pixels = torch.stack([rows.flatten(), cols.flatten()], 1).to(F64)
    cov = 0.25 * torch.exp(-torch.cdist(pixels, pixels) / 3)
    mean = 0.3 * torch.randn(DIM, generator=torch.Generator().manual_seed(0), dtype=F64)
    return GaussianDenoiser(mean, cov, CosineSchedule())


class OracleModel(nn.Module):
    """The exact denoiser as a model ``restore`` takes (a schedule, a backbone's channel count, parameters that say
    the device); evaluated in float64, returned in the caller's dtype (``restore`` works in float32)."""

    def __init__(self, oracle: GaussianDenoiser) -> None:
        super().__init__()
        self.oracle, self.schedule = oracle, oracle.schedule
        self.anchor = nn.Parameter(torch.zeros(()))
        self.backbone = SimpleNamespace(config=SimpleNamespace(channels=1))

    def forward(self, x_t: Tensor, t: float) -> Tensor:
        return self.oracle(x_t.double(), t).to(x_t.dtype)


MASK = (torch.rand(SIDE, SIDE, generator=torch.Generator().manual_seed(1)) < 0.5).to(F64)
OPERATORS: dict[str, LinearOperator] = {
    "blur": Blur(1.0),
    "kernel": Kernel([[0.0, 0.2, 0.0], [0.0, 0.4, 0.2], [0.1, 0.0, 0.0]]),  # off-centre, sums to 0.9: A 1 = 0.9
    "mask": Mask(MASK),
}


def observe(name: str, sigma: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """N images p ``(N, D)`` in pixel units, the operator's matrix, and observations y = A p + sigma n ``(N, D)`` in
    float32 as a file would hold them (rounded once, and the closed form uses the rounded values). A mask's missing
    values hold noise: ``restore`` must ignore them."""
    generator = torch.Generator().manual_seed(seed)
    a = operator_matrix(OPERATORS[name], IMAGE)
    p = (image_prior().sample(N, generator) + 1) / 2
    y = p @ a.T + sigma * torch.randn(N, DIM, generator=generator, dtype=F64)
    return p, a, y.float().double()


def pixel_posterior(a: Tensor, y: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """p(p | y) = N(m, S) in pixel units (module docstring); ``m`` is ``(N, D)``, ``S`` is ``(D, D)``."""
    prior = image_prior()
    mean, cov = (prior.mean + 1) / 2, prior.cov / 4
    k = a @ cov @ a.T + sigma**2 * torch.eye(a.shape[0], dtype=F64)
    gain = cov @ a.T @ torch.linalg.pinv(k, hermitian=True)
    return mean + (y - mean @ a.T) @ gain.T, cov - gain @ a @ cov


def draws_summary(name: str, y: Tensor, sigma: float, **options: int) -> tuple[Tensor, Tensor]:
    """``restore``'s estimate (the mean of K MMPS draws) and standard-deviation map, flattened to ``(N, D)``."""
    model = OracleModel(image_prior())
    estimate, std = restore(
        model, y.float().reshape(N, *IMAGE), sigma, OPERATORS[name], method="mmps", samples=K, bit_depth=None,
        seed=3, **options,
    )  # fmt: skip
    assert std is not None and estimate.shape == std.shape == (N, *IMAGE)
    return estimate.double().flatten(1), std.double().flatten(1)


def assert_std_map(std: Tensor, s: Tensor, pixels: Tensor) -> None:
    r"""The standard-deviation map of K exact draws, at the given pixels, against S's diagonal, two-sided at LEVEL.

    For exact draws (K - 1) std_ij^2 / S_jj ~ chi2_{K-1}, independent across observations i, so per pixel j the sum
    over i is chi2_{N(K-1)} exactly: each pixel is checked at level LEVEL / D (Bonferroni). The sum Q over pixels too
    has mean N (K - 1) D and, from the Wishart law, variance 2 N (K - 1) tr(R^2) with R the correlation matrix of S;
    it is checked against the chi-square with that mean and variance (Satterthwaite's approximation), which resolves
    a few percent of the variance where each pixel alone resolves about 25%."""
    diag = s.diagonal()[pixels]
    ratio = (K - 1) * std[:, pixels].square() / diag
    dof = N * (K - 1)
    per_pixel = ratio.sum(0)
    low, high = chi2.ppf(LEVEL / (2 * len(diag)), dof), chi2.isf(LEVEL / (2 * len(diag)), dof)
    worst = int((per_pixel / dof - 1).abs().argmax())
    assert bool(((per_pixel >= low) & (per_pixel <= high)).all()), (
        f"std map: pixel {worst} has mean std^2 / S = {float(per_pixel[worst]) / dof:.4f}, outside "
        f"[{low / dof:.4f}, {high / dof:.4f}]"
    )
    correlation = s[pixels][:, pixels] / (diag[:, None] * diag[None, :]).sqrt()
    mean, variance = dof * len(diag), 2 * dof * float(correlation.square().sum())
    scale, nu = variance / (2 * mean), 2 * mean**2 / variance
    total = float(ratio.sum())
    low, high = scale * chi2.ppf(LEVEL / 2, nu), scale * chi2.isf(LEVEL / 2, nu)
    assert low <= total <= high, (
        f"std map: mean std^2 / S = {total / mean:.4f}, outside [{low / mean:.4f}, {high / mean:.4f}]"
    )


@pytest.mark.parametrize("name", list(OPERATORS))
def test_restore_draws_follow_the_pixel_posterior(name: str) -> None:
    """sigma = 0.05 pixel units (sigma_y = 0.1): for each of N = 40 observations, the mean of K = 6 draws is
    N(m, S / K) (chi-square tests of mean, two-sided variance and covariance on the N residuals) and the std map
    matches sqrt(diag S) (``assert_std_map``), m and S the pixel-unit posterior. Draws 10% too narrow or too wide
    fail both (variance statistics off by 19-21%, resolved to 4-5% here); a pipeline that took sigma_y = sigma, or
    2 y - 1 for 2 y - A 1 (the kernel), or forgot to halve the spread, fails too."""
    sigma = 0.05
    _, a, y = observe(name, sigma, seed=2)
    m, s = pixel_posterior(a, y, sigma)
    estimate, std = draws_summary(name, y, sigma, **EXACT)
    assert_gaussian(estimate - m, torch.zeros(DIM, dtype=F64), s / K, LEVEL, what=f"mean of {K} draws ({name})")
    assert_std_map(std, s, torch.ones(DIM, dtype=torch.bool))


def test_noise_free_mask_reproduces_the_observed_pixels() -> None:
    """sigma = 0 with a mask: every draw equals y at the observed pixels, to float32 rounding (the estimate within
    1e-6 of y and the std map below 1e-6 there; measured 1.2e-7 and 1e-10), with the default solver steps as with 15;
    at the missing pixels the draws follow the posterior, whose covariance S is confined to them (checked as above,
    in the space of S's non-zero eigenvalues)."""
    _, a, y = observe("mask", 0.0, seed=4)
    m, s = pixel_posterior(a, y, 0.0)
    seen = MASK.flatten() > 0
    for options in ({}, EXACT):
        estimate, std = draws_summary("mask", y, 0.0, **options)
        assert float((estimate - y)[:, seen].abs().max()) < 1e-6, options
        assert float(std[:, seen].max()) < 1e-6, options
    values, vectors = torch.linalg.eigh(s)
    free = vectors[:, values > 1e-9 * values.max()]
    assert free.shape[1] == int((~seen).sum())
    zero = torch.zeros(free.shape[1], dtype=F64)
    assert_gaussian((estimate - m) @ free, zero, free.T @ s @ free / K, LEVEL, what="mean of draws, missing pixels")
    assert_std_map(std, s, ~seen)


def test_noise_free_kernel_gives_back_the_image() -> None:
    """sigma = 0 with the off-centre kernel, which is invertible (singular values 0.14 to 0.94 on 6 x 6 images): the
    posterior is the one image A^{-1} y, and every draw is that image to within 3e-5 (estimate and std map; measured
    7e-6: float32 rounding of y, 6e-8, amplified by A's condition number 6.8 and by the 15 GMRES steps' residual).
    With the offset 2 y - 1 instead of 2 y - A 1 every pixel would be off by about 0.5 (1 - 0.9) / 0.9."""
    p, _, y = observe("kernel", 0.0, seed=5)
    estimate, std = draws_summary("kernel", y, 0.0, **EXACT)
    assert float((estimate - p).abs().max()) < 3e-5
    assert float(std.max()) < 3e-5


def test_noise_free_blur_reproduces_the_observation() -> None:
    """sigma = 0 with the blur: the posterior is again one image, A^{-1} y, but the blur's smallest singular value is
    0.0011 on 6 x 6 images, so that image is not determined to float precision (y's rounding alone moves it by 5e-5)
    and MMPS does not reach it (measured: up to 0.09 off with 15 GMRES steps, 0.24 with the default 3). What holds is
    the observation: the blurred estimate gives back y within 1e-3 (measured 2.7e-4 with 15 steps, 5e-3 with 3),
    and in the well-determined directions (singular values above 0.1) the estimate is the image within 1e-3."""
    p, a, y = observe("blur", 0.0, seed=6)
    estimate, _ = draws_summary("blur", y, 0.0, **EXACT)
    assert float((estimate @ a.T - y).abs().max()) < 1e-3
    _, singular, vh = torch.linalg.svd(a)
    strong = vh[singular > 0.1]
    assert float(((estimate - p) @ strong.T).abs().max()) < 1e-3
