r"""The reverse process from a fixed time with a pull towards the observation (a heuristic baseline).

The method of one of the student projects sda grew from: an SDEdit-like start (Meng et al., 2022) at
:math:`t_\text{start}`, then ancestral steps on the score :math:`\nabla \log p_t(x_t) + \lambda (\alpha_t y - x_t) /
\sigma_t^2`, that is, on the denoised estimate

.. math:: \hat{x}_\lambda(x_t, t) = \hat{x}(x_t, t) + \lambda\, (y - z_t), \qquad z_t = x_t / \alpha_t,

the students' :math:`\lambda (y - x_t)` written in the scaled variable :math:`z_t = x + \rho_t \varepsilon` (where
the observation lives), which makes :math:`\lambda` dimensionless and the same for every schedule. It is not
:math:`p(x \mid y)` in general: on Gaussian data its output law is Gaussian with a mean and covariance that the
tests compute by propagating the linear steps exactly, and compare with the true posterior's.

References:
    Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations", ICLR 2022.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sda_cli.guidance.base import Option, PosteriorMethod
from sda_cli.guidance.matched import matched_time
from sda_cli.sampler import Ancestral, DenoiserLike, alpha_sigma, randn_like

__all__ = ["GuidedDenoiser", "GuidedReverse"]


class GuidedDenoiser:
    r"""The denoiser :math:`\hat{x} + \lambda (y - x_t / \alpha_t)`."""

    def __init__(self, denoiser: DenoiserLike, y: Tensor, strength: float) -> None:
        self.denoiser, self.y, self.strength = denoiser, y, float(strength)
        self.schedule = denoiser.schedule

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor:
        alpha, _ = alpha_sigma(self.schedule, t)
        return self.denoiser(x_t, t) + self.strength * (self.y - x_t / alpha)


class GuidedReverse(PosteriorMethod):
    r"""Ancestral steps on :class:`GuidedDenoiser` from :math:`t_\text{start}` down to 0.

    Start. :math:`x_{t_s} = \alpha_{t_s} y + \sqrt{\sigma_{t_s}^2 - \alpha_{t_s}^2 \sigma_y^2}\; \varepsilon` when
    :math:`t_s \geq t^*`: the observation noised up to level :math:`t_s`, a draw of
    :math:`p(x_{t_s} \mid x_{t^*} = \alpha_{t^*} y)`. When :math:`t_s < t^*` the start is :math:`\alpha_{t_s} y`,
    whose excess noise the process does not remove completely. :math:`\lambda = 0` is plain ancestral sampling
    from :math:`x_{t_s}`, which forgets more of :math:`y` the larger :math:`t_s`; at the last step
    :math:`z \approx \hat{x}`, so the output is close to :math:`(1 - \lambda) \hat{x} + \lambda y`.
    ``steps`` + 1 evaluations.
    """

    T_START, STRENGTH, STEPS = 0.5, 0.1, 64
    name = "guided"
    summary = "the reverse process from --t-start with a pull lambda (y - x_t) towards the observation (a baseline)"
    options = (
        Option("t_start", T_START, "start time", low=0, high=1, low_open=True),
        Option("strength", STRENGTH, "the lambda of lambda (y - x_t)", low=0, high=1),
    )
    identity_only = True
    t_start: float
    strength: float

    def __init__(self, denoiser: DenoiserLike, y: Tensor, sigma_y: float, **options: Any) -> None:
        super().__init__(denoiser, y, sigma_y, **options)
        if self.sigma_y > 0:
            matched_time(denoiser.schedule, self.sigma_y)

    @torch.no_grad()
    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """One draw per observation."""
        alpha, sigma = alpha_sigma(self.denoiser.schedule, self.t_start)
        noise = randn_like(self.y, generator)  # drawn in both cases, so the stream does not depend on the case
        x = alpha * self.y + math.sqrt(max(sigma**2 - alpha**2 * self.sigma_y**2, 0.0)) * noise
        model = self.denoiser if self.strength == 0 else GuidedDenoiser(self.denoiser, self.y, self.strength)
        return Ancestral(model, generator=generator)(x, self.t_start, 0.0, self.steps, power=self.power)

    @property
    def nfe(self) -> int:
        """Network evaluations: one per step and the final estimate."""
        return self.steps + 1
