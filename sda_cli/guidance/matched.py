r"""The exact posterior of a Gaussian observation, by the matched time.

For an observation in model units

.. math:: y = x + \sigma_y n, \qquad n \sim \mathcal{N}(0, I)

(the command line's pixel ``--sigma`` is :math:`\sigma_y / 2`, since :math:`x = 2p - 1`), choose the matched time
:math:`t^*` with :math:`\sigma_{t^*} / \alpha_{t^*} = \sigma_y`. Then :math:`\alpha_{t^*} y = \alpha_{t^*} x +
\sigma_{t^*} n` has exactly the law of :math:`x_{t^*}` given :math:`x`, so
:math:`p(x \mid y) = p(x \mid x_{t^*} = \alpha_{t^*} y)`:

* the posterior mean is :math:`\mathbb{E}[x \mid y] = \hat{x}(\alpha_{t^*} y, t^*)`, one network evaluation
  (Tweedie's formula; Robbins, 1956; Efron, 2011);
* a posterior sample is the end of a reverse-time process started at :math:`t^*` from :math:`\alpha_{t^*} y` whose
  transitions are those of the forward process read backwards: the ancestral sampler (the reverse-time SDE). The
  deterministic samplers (DDIM, Heun) send one start to one point, and the predictor-corrector's Langevin steps
  target the marginals :math:`p_s`, not :math:`p(x_s \mid x_{t^*})`: neither samples :math:`p(x \mid y)` from here.

This holds for white, unclipped noise of known :math:`\sigma_y`; clipped or quantised inputs make it approximate.

References:
    Efron, "Tweedie's Formula and Selection Bias", JASA 2011.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sda_cli.guidance.base import PosteriorMethod
from sda_cli.sampler import DEFAULT_STEPS, DenoiserLike, SDEMultistep, alpha_sigma
from sda_cli.schedule import Schedule

__all__ = ["MMSE", "MatchedPosterior", "PosteriorMean", "matched_time"]


def matched_time(schedule: Schedule, sigma_y: float) -> float:
    r"""The time :math:`t^*` with :math:`\sigma_{t^*} / \alpha_{t^*} = \sigma_y` (model units).

    Raises ``ValueError`` if :math:`\sigma_y` lies outside the schedule's range of noise ratios
    :math:`[\sigma_0 / \alpha_0, \sigma_1 / \alpha_1]`.
    """
    sigma_y = float(sigma_y)
    low, high = schedule.ratio_range()
    if not low <= sigma_y <= high:
        raise ValueError(
            f"sigma_y = {sigma_y:.6g} (model units, twice the pixel sigma) is outside the range "
            f"[{low:.6g}, {high:.6g}] of noise levels sigma/alpha of the {schedule.name or 'given'} schedule"
        )
    t = float(schedule.time_of_ratio(torch.tensor(sigma_y, dtype=torch.float64)))
    return min(max(t, 0.0), 1.0)


class MatchedPosterior(PosteriorMethod):
    r""":math:`p(x \mid y)` for :math:`y = x + \sigma_y n`: its mean in one evaluation, its draws by the reverse SDE.

    ``y``: observations ``(B, C, H, W)`` in model units; each row gets its own draw.
    """

    name = "posterior"
    summary = "one draw of the exact posterior p(x | y), by the reverse SDE from the matched time"
    STEPS = DEFAULT_STEPS["sde2m"]
    """Default steps of a draw (the second-order SDE solver: on a Gaussian whose spectrum spans three decades it keeps
    0.80 of the posterior variance after 32 ancestral steps and 1.006 after 32 of its own, 1.045 after 16;
    ``tests/test_guidance_matched.py``)."""
    identity_only, noise_free, calibrated, first_draw = True, False, True, True

    def __init__(self, denoiser: DenoiserLike, y: Tensor, sigma_y: float, **options: Any) -> None:
        super().__init__(denoiser, y, sigma_y, **options)
        self.t = matched_time(denoiser.schedule, self.sigma_y)
        self.start = alpha_sigma(denoiser.schedule, self.t)[0] * self.y
        """:math:`x_{t^*} = \\alpha_{t^*} y`."""

    @torch.no_grad()
    def mean(self) -> Tensor:
        r"""The posterior mean :math:`\mathbb{E}[x \mid y] = \hat{x}(\alpha_{t^*} y, t^*)`, one evaluation."""
        return self.denoiser(self.start, self.t)

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        r"""One draw of :math:`x \sim p(x \mid y)` per observation: the reverse SDE from :math:`x_{t^*}` to 0, by the
        second-order multistep solver (:class:`~sda_cli.sampler.SDEMultistep`); the mean is unaffected by its
        discretisation on Gaussian data.
        """
        sampler = SDEMultistep(self.denoiser, generator=generator)
        return sampler(self.start, self.t, 0.0, self.steps, power=self.power)

    @property
    def nfe(self) -> int:
        """Network evaluations of one :meth:`sample`: one per step and the final Tweedie step."""
        return self.steps + 1


class PosteriorMean(MatchedPosterior):
    """The mean of ``samples`` draws of :class:`MatchedPosterior` (their spread is the uncertainty map)."""

    name = "mean"
    summary = "the mean of --samples draws of the exact posterior (default 8)"
    SAMPLES = 8
    first_draw = False


class MMSE(MatchedPosterior):
    r"""The posterior mean :math:`\hat{x}(\alpha_{t^*} y, t^*)` alone: one evaluation, the best PSNR, no draws."""

    name = "mmse"
    summary = "the posterior mean E[x | y] in one network evaluation (Tweedie): the best PSNR"
    STEPS = None
    draws, calibrated, first_draw = False, False, False

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """The posterior mean of each observation (``generator`` is unused)."""
        return self.mean()

    @property
    def nfe(self) -> int:
        return 1
