r"""Annealed Langevin dynamics on the exact posterior of less noisy images (a baseline).

For :math:`y = x + \sigma_y n` and :math:`0 < \rho < \sigma_y`, the image :math:`z = x + \rho \varepsilon` given
:math:`y` has the score

.. math:: \nabla_z \log p(z \mid y) = \frac{\hat{x}(\alpha_t z, t) - z}{\rho^2} + \frac{y - z}{\sigma_y^2 - \rho^2},
          \qquad \sigma_t / \alpha_t = \rho.

Derivation. Build the observation as a noisier version of :math:`z`: :math:`y = z + \sqrt{\sigma_y^2 - \rho^2}\, n'`
with :math:`n'` independent of :math:`(x, \varepsilon)`. Then :math:`y` has exactly the law of
:math:`x + \sigma_y n`, so this coupling changes nothing about :math:`(x, y)`, and in it :math:`y \perp x \mid z`.
Hence :math:`p(z \mid y) \propto p_\rho(z)\, \mathcal{N}(y;\, z,\, (\sigma_y^2 - \rho^2) I)`, with :math:`p_\rho`
the law of :math:`x + \rho \varepsilon`, whose score is :math:`(\hat{x} - z) / \rho^2` (Tweedie).

Unadjusted Langevin steps on this score at a geometric sequence of levels :math:`\rho_1 > \dots > \rho_L`, started
from :math:`z = y` (exactly :math:`p(z \mid y)` at :math:`\rho = \sigma_y`), anneal down to the last level; the
result is then denoised, :math:`\hat{x}(\alpha_{t_L} z, t_L)`. This is the method of one of the student projects
sda grew from, kept as a baseline: the matched-start ancestral sampler samples the same posterior without step
bias and with fewer evaluations.

References:
    Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sda_cli.guidance.base import Option, PosteriorMethod
from sda_cli.guidance.matched import matched_time
from sda_cli.sampler import DenoiserLike, alpha_sigma, randn_like
from sda_cli.schedule import Schedule

__all__ = ["AnnealedLangevin", "langevin_levels", "level_posterior_score"]


def level_posterior_score(
    denoiser: DenoiserLike, z: Tensor, y: Tensor, sigma_y: float, rho: float, t: float | None = None
) -> Tensor:
    r"""The score :math:`\nabla_z \log p(z \mid y)` of :math:`z = x + \rho\,\varepsilon` (module docstring).

    ``t`` defaults to ``schedule.time_of_ratio(rho)``; needs :math:`0 < \rho < \sigma_y`.
    """
    sigma_y, rho = float(sigma_y), float(rho)
    if not 0 < rho < sigma_y:
        raise ValueError(f"need 0 < rho < sigma_y, got rho = {rho}, sigma_y = {sigma_y}")
    if t is None:
        t = float(denoiser.schedule.time_of_ratio(torch.tensor(rho, dtype=torch.float64)))
    alpha, _ = alpha_sigma(denoiser.schedule, t)
    return (denoiser(alpha * z, t) - z) / rho**2 + (y - z) / (sigma_y**2 - rho**2)


def langevin_levels(
    schedule: Schedule, sigma_y: float, levels: int, rho_min: float | None = None
) -> list[tuple[float, float]]:
    r"""The levels :math:`(\rho_i, t_i)`, :math:`\rho_i = \sigma_y (\rho_\text{min} / \sigma_y)^{i / L}`,
    :math:`i = 1, \dots, L`: geometric (Song & Ermon, 2019), strictly below :math:`\sigma_y`, ending at
    :math:`\rho_\text{min}`, by default the schedule's smallest noise ratio :math:`\sigma_0 / \alpha_0`.
    """
    sigma_y = float(sigma_y)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    low, _ = schedule.ratio_range()
    matched_time(schedule, sigma_y)  # sigma_y must be a noise level of the schedule
    rho_min = low if rho_min is None else float(rho_min)
    if not low <= rho_min < sigma_y:
        raise ValueError(f"rho_min must lie in [{low:.6g}, sigma_y = {sigma_y:.6g}), got {rho_min:.6g}")
    ratios = [sigma_y * (rho_min / sigma_y) ** (i / levels) for i in range(1, levels + 1)]
    ratios[-1] = rho_min
    times = schedule.time_of_ratio(torch.tensor(ratios, dtype=torch.float64)).clamp(0.0, 1.0)
    return [(rho, float(t)) for rho, t in zip(ratios, times, strict=True)]


class AnnealedLangevin(PosteriorMethod):
    r"""Annealed Langevin dynamics on :math:`p(z \mid y)`, started from the noisy image.

    At each level :math:`\rho_i` of :func:`langevin_levels`, ``steps`` steps of

    .. math:: z \leftarrow z + \delta_i\, \nabla_z \log p(z \mid y) + \sqrt{2 \delta_i}\, \xi,
              \qquad \delta_i = \tau \big(\rho_i^{-2} + (\sigma_y^2 - \rho_i^2)^{-1}\big)^{-1},

    with ``step_size`` :math:`= \tau`. Since :math:`-\nabla^2 \log p_\rho \preceq I / \rho^2` for any data, the
    target's curvature is at most :math:`1 / v_i` with :math:`v_i = \delta_i / \tau`, the scheme is stable for
    :math:`\tau < 2`, and on a Gaussian its stationary variance is biased by at most :math:`\tau / (2 - \tau)`
    (relative) in the stiffest direction. With ``denoise`` the result is :math:`\hat{x}(\alpha_{t_L} z, t_L) =
    \mathbb{E}[x \mid z, y]`, whose law is :math:`p(x \mid y)` but for the variance
    :math:`\operatorname{Cov}[x \mid z] \preceq \rho_L^2 I` it leaves out (:math:`10^{-6}` at the default
    :math:`\rho_L`). ``levels * steps`` evaluations, plus one if ``denoise``.
    """

    LEVELS, STEPS, STEP_SIZE = 10, 20, 1.0
    name = "langevin"
    summary = "annealed Langevin dynamics from the noisy image (a baseline); --steps per level"
    options = (
        Option("levels", LEVELS, "noise levels", low=1, high=1000, integer=True),
        Option("step_size", STEP_SIZE, "step size tau", low=0, high=2, low_open=True, high_open=True),
    )
    identity_only, noise_free = True, False
    levels: int
    step_size: float

    def __init__(
        self,
        denoiser: DenoiserLike,
        y: Tensor,
        sigma_y: float,
        *,
        rho_min: float | None = None,
        denoise: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(denoiser, y, sigma_y, **options)
        self.grid = langevin_levels(denoiser.schedule, self.sigma_y, self.levels, rho_min)
        self.denoise = denoise

    @torch.no_grad()
    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """One draw per observation."""
        z = self.y.clone()
        for rho, t in self.grid:
            delta = self.step_size / (1 / rho**2 + 1 / (self.sigma_y**2 - rho**2))
            for _ in range(self.steps):
                score = level_posterior_score(self.denoiser, z, self.y, self.sigma_y, rho, t)
                z = z + delta * score + math.sqrt(2 * delta) * randn_like(z, generator)
        if self.denoise:
            _, t = self.grid[-1]
            z = self.denoiser(alpha_sigma(self.denoiser.schedule, t)[0] * z, t)
        return z

    @property
    def nfe(self) -> int:
        """Network evaluations: ``steps`` per level, and the final denoising."""
        return len(self.grid) * self.steps + int(self.denoise)
