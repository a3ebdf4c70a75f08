r"""Estimating the standard deviation of additive white Gaussian noise from one image (``--sigma auto``).

For :math:`y = p + \sigma n` in [0, 1] pixel units, the residual of the Laplacian-difference mask of Immerkær (1996)

.. math:: r = y * M, \qquad M = \begin{pmatrix} 1 & -2 & 1 \\ -2 & 4 & -2 \\ 1 & -2 & 1 \end{pmatrix},

annihilates every image that is locally linear (or a sum of a function of rows and one of columns: :math:`M` is the
outer product of :math:`(1, -2, 1)` with itself), and on the noise it is :math:`\mathcal{N}(0, 36 \sigma^2)`
(:math:`\sum M_{ij}^2 = 36`). Hence Immerkær's estimator, from the mean absolute residual,

.. math:: \hat{\sigma} = \sqrt{\frac{\pi}{2}}\; \frac{1}{6}\; \operatorname{mean} |r|.

Texture and edges also leave residuals and bias :math:`\hat{\sigma}` upwards; after Tai & Yang (2008), the windows
with the most structure are left out (the 30% with the largest gradient). Here the gradient is measured on the
outer ring of the 5×5 window around each 3×3 residual window: :math:`|R - L| + |B - T|`, with :math:`R, L, B, T`
the sums of the ring's right and left columns and bottom and top rows, summed over channels. The ring and the
residual share no pixel, so with independent noise the selection is independent of the residual and does
not bias the estimate, clipped or not.

**Clipped inputs.** An 8-bit or 16-bit file holds :math:`\operatorname{clip}(p + \sigma n, 0, 1)`, whose variance
:math:`v(p, \sigma) < \sigma^2` near the bounds (and, at :math:`\sigma = 0.3`, even at mid-grey: 10% of the
values clip). For :math:`Y = \operatorname{clip}(u + \sigma Z)` with :math:`a = -u/\sigma`,
:math:`b = (1 - u)/\sigma` (censored normal moments, as in Foi et al., 2008):

.. math:: \mathbb{E} Y = 1 - \Phi(b) + u (\Phi(b) - \Phi(a)) + \sigma (\phi(a) - \phi(b)), \\
          \mathbb{E} Y^2 = 1 - \Phi(b) + u^2 (\Phi(b) - \Phi(a)) + 2 u \sigma (\phi(a) - \phi(b))
                          + \sigma^2 (\Phi(b) - \Phi(a) + a \phi(a) - b \phi(b)).

When the input is clipped (all values in [0, 1] and some exactly 0 or 1), the clean level :math:`u` of each window
is found by inverting :math:`\mathbb{E} Y` at the mean of its ring (again disjoint from the residual's pixels, so
that a large residual does not raise its own predicted variance), and, since on a locally flat window
:math:`\mathbb{E}\, r^2 = 36\, v(u, \sigma)`, the variance is the ratio of sums

.. math:: \hat\sigma^2 = \frac{\sum_w r_w^2}{36 \sum_w v(u_w, \hat\sigma) / \hat\sigma^2},

iterated four times from the unclipped estimate (a fixed point; the mean absolute value is not used here, as
clipped noise is not Gaussian). Quantisation adds :math:`1 / (12 \cdot 255^2)` to the variance, negligible for
:math:`\sigma \geq 0.02` and ignored.

Its errors against three other estimators, on CIFAR-10 at four noise levels, float and clipped 8-bit:
``benchmarks/RESULTS.md``, noise-level estimation. Tiny textured images are the hard case: at low noise their texture
leaks into any residual and the estimate is high.

Images larger than ``max_pixels`` are measured on evenly spread 256×256 crops holding about that many pixels.

References:
    Immerkær, "Fast Noise Variance Estimation", Computer Vision and Image Understanding 64(2), 1996.
    Tai & Yang, "A fast method for image noise estimation using Laplacian operator and adaptive edge detection",
    ISCCSP 2008.
    Foi, Trimeche, Katkovnik & Egiazarian, "Practical Poissonian-Gaussian noise modeling and fitting for
    single-image raw-data", IEEE Transactions on Image Processing 17(10), 2008.
    Donoho & Johnstone, "Ideal spatial adaptation by wavelet shrinkage", Biometrika 81(3), 1994.
    Chen, Zhu & Heng, "An efficient statistical method for image noise level estimation", ICCV 2015.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clipped_moments", "estimate_sigma"]

_LAPLACIAN = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float64)


def _ring_kernels() -> tuple[Tensor, Tensor]:
    """The mean of the 16 outer pixels of a 5×5 window, and the difference of its right and left columns."""
    ring = torch.ones(5, 5, dtype=torch.float64)
    ring[1:4, 1:4] = 0.0
    sides = torch.zeros(5, 5, dtype=torch.float64)
    sides[:, 0], sides[:, 4] = -1.0, 1.0
    return ring / 16, sides


_RING, _SIDES = _ring_kernels()
_KEEP = 0.7  # the fraction of windows, those with the smallest ring gradient, that is used
_ITERATIONS = 4  # fixed-point iterations of the clipping model
_CROP = 256


def clipped_moments(u: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of :math:`\operatorname{clip}(u + \sigma Z, 0, 1)`, :math:`Z \sim \mathcal{N}(0, 1)`."""
    a, b = -u / sigma, (1 - u) / sigma
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
    pdf_a, pdf_b = (torch.exp(-0.5 * v**2) / math.sqrt(2 * math.pi) for v in (a, b))
    inside = cdf_b - cdf_a
    mean = (1 - cdf_b) + u * inside + sigma * (pdf_a - pdf_b)
    second = (1 - cdf_b) + u**2 * inside + 2 * u * sigma * (pdf_a - pdf_b) + sigma**2 * (inside + a * pdf_a - b * pdf_b)
    return mean, (second - mean**2).clamp_min(0.0)


def _crops(pixels: Tensor, max_pixels: int) -> Tensor:
    """The image as a batch ``(N, C, h, w)``: itself, or evenly spread crops of about ``max_pixels`` in all."""
    height, width = pixels.shape[1:]
    if height * width <= max_pixels or min(height, width) < _CROP:
        return pixels[None]
    count = max(1, max_pixels // _CROP**2)
    rows = max(1, min(round(math.sqrt(count * height / width)), height // _CROP))
    cols = max(1, min(count // rows, width // _CROP))
    tops = torch.linspace(0, height - _CROP, rows).round().long().tolist()
    lefts = torch.linspace(0, width - _CROP, cols).round().long().tolist()
    return torch.stack([pixels[:, i : i + _CROP, j : j + _CROP] for i in tops for j in lefts])


def _convolve(images: Tensor, kernel: Tensor) -> Tensor:
    """Each channel of ``(N, C, h, w)`` with a square kernel of side ``k``, valid part ``(N, C, h-k+1, w-k+1)``."""
    n, c, h, w = images.shape
    k = kernel.shape[-1]
    flat = F.conv2d(images.reshape(n * c, 1, h, w), kernel.to(images)[None, None])
    return flat.reshape(n, c, h - k + 1, w - k + 1)


def _variance_ratio(clipped_mean: Tensor, sigma: float) -> Tensor:
    r""":math:`v(u, \sigma) / \sigma^2` at the :math:`u` whose clipped mean :math:`\mathbb{E} Y` is ``clipped_mean``.

    Tabulated: :math:`u \mapsto (\mathbb{E} Y, v)` on a fine grid, inverted at 1025 levels of :math:`\mathbb{E} Y`
    in [0, 1] and interpolated linearly.
    """
    grid = torch.linspace(-5 * sigma, 1 + 5 * sigma, 4097, dtype=torch.float64)
    mean, variance = clipped_moments(grid, sigma)
    mean = torch.cummax(mean, 0).values  # non-decreasing despite rounding in the flat tails
    levels = torch.linspace(0.0, 1.0, 1025, dtype=torch.float64)
    upper = torch.searchsorted(mean, levels).clamp(1, len(grid) - 1)
    lower = upper - 1
    weight = ((levels - mean[lower]) / (mean[upper] - mean[lower]).clamp_min(1e-300)).clamp(0.0, 1.0)
    table = (variance[lower] + weight * (variance[upper] - variance[lower])) / sigma**2
    position = clipped_mean.clamp(0.0, 1.0) * 1024
    index = position.floor().long().clamp(0, 1023)
    return table[index] + (position - index) * (table[index + 1] - table[index])


def estimate_sigma(pixels: Tensor, *, clipped: bool | None = None, max_pixels: int = 1 << 20) -> float:
    r"""The noise standard deviation of an image ``(C, H, W)`` or ``(H, W)`` in [0, 1] pixel units.

    Immerkær's (1996) residual on the 70% of 5×5 windows with the smallest ring gradient, with a model of clipping
    for clipped inputs (see the module docstring). ``clipped`` (default: detected, all values in [0, 1] and some
    exactly 0 or 1) switches the clipping model on or off. Needs :math:`H, W \geq 5`; a noiseless linear ramp gives 0.
    """
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ValueError(f"expected one image (C, H, W) or (H, W), got shape {tuple(pixels.shape)}")
    if min(pixels.shape[1:]) < 5:
        raise ValueError(f"the image must be at least 5x5 pixels, got {tuple(pixels.shape[1:])}")
    images = _crops(pixels.detach().to("cpu", torch.float64), max_pixels)
    if not bool(images.isfinite().all()):
        raise ValueError("the image has non-finite values")
    if clipped is None:
        clipped = bool(images.min() >= 0) and bool(images.max() <= 1) and bool(((images == 0) | (images == 1)).any())
    residual = _convolve(images, _LAPLACIAN)[..., 1:-1, 1:-1]
    ring_mean = _convolve(images, _RING)
    gradient = (_convolve(images, _SIDES).abs() + _convolve(images, _SIDES.T).abs()).sum(1, keepdim=True)
    threshold = gradient.flatten().kthvalue(max(1, round(_KEEP * gradient.numel()))).values
    keep = (gradient <= threshold).expand_as(residual)
    residual = residual[keep]
    sigma = math.sqrt(math.pi / 2) / 6 * float(residual.abs().mean())
    if not clipped or sigma == 0:
        return sigma
    energy = float(residual.square().sum())
    ring_mean = ring_mean[keep]
    for _ in range(_ITERATIONS):
        sigma = math.sqrt(energy / (36 * float(_variance_ratio(ring_mean, sigma).sum())))
    return sigma
