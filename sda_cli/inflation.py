r"""Multiplicative inflation of posterior draws, so that their spread matches their error.

A learned denoiser's posterior draws are narrower than its errors: their variance around the posterior-mean
estimate falls short of that estimate's own error, because the sampler's finite steps lose variance
(:math:`O(1/\text{steps})`, measured on the exact denoiser of a Gaussian) and because the network's error adds to
the estimate's error what the draws cannot show. For exact draws

.. math:: \mathbb{E} \lVert x - \text{draw} \rVert^2 = 2\, \mathbb{E} \lVert x - \hat{x} \rVert^2, \qquad
          \mathbb{E} \lVert \text{draw} - \hat{x} \rVert^2 = \mathbb{E} \lVert x - \hat{x} \rVert^2 ,

with :math:`\hat{x}` the posterior mean. Multiplicative inflation (Anderson & Anderson, 1999), the standard remedy of
ensemble data assimilation for ensembles whose spread is smaller than their error, moves each draw away from the
mean by a factor :math:`\lambda \geq 1`,

.. math:: \text{draw}' = \hat{x} + \lambda\, (\text{draw} - \hat{x}), \qquad
          \lambda^2 = \frac{\mathbb{E} \lVert x - \hat{x} \rVert^2}{\mathbb{E} \lVert \text{draw} - \hat{x} \rVert^2},

which restores both identities on the data :math:`\lambda` was fitted on: the draw error is twice the MMSE, and the
standard deviation of :math:`K` draws predicts the error of their mean,
:math:`\mathbb{E} \lVert x - \bar{x}_K \rVert^2 = (1 + 1/K)\, \mathbb{E}[s^2]`. A model's checkpoint holds
:math:`\lambda` at a few noise levels, fitted on images it was neither trained nor evaluated on
(``benchmarks/calibration.py --fit``); between them :math:`\lambda` is interpolated linearly in
:math:`\log \sigma`, and beyond them held at the nearest end.

Per image, without held-out images (``--inflation sure``, denoising only): for :math:`y = x + \sigma n` with white
Gaussian noise, Stein's unbiased risk estimate (Stein, 1981) gives the error of :math:`\hat{x}(y)` on the image at
hand from :math:`y` alone,

.. math:: \mathrm{SURE}(y) = \lVert y - \hat{x}(y) \rVert^2 - n \sigma^2 + 2 \sigma^2\, \nabla_y \cdot \hat{x}(y),
          \qquad \mathbb{E}_n\, \mathrm{SURE}(y) = \mathbb{E}_n \lVert x - \hat{x}(y) \rVert^2,

its divergence by Hutchinson's estimator :math:`b^\top J b` with one Rademacher probe :math:`b` (Hutchinson, 1989;
one forward and one backward pass), and :math:`\lambda^2 = \mathrm{SURE} / \sum s^2` with :math:`s^2` the draws'
per-pixel variance: the factor above, fitted on the observation itself. It holds whatever the images are like, so
it serves images unlike those a checkpoint's table was fitted on; its own noise falls as the image grows (the first
term's spread is about :math:`\sigma^2 \sqrt{2n}`), so :math:`\lambda` is kept within :data:`SURE_RANGE`.
Pixels clipped in an integer file are left out of all three sums: their noise is not Gaussian.

References:
    Anderson & Anderson, "A Monte Carlo implementation of the nonlinear filtering problem to produce ensemble
    assimilations and forecasts", Monthly Weather Review 127, 1999.
    Stein, "Estimation of the mean of a multivariate normal distribution", The Annals of Statistics 9, 1981.
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian smoothing splines",
    Communications in Statistics - Simulation and Computation 18, 1989.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from sda_cli.sampler import DenoiserLike

__all__ = ["SURE_RANGE", "fit_factor", "inflate", "inflation_factor", "sure_factors"]

SURE_RANGE = (1 / 3, 3.0)
"""The bounds of a per-image factor from SURE: a guard against the estimate's noise on small images (module
docstring), far outside the factors measured on photos."""


def inflation_factor(table: Sequence[Sequence[float]], sigma: float) -> float:
    """:math:`\\lambda` at the pixel noise level ``sigma`` from a table of ``(sigma, factor)`` pairs; 1 if empty."""
    if not table:
        return 1.0
    points = sorted((float(s), float(f)) for s, f in table)
    if sigma <= points[0][0]:
        return points[0][1]
    if sigma >= points[-1][0]:
        return points[-1][1]
    for (s0, f0), (s1, f1) in pairwise(points):
        if s0 <= sigma <= s1:
            w = math.log(sigma / s0) / math.log(s1 / s0)
            return f0 + w * (f1 - f0)
    raise AssertionError("unreachable: sigma lies between the table's ends")


def inflate(draws: Tensor, mean: Tensor, factor: float | Tensor) -> Tensor:
    """:math:`\\hat{x} + \\lambda (\\text{draw} - \\hat{x})` for draws ``(K, B, ...)`` around ``mean`` ``(B, ...)``;
    ``factor`` one number, or one per image ``(B,)``."""
    if isinstance(factor, Tensor):
        return mean + factor.reshape(-1, *[1] * (mean.ndim - 1)).to(draws) * (draws - mean)
    return draws if factor == 1.0 else mean + factor * (draws - mean)


def sure_factors(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    t: float,
    alpha: float,
    draws: Tensor,
    kept: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The posterior mean :math:`\hat{x}(y) = \hat{x}(\alpha y, t)` of observations ``y`` ``(B, C, H, W)`` with
    noise ``sigma_y`` (model units; :math:`t` the matched time, :math:`\alpha = \alpha_t`) and each image's factor
    :math:`\lambda = (\mathrm{SURE} / \sum s^2)^{1/2}` (module docstring), ``(B,)``, within :data:`SURE_RANGE`.

    ``draws``: ``(K, B, C, H, W)``, :math:`K \geq 2`; ``kept``: the pixels that count (``True``), broadcastable to
    ``y`` (default: all); ``denoiser``: with ``mean_and_vjp`` (:class:`sda_cli.denoiser.JacobianProducts`), whose
    Jacobian in :math:`x_t = \alpha y` is :math:`1 / \alpha` times the one in :math:`y`."""
    if draws.shape[0] < 2:
        raise ValueError("a factor from SURE needs the spread of 2 draws or more")
    device = generator.device if generator is not None else y.device
    probe = (2 * torch.randint(0, 2, y.shape, generator=generator, device=device) - 1).to(y)
    x_hat, product = denoiser.mean_and_vjp(alpha * y, t, lambda _: probe)  # type: ignore[attr-defined]
    weight = torch.ones_like(y) if kept is None else kept.expand_as(y).to(y)
    dims = tuple(range(1, y.ndim))
    divergence = (weight * alpha * probe * product).sum(dims)
    residual = (weight * (y - x_hat) ** 2).sum(dims)
    sure = residual - weight.sum(dims) * sigma_y**2 + 2 * sigma_y**2 * divergence
    spread = (weight * draws.var(0)).sum(dims)
    factor = (sure.clamp_min(0) / spread).sqrt()
    return x_hat, factor.clamp(*SURE_RANGE)


def fit_factor(mmse_error: float, draw_spread: float) -> float:
    """:math:`\\lambda = (\\mathbb{E}\\lVert x - \\hat{x} \\rVert^2 / \\mathbb{E}\\lVert \\text{draw} - \\hat{x}
    \\rVert^2)^{1/2}`, from sums over the same pixels."""
    if not (mmse_error > 0 and draw_spread > 0):
        raise ValueError("the errors and spreads must be positive")
    return math.sqrt(mmse_error / draw_spread)
