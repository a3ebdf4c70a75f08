r"""Clipped observations: impute the values that an 8- or 16-bit file cut off at its range.

A noisy image file stores :math:`y = \operatorname{clip}(x + \sigma_y n)`, so a pixel at the bottom of the range
only says that the unclipped observation :math:`u = x + \sigma_y n` lay below the first quantisation threshold
:math:`c_0` (half a step above the bottom), and a pixel at the top that :math:`u > c_1`. Taking such a pixel at face
value breaks the matched-time identity of :mod:`sda_cli.guidance.matched` (its noise is no longer Gaussian nor
centred), and dark and bright regions come out biased towards mid-grey, more so the larger the noise (what it costs:
``benchmarks/RESULTS.md``, clipping).

The censored pixels are replaced by their conditional mean given the censoring, under :math:`u \sim
\mathcal{N}(\hat{x}, \sigma_y^2)` with :math:`\hat{x}` the current estimate of the clean image (the truncated
normal mean; a Tobit E-step, Tobin, 1958; Amemiya, 1984):

.. math:: \mathbb{E}[u \mid u < c_0] = \hat{x} - \sigma_y \lambda(\beta_0), \quad \beta_0 = (c_0 - \hat{x})/\sigma_y,
          \qquad
          \mathbb{E}[u \mid u > c_1] = \hat{x} + \sigma_y \lambda(\beta_1), \quad \beta_1 = (\hat{x} - c_1)/\sigma_y,

with the inverse Mills ratio :math:`\lambda(\beta) = \varphi(\beta) / \Phi(\beta)`, computed as
:math:`\exp(\log\varphi(\beta) - \log\Phi(\beta))` so that it stays finite in both tails. The imputed pixels carry a
little less noise than :math:`\sigma_y`, so the result is approximate, as any use of a clipped file must be.

Which estimate :math:`\hat{x}`? The imputation only needs it at the clipped pixels, which lie in dark or bright
regions, and there a local mean of the observation is nearly as good as the network: :func:`local_mean`, a Gaussian
blur of one pixel, iterated as a fixed point (blur the imputed observation, impute again; three rounds). It recovers
as much PSNR as imputing with the network's MMSE estimate (``benchmarks/RESULTS.md``, clipping) and costs no network
evaluation, so that ``--clipped auto`` leaves ``mmse`` at one network evaluation per image.

References:
    Tobin, "Estimation of Relationships for Limited Dependent Variables", Econometrica 1958.
    Amemiya, "Tobit Models: A Survey", Journal of Econometrics 1984.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["censored_mean", "impute_clipped", "local_mean"]


def _inverse_mills(beta: Tensor) -> Tensor:
    """:math:`\\varphi(\\beta) / \\Phi(\\beta)`, stable for large :math:`|\\beta|`."""
    log_pdf = -0.5 * beta.square() - 0.5 * math.log(2 * math.pi)
    return torch.exp(log_pdf - torch.special.log_ndtr(beta))


def censored_mean(mean: Tensor, scale: float, below: float | None = None, above: float | None = None) -> Tensor:
    """The mean of :math:`u \\sim \\mathcal{N}(\\text{mean}, \\text{scale}^2)` given :math:`u < \\text{below}` (or given
    :math:`u > \\text{above}`), elementwise; exactly one of ``below`` and ``above`` is given."""
    if (below is None) == (above is None):
        raise ValueError("give exactly one of below and above")
    mean = mean.double()
    if below is not None:
        return (mean - scale * _inverse_mills((below - mean) / scale)).float()
    return (mean + scale * _inverse_mills((mean - above) / scale)).float()


def local_mean(y: Tensor, width: float = 1.0) -> Tensor:
    """A Gaussian blur of standard deviation ``width`` pixels of images ``(B, C, H, W)``, channel by channel, with
    the border replicated (separable, truncated at four standard deviations)."""
    radius = max(1, math.ceil(4 * width))
    offsets = torch.arange(-radius, radius + 1, dtype=y.dtype, device=y.device)
    kernel = torch.exp(-0.5 * (offsets / width).square())
    kernel = (kernel / kernel.sum()).repeat(y.shape[1], 1, 1, 1)
    rows = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel, groups=y.shape[1])
    return F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3), groups=y.shape[1])


def impute_clipped(
    y: Tensor,
    sigma_y: float,
    estimate: Callable[[Tensor], Tensor] = local_mean,
    *,
    low: float = -1.0,
    high: float = 1.0,
    step: float = 2 / 255,
    rounds: int = 3,
) -> Tensor:
    """The observation ``y`` (model units) with its pixels at ``low`` or ``high`` replaced by their censored means.

    ``estimate`` maps an observation to the current estimate of the clean image (:func:`local_mean` of images by
    default, or an MMSE denoiser); ``step`` is the file's quantisation step in model units (``2/255`` for 8 bits), so
    the thresholds are ``low + step/2`` and ``high - step/2``. Each round costs one call of
    ``estimate``. An observation with no clipped pixel is returned unchanged, at no cost.
    """
    at_low, at_high = y <= low + step / 4, y >= high - step / 4
    if rounds < 1 or not (at_low.any() or at_high.any()):
        return y
    imputed = y.clone()
    for _ in range(rounds):
        x_hat = estimate(imputed)  # the censored means are computed at the clipped pixels only
        imputed[at_low] = censored_mean(x_hat[at_low], sigma_y, below=low + step / 2)
        imputed[at_high] = censored_mean(x_hat[at_high], sigma_y, above=high - step / 2)
    return imputed
