r"""Diffusion posterior sampling (DPS): ancestral steps pushed down the gradient of the observation's residual.

For :math:`y = A(x) + \sigma_y n` with any differentiable :math:`A`, DPS (Chung et al., 2023, Algorithm 1) follows
each ancestral (DDPM) step from :math:`x_t` to :math:`x_s` by

.. math:: x_s \leftarrow x_s - \zeta\, \nabla_{x_t} \lVert y - A(\hat{x}(x_t, t)) \rVert,

the gradient taken through the network by a vector-Jacobian product, one norm per image. The paper writes the step
as :math:`\zeta_t \nabla \lVert y - A(\hat{x}) \rVert^2` with :math:`\zeta_t = \zeta / \lVert y - A(\hat{x}) \rVert`,
which is twice the above; the authors' code, which set the published values :math:`\zeta \in [0.1, 1]` on images
in :math:`[-1, 1]`, steps by the gradient of the norm, as here. It stands in for the likelihood score
:math:`\nabla \log p(y \mid x_t) \approx -\nabla \lVert y - A(\hat{x}) \rVert^2 / 2\sigma_y^2` with a step whose
size does not depend on :math:`\sigma_y` (DPS does not use it, and takes :math:`\sigma_y = 0`) nor on the number of
pixels: the push per pixel shrinks as :math:`1/\sqrt{D}`, so a given :math:`\zeta` acts differently on small and
large images. It is not a sampler of :math:`p(x \mid y)` in general, even for Gaussian data
(``tests/test_guidance_operators.py`` measures how far it is).

References:
    Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems", ICLR 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sda_cli.guidance.base import Option, PosteriorMethod
from sda_cli.sampler import Sampler, epsilon_from_mean

__all__ = ["DPS"]


class _DPSSampler(Sampler):
    """The ancestral step of :class:`sda_cli.sampler.Ancestral` followed by the DPS correction."""

    name = "dps"

    def __init__(self, method: DPS, *, generator: torch.Generator | None = None) -> None:
        super().__init__(method.denoiser, generator=generator)
        self.method = method

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        x_hat, gradient = self.denoiser.mean_and_vjp(x_t, t, self.method.cotangent)  # type: ignore[attr-defined]
        keep = (sigma_s / alpha_s) / (sigma_t / alpha_t)
        eps = epsilon_from_mean(x_t, x_hat, alpha_t, sigma_t)
        x_s = alpha_s * x_hat + sigma_s * (keep * eps + (1.0 - keep**2) ** 0.5 * self.noise(x_t))
        return x_s - self.method.zeta * gradient


class DPS(PosteriorMethod):
    r"""Draws of DPS for :math:`y = A(x) + \sigma_y n` from pure noise at :math:`t = 1` (module docstring).

    ``operator``: any differentiable map of images ``(B, *shape)`` to observations shaped like ``y`` (default: the
    identity); ``shape``: the images' ``(C, H, W)`` when it differs from ``y``'s. ``steps`` ancestral steps on
    :func:`~sda_cli.sampler.time_grid`'s grid, each one forward and one backward pass, then the Tweedie estimate.
    The defaults are the paper's, 1000 steps and :math:`\zeta = 1`, on this package's grid in the noise ratio
    (``power``), not on DDPM's grid uniform in time, which spends fewer steps at low noise. ``sigma_y`` is checked
    but not used.
    """

    STEPS, ZETA = 1000, 1.0
    name = "dps"
    summary = "diffusion posterior sampling: ancestral steps down the gradient of the residual's norm"
    options = (Option("zeta", ZETA, "step size of the residual's gradient", low=0, high=100),)
    backward, nonlinear = True, True
    zeta: float

    def cotangent(self, x_hat: Tensor) -> Tensor:
        r""":math:`\partial \lVert y - A(\hat{x}) \rVert / \partial \hat{x}` for each image, by autograd through
        :math:`A`; zero where the residual is."""
        with torch.enable_grad():
            x = x_hat.detach().requires_grad_(True)
            residual = (self.y - self.operator(x)).flatten(1)
            norm = residual.square().sum(1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
            (gradient,) = torch.autograd.grad(norm.sum(), x)
        return gradient

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """One draw per observation, shaped ``(B, *shape)``."""
        solver = _DPSSampler(self, generator=generator)
        return solver(self.prior_noise(generator), 1.0, 0.0, self.steps, power=self.power)

    @property
    def nfe(self) -> int:
        """Network evaluations: ``steps`` forward and backward passes, and the final forward one."""
        return self.steps + 1

    def passes(self, one_call: bool) -> int:
        """A product per step (one pass, or a forward and a backward pass when split), then the final estimate."""
        return (self.nfe - 1) * (1 if one_call else 2) + 1
