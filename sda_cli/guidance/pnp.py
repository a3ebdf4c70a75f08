r"""Plug-and-play half-quadratic splitting (DPIR): a point estimate from the denoiser alone, no draws.

For :math:`y = A x + \sigma_y n` with a linear :math:`A`, DPIR (Zhang et al., 2021, eq. 6-7 and Algorithm 1) splits
:math:`\min_x \lVert y - A x \rVert^2 / 2\sigma_y^2 + \Phi(x)` into a data step and a prior step, alternated over
noise ratios :math:`\rho_1 > \dots > \rho_K` spaced evenly in :math:`\log \rho` from ``rho_max`` down to
:math:`\max(\sigma_y, \rho_\text{min})`:

.. math:: z_k = \arg\min_z \lVert y - A z \rVert^2 + \frac{\lambda \sigma_y^2}{\rho_k^2} \lVert z - x_{k-1} \rVert^2
              = x_{k-1} + \Big(A^\top A + \frac{\lambda \sigma_y^2}{\rho_k^2} I\Big)^{-1} A^\top (y - A x_{k-1}),
          \qquad x_k = \hat{x}(\alpha_{t_k} z_k,\, t_k), \quad \rho_{t_k} = \rho_k,

the prior step being the MMSE denoiser applied to :math:`z_k` as if it were :math:`x + \rho_k \varepsilon`. The
output is :math:`x_K`. :math:`K` forward passes and no backward pass: the cheapest method, and the sharpest point
estimate (the highest PSNR of the methods where they were compared, README "restore"), but one estimate, not a draw of
:math:`p(x \mid y)`: it gives no spread, and on Gaussian data it is not the posterior mean either
(``tests/test_guidance_operators.py`` measures how far).

The start :math:`x_0` is the smoothest image that agrees with the observation,
:math:`\arg\min_x \lVert y - A x \rVert^2 + \mu \lVert \nabla x \rVert^2` (finite differences, :math:`\mu` small),
by conjugate gradients: bicubic-like upsampling for a block average, harmonic inpainting for a mask, a regularised
deconvolution for a blur. DPIR starts from bicubic upsampling or the observation itself; this start serves every
operator and their combinations.

The data step is solved exactly for every operator that has a closed form (all but a mask after a blur and kernels
of rank above 1, which get conjugate gradients to a relative residual of 1e-5: :mod:`sda_cli.proximal`).

The self-ensemble (DPIR's "x8") replaces the prior step by the mean of the denoiser over ``ensemble`` of the eight
flips and quarter turns of the image, each undone on its output: :math:`\frac{1}{E} \sum_e T_e^{-1} \hat{x}(T_e z)`,
:math:`E` times the network evaluations.

Defaults: :math:`\rho_\text{max}` = 49/255 in pixel units (0.384 in model units), DPIR's; per operator, chosen on
BSDS400 photos with the photo model (``benchmarks/restore_photos.py --photos bsds400``, README "restore"):

* an operator with a blur or a kernel: :math:`\lambda = 0.15` (0.1 and 0.15 beat DPIR's 0.23 by 0.1 dB, 0.05 diverges);
* a blur or kernel alone (deblurring): 8 iterations, as DPIR (24 gain 0.14 dB at three times the cost);
* a blur or kernel then decimation (DPIR's super-resolution): 10 iterations, where DPIR takes 24 (at
  :math:`\lambda = 0.15`, ×2 / ×3 on eight 256² crops: 27.86 / 26.35 dB at 8, 27.89 / 26.39 at 10, 27.91 / 26.41
  at 12, 27.93 / 26.44 at 16, 27.95 / 26.47 at 24): 0.06-0.08 dB below 24 at 40 % of the cost, and 10 rather than 12
  so that a 2-megapixel ×2 takes under a minute (README "restore");
* otherwise DPIR's :math:`\lambda = 0.23` and 24 iterations (from 8 to 24 gains 0.12-0.14 dB, to 48 another 0.03).

The self-ensemble is off by default: on those photos it gained 0.01 dB at eight times the cost.

References:
    Zhang et al., "Plug-and-Play Image Restoration with Deep Denoiser Prior", IEEE TPAMI 2021, arXiv:2008.13751.
    Geman & Yang, "Nonlinear image recovery with half-quadratic regularization", IEEE TIP 1995.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sda_cli.guidance.base import Option, PosteriorMethod
from sda_cli.operators import Decimate, Identity, Kernel, LinearOperator, conjugate_gradient, stages
from sda_cli.proximal import RegularisedInverse
from sda_cli.sampler import DenoiserLike

__all__ = ["PnP", "dihedral", "smoothest_image"]


def dihedral(x: Tensor, index: int, *, inverse: bool = False) -> Tensor:
    """The ``index``-th (0 to 7) of the eight flips and quarter turns of images ``(..., H, W)``: ``index % 4`` quarter
    turns, after a left-right flip for ``index >= 4``; ``inverse`` undoes it."""
    turns, flip = index % 4, index >= 4
    if inverse:
        x = torch.rot90(x, -turns, dims=(-2, -1))
        return x.flip(-1) if flip else x
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, dims=(-2, -1))


def _gradient_norm_operator(x: Tensor) -> Tensor:
    r""":math:`\nabla^\top \nabla x`: the 5-point Laplacian (negated) with zero-flux boundaries."""
    rows, cols = x.diff(dim=-2), x.diff(dim=-1)
    out = torch.zeros_like(x)
    out[..., 1:, :] += rows
    out[..., :-1, :] -= rows
    out[..., :, 1:] += cols
    out[..., :, :-1] -= cols
    return out


def smoothest_image(
    operator: LinearOperator, y: Tensor, shape: Sequence[int], *, weight: float = 1e-3, steps: int = 20
) -> Tensor:
    r""":math:`\arg\min_x \lVert y - A x \rVert^2 + \mu \lVert \nabla x \rVert^2`, by ``steps`` conjugate-gradient
    steps on :math:`(A^\top A + \mu \nabla^\top \nabla) x = A^\top y` (module docstring). It is only a start: on four
    BSDS400 crops, 20 steps instead of 100 changed pnp's PSNR by 0.003 dB (5 steps: 0.007 dB) and saved most of its
    cost, as large as the network's for an 8-step deblurring."""
    b = operator.adjoint(y)
    if tuple(b.shape[1:]) != tuple(shape):
        raise ValueError(f"the operator's adjoint gives images {tuple(b.shape[1:])}, expected {tuple(shape)}")
    return conjugate_gradient(lambda v: operator.adjoint(operator(v)) + weight * _gradient_norm_operator(v), b, steps)


class PnP(PosteriorMethod):
    r"""The DPIR estimate for :math:`y = A x + \sigma_y n` (module docstring).

    ``operator``: a :class:`~sda_cli.operators.LinearOperator` (default: the identity); ``shape``: the images'
    ``(C, H, W)`` when :math:`A` changes it; ``steps`` iterations, each ``ensemble`` forward passes and one data step
    (no network); ``rho_min`` the last noise ratio when :math:`\sigma_y` is smaller (for a noise-free observation).
    """

    STEPS, LAMBDA, RHO_MAX, RHO_MIN, ENSEMBLE = 24, 0.23, 2 * 49 / 255, 2 * 1 / 255, 1
    DEBLUR_STEPS, SUPER_RESOLUTION_STEPS, BLUR_LAMBDA = 8, 10, 0.15
    """The defaults for an operator with a blur or kernel (``lam``), with nothing else or with only decimation after
    it (``steps``): module docstring."""
    name = "pnp"
    summary = "plug-and-play (DPIR): one deterministic estimate, the best PSNR and the fastest; no draws"
    options = (
        Option("lam", LAMBDA, "weight of the prior in the data step", low=0, high=1e4, low_open=True),
        Option("rho_max", RHO_MAX, "first noise ratio (model units, twice pixel ones)", low=0, high=1e4, low_open=True),
        Option("rho_min", RHO_MIN, "last noise ratio if sigma_y is smaller", low=0, high=1e4, low_open=True),
        Option("ensemble", ENSEMBLE, "mean of the denoiser over this many flips, turns", low=1, high=8, integer=True),
    )
    draws = False
    lam: float
    rho_max: float
    rho_min: float
    ensemble: int

    def __init__(self, denoiser: DenoiserLike, y: Tensor, sigma_y: float, **options: Any) -> None:
        super().__init__(denoiser, y, sigma_y, **options)
        parts = stages(self.operator)  # type: ignore[arg-type]
        blurred = any(isinstance(part, Kernel) for part in parts)
        if blurred and options.get("lam") is None:
            self.lam = self.BLUR_LAMBDA
        if blurred and options.get("steps") is None and all(isinstance(part, (Kernel, Identity)) for part in parts):
            self.steps = self.DEBLUR_STEPS
        elif blurred and options.get("steps") is None and all(isinstance(p, (Kernel, Decimate)) for p in parts):
            self.steps = self.SUPER_RESOLUTION_STEPS
        if not self.rho_min <= self.rho_max:
            raise ValueError(f"need rho_min <= rho_max, got rho_min {self.rho_min} and rho_max {self.rho_max}")

    def ratios(self) -> list[float]:
        r""":math:`\rho_1 > \dots > \rho_K`, evenly spaced in :math:`\log \rho`."""
        last = min(max(self.sigma_y, self.rho_min), self.rho_max)
        if self.steps == 1:
            return [last]
        step = (math.log(last) - math.log(self.rho_max)) / (self.steps - 1)
        return [math.exp(math.log(self.rho_max) + k * step) for k in range(self.steps)]

    def data_step(self, x: Tensor, rho: float, inverse: RegularisedInverse) -> Tensor:
        """:math:`z_k` (module docstring), by ``inverse``: no network."""
        a, weight = self.operator, self.lam * self.sigma_y**2 / rho**2
        return x + inverse.of_adjoint(self.y - a(x), weight)  # type: ignore[union-attr]

    def prior_step(self, z: Tensor, rho: float) -> Tensor:
        r""":math:`\hat{x}(\alpha_t z, t)` at the time :math:`t` whose noise ratio is :math:`\rho`, averaged over
        ``ensemble`` flips and turns (module docstring)."""
        t = float(self.schedule.time_of_ratio(torch.tensor(rho, dtype=torch.float64)))
        alpha, _ = self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        total = torch.zeros_like(z)
        for index in range(self.ensemble):
            total += dihedral(self.denoiser(dihedral(float(alpha) * z, index), t), index, inverse=True)
        return total / self.ensemble

    @torch.no_grad()
    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """The estimate for each observation, shaped ``(B, *shape)``; deterministic (``generator`` is unused)."""
        x = smoothest_image(self.operator, self.y, self.shape)  # type: ignore[arg-type]
        inverse = RegularisedInverse(self.operator, self.shape, x)  # type: ignore[arg-type]
        for rho in self.ratios():
            x = self.prior_step(self.data_step(x, rho, inverse), rho)
        return x

    @property
    def nfe(self) -> int:
        """Network evaluations, each one forward pass."""
        return self.steps * self.ensemble
