r"""Denoising a Gaussian observation exactly with the unconditional denoiser.

For an observation in model units

.. math:: y = x + \sigma_y n, \qquad n \sim \mathcal{N}(0, I)

(the command line's pixel ``--sigma`` is :math:`\sigma_y / 2`, since :math:`x = 2p - 1`), choose the matched time
:math:`t^*` with :math:`\sigma_{t^*} / \alpha_{t^*} = \sigma_y`. Then

.. math:: \alpha_{t^*} y = \alpha_{t^*} x + \sigma_{t^*} n

has exactly the law of :math:`x_{t^*}` given :math:`x`, so :math:`p(x \mid y) = p(x \mid x_{t^*} = \alpha_{t^*} y)`:

* the MMSE estimate is :math:`\mathbb{E}[x \mid y] = \hat{x}(\alpha_{t^*} y, t^*)`, one network evaluation
  (Tweedie's formula; Robbins, 1956; Efron, 2011): :func:`mmse`;
* a posterior sample is the end of a reverse-time process started at :math:`t^*` from :math:`\alpha_{t^*} y`,
  provided its transitions are those of the forward process read backwards, :math:`p(x_s \mid x_t)`. The ancestral
  sampler (DDPM, the reverse-time SDE) has them: :func:`posterior_sample`. The deterministic samplers (DDIM, Heun)
  transport the *marginal* :math:`p_{t^*}` to :math:`p_0` but send one start to one point: from a fixed
  :math:`\alpha_{t^*} y` they return the same image every time, not a sample of :math:`p(x \mid y)`. The
  predictor-corrector's Langevin steps target the marginals :math:`p_s`, not :math:`p(x_s \mid x_{t^*})`, and would
  bias the result towards the prior. Both are refused;
* the mean and per-pixel standard deviation of :math:`K` samples give an estimate and an uncertainty map:
  :func:`posterior_mean_std`.

This holds for white, unclipped noise of known :math:`\sigma_y`; clipped or quantised inputs make it approximate.

References:
    Efron, "Tweedie's Formula and Selection Bias", JASA 2011.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sda_cli.sampler import DenoiserLike, sample
from sda_cli.schedule import Schedule

__all__ = ["POSTERIOR_SAMPLERS", "matched_time", "mmse", "posterior_mean_std", "posterior_sample"]

POSTERIOR_SAMPLERS: tuple[str, ...] = ("ancestral",)
"""The samplers that draw from :math:`p(x \\mid x_{t^*})` when started from a fixed :math:`x_{t^*}`."""


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


def _matched_start(schedule: Schedule, y: Tensor, sigma_y: float) -> tuple[Tensor, float]:
    """:math:`(\\alpha_{t^*} y, t^*)`."""
    t = matched_time(schedule, sigma_y)
    alpha, _ = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha) * y, t


def mmse(denoiser: DenoiserLike, y: Tensor, sigma_y: float) -> Tensor:
    r"""The posterior mean :math:`\mathbb{E}[x \mid y] = \hat{x}(\alpha_{t^*} y, t^*)`, one evaluation.

    ``y`` is a batch of observations ``(B, C, H, W)`` in model units; the result has the same shape.
    """
    x_t, t = _matched_start(denoiser.schedule, y, sigma_y)
    with torch.no_grad():
        return denoiser(x_t, t)


def posterior_sample(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    sampler: str = "ancestral",
    steps: int = 64,
    samples: int = 1,
    generator: torch.Generator | None = None,
    **options: object,
) -> Tensor:
    r"""``samples`` = :math:`K` draws of :math:`x \sim p(x \mid y)` for each observation, shape ``(K, B, C, H, W)``.

    Runs ``sampler`` from :math:`x_{t^*} = \alpha_{t^*} y` down to :math:`t = 0` in ``steps`` steps, the :math:`K`
    copies of the batch as one batch of :math:`K B` images (memory grows with :math:`K B`). ``options`` go to
    :func:`sda_cli.sampler.sample` (``denoise``, ``power``). The sampler's discretisation error on the posterior
    covariance is :math:`O(1/\text{steps})`; the posterior mean is unaffected on Gaussian data.
    """
    if sampler not in POSTERIOR_SAMPLERS:
        raise ValueError(
            f"sampler {sampler!r} does not sample p(x | y) from the matched start; use one of {POSTERIOR_SAMPLERS} "
            "(deterministic samplers return the same image for every draw; use mmse for a point estimate)"
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    x_t, t = _matched_start(denoiser.schedule, y, sigma_y)
    batch = x_t.unsqueeze(0).expand(samples, *x_t.shape).reshape(samples * x_t.shape[0], *x_t.shape[1:])
    x = sample(denoiser, batch, t, 0.0, steps, sampler, generator=generator, **options)
    return x.reshape(samples, *y.shape)


def posterior_mean_std(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    samples: int = 8,
    **options: object,
) -> tuple[Tensor, Tensor]:
    r"""The mean and per-pixel standard deviation of :math:`K` posterior samples, each shaped like ``y``.

    .. math:: \bar{x} = \frac{1}{K} \sum_k x^{(k)}, \qquad
              s = \Big( \frac{1}{K - 1} \sum_k (x^{(k)} - \bar{x})^2 \Big)^{1/2}.

    :math:`\bar{x}` estimates :math:`\mathbb{E}[x \mid y]` with Monte Carlo error :math:`s / \sqrt{K}` (use
    :func:`mmse` for the exact one in one evaluation); :math:`s` is the uncertainty map. ``options`` go to
    :func:`posterior_sample`. Needs :math:`K \geq 2`.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"a standard deviation needs at least 2 samples, got {samples!r}")
    draws = posterior_sample(denoiser, y, sigma_y, samples=samples, **options)  # type: ignore[arg-type]
    return draws.mean(0), draws.std(0, correction=1)
