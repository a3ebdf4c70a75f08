r"""Posterior methods for a Gaussian observation, with the unconditional denoiser.

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

Other methods, each returning :math:`K` draws shaped ``(K, B, C, H, W)`` (the registry :data:`METHODS`):

* :func:`langevin`: annealed Langevin dynamics (Song & Ermon, 2019) started from the noisy image, on the exact
  posterior of the less noisy image :math:`z = x + \rho\,\varepsilon` at decreasing :math:`\rho < \sigma_y`
  (:func:`level_posterior_score`); the last level targets :math:`p(x \mid y)` up to the Langevin step bias;
* :func:`guided`: a heuristic baseline, the reverse process from a fixed :math:`t_\text{start}` with a term
  :math:`\lambda (y - z_t)` pulling the denoised estimate towards the observation;
* :func:`sda`: score-based data assimilation (Rozet & Louppe, 2023): predictor-corrector sampling from pure noise
  with the approximate likelihood score :func:`sda_likelihood_score`, for any differentiable observation operator.

References:
    Efron, "Tweedie's Formula and Selection Bias", JASA 2011.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
    Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations", ICLR 2022.
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sda_cli.sampler import DenoiserLike, _alpha_sigma, _randn_like, prior_noise, sample
from sda_cli.schedule import Schedule

__all__ = [
    "METHODS",
    "POSTERIOR_SAMPLERS",
    "PosteriorMethod",
    "denoise_draws",
    "guided",
    "langevin",
    "langevin_levels",
    "level_posterior_score",
    "match_channels",
    "matched_time",
    "mean_std",
    "mmse",
    "posterior_mean_std",
    "posterior_sample",
    "sda",
    "sda_likelihood_score",
]

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


def mean_std(draws: Tensor) -> tuple[Tensor, Tensor]:
    r"""The mean and per-pixel standard deviation over the first axis of ``draws`` ``(K, ...)``, :math:`K \geq 2`.

    .. math:: \bar{x} = \frac{1}{K} \sum_k x^{(k)}, \qquad
              s = \Big( \frac{1}{K - 1} \sum_k (x^{(k)} - \bar{x})^2 \Big)^{1/2}.
    """
    if draws.shape[0] < 2:
        raise ValueError(f"a standard deviation needs at least 2 samples, got {draws.shape[0]}")
    return draws.mean(0), draws.std(0, correction=1)


def posterior_mean_std(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    samples: int = 8,
    method: str = "matched",
    **options: object,
) -> tuple[Tensor, Tensor]:
    r"""The mean and per-pixel standard deviation of :math:`K` posterior samples, each shaped like ``y``.

    .. math:: \bar{x} = \frac{1}{K} \sum_k x^{(k)}, \qquad
              s = \Big( \frac{1}{K - 1} \sum_k (x^{(k)} - \bar{x})^2 \Big)^{1/2}.

    The draws come from ``METHODS[method]`` (default ``"matched"``: :func:`posterior_sample`), as one batch of
    :math:`K B` images; ``options`` go to it. With exact independent samples :math:`\bar{x}` estimates
    :math:`\mathbb{E}[x \mid y]` with Monte Carlo error :math:`s / \sqrt{K}`, so that
    :math:`\mathbb{E} \lVert \bar{x} - x \rVert^2 = (1 + 1/K)\, \mathbb{E} \lVert \mathbb{E}[x \mid y] - x \rVert^2`
    (use :func:`mmse` for the exact mean in one evaluation); :math:`s` is the uncertainty map. Needs :math:`K \geq 2`.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"a standard deviation needs at least 2 samples, got {samples!r}")
    if method not in METHODS:
        raise ValueError(f"unknown posterior method {method!r}; expected one of {sorted(METHODS)}")
    return mean_std(METHODS[method](denoiser, y, sigma_y, samples=samples, **options))


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def _count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _repeat(y: Tensor, samples: int) -> Tensor:
    """``K`` copies of the batch ``y`` as one batch of :math:`K B` images (copy ``k`` at rows ``kB .. kB + B - 1``)."""
    return y.unsqueeze(0).expand(samples, *y.shape).reshape(samples * y.shape[0], *y.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# Annealed Langevin dynamics on the exact posterior of the less noisy image


def level_posterior_score(
    denoiser: DenoiserLike, z: Tensor, y: Tensor, sigma_y: float, rho: float, t: float | None = None
) -> Tensor:
    r"""The score :math:`\nabla_z \log p(z \mid y)` of the image :math:`z = x + \rho\,\varepsilon` given
    :math:`y = x + \sigma_y n`, for :math:`0 < \rho < \sigma_y`:

    .. math:: \nabla_z \log p(z \mid y) = \frac{\hat{x}(\alpha_t z, t) - z}{\rho^2} + \frac{y - z}{\sigma_y^2 - \rho^2},
              \qquad \sigma_t / \alpha_t = \rho.

    Derivation. Build the observation as a noisier version of :math:`z`:
    :math:`y = z + \sqrt{\sigma_y^2 - \rho^2}\, n'` with :math:`n'` independent of :math:`(x, \varepsilon)`. Then
    :math:`y = x + \rho \varepsilon + \sqrt{\sigma_y^2 - \rho^2}\, n'` has exactly the law of
    :math:`x + \sigma_y n`, so this coupling changes nothing about :math:`(x, y)`, and in it
    :math:`y \perp x \mid z`. Hence, exactly,

    .. math:: p(z \mid y) \propto p_\rho(z)\, \mathcal{N}(y;\, z,\, (\sigma_y^2 - \rho^2) I),

    with :math:`p_\rho` the law of :math:`x + \rho \varepsilon`, whose score is :math:`(\hat{x} - z) / \rho^2`
    (Tweedie; :math:`\alpha_t z` is :math:`x_t`). In the diffusion's own terms :math:`p(z \mid y)` is the law of
    :math:`x_t / \alpha_t` given :math:`x_{t^*} = \alpha_{t^*} y`, the marginal of the exact reverse process at
    :math:`t`. ``t`` defaults to ``schedule.time_of_ratio(rho)``.
    """
    sigma_y, rho = float(sigma_y), float(rho)
    if not 0 < rho < sigma_y:
        raise ValueError(f"need 0 < rho < sigma_y, got rho = {rho}, sigma_y = {sigma_y}")
    if t is None:
        t = float(denoiser.schedule.time_of_ratio(torch.tensor(rho, dtype=torch.float64)))
    alpha, _ = _alpha_sigma(denoiser.schedule, t)
    return (denoiser(alpha * z, t) - z) / rho**2 + (y - z) / (sigma_y**2 - rho**2)


def langevin_levels(
    schedule: Schedule, sigma_y: float, levels: int, rho_min: float | None = None
) -> list[tuple[float, float]]:
    r"""The noise levels :math:`(\rho_i, t_i)`, :math:`i = 1, \dots, L`, of :func:`langevin`:

    .. math:: \rho_i = \sigma_y\, (\rho_\text{min} / \sigma_y)^{i / L}, \qquad t_i = t(\rho_i),

    a geometric sequence (Song & Ermon, 2019) strictly below :math:`\sigma_y` and ending at :math:`\rho_\text{min}`,
    by default the schedule's smallest noise ratio :math:`\sigma_0 / \alpha_0` (:math:`10^{-3}` for the schedules'
    defaults), where the ancestral sampler ends too.
    """
    sigma_y = float(sigma_y)
    levels = _count("levels", levels)
    low, _ = schedule.ratio_range()
    matched_time(schedule, sigma_y)  # sigma_y must be a noise level of the schedule
    rho_min = low if rho_min is None else float(rho_min)
    if not low <= rho_min < sigma_y:
        raise ValueError(f"rho_min must lie in [{low:.6g}, sigma_y = {sigma_y:.6g}), got {rho_min:.6g}")
    ratios = [sigma_y * (rho_min / sigma_y) ** (i / levels) for i in range(1, levels + 1)]
    ratios[-1] = rho_min
    times = schedule.time_of_ratio(torch.tensor(ratios, dtype=torch.float64)).clamp(0.0, 1.0)
    return [(rho, float(t)) for rho, t in zip(ratios, times, strict=True)]


def langevin(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    levels: int = 10,
    steps: int = 20,
    step_size: float = 1.0,
    rho_min: float | None = None,
    samples: int = 1,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Annealed Langevin dynamics on the posterior, started from the noisy image; ``(K, B, C, H, W)``.

    Targets. At each level :math:`\rho_1 > \dots > \rho_L` of :func:`langevin_levels` (all below
    :math:`\sigma_y`), ``steps`` steps of unadjusted Langevin dynamics

    .. math:: z \leftarrow z + \delta_i\, \nabla_z \log p(z \mid y) + \sqrt{2 \delta_i}\, \xi,
              \qquad \xi \sim \mathcal{N}(0, I),

    on the *exact* posterior of the less noisy image :math:`z = x + \rho_i \varepsilon` given :math:`y`
    (:func:`level_posterior_score`). The chain starts at :math:`z = y`, which is exactly :math:`p(z \mid y)` at
    :math:`\rho = \sigma_y`, and each level starts from the previous one's end, close to its target (annealing;
    Song & Ermon, 2019). The last level targets :math:`p(z \mid y)` at :math:`\rho_L = \rho_\text{min}`; with
    ``denoise`` (default) the result is then :math:`\hat{x}(\alpha_{t_L} z, t_L) = \mathbb{E}[x \mid z] =
    \mathbb{E}[x \mid z, y]` (as :math:`y \perp x \mid z`), whose law is :math:`p(x \mid y)` but for the
    variance :math:`\operatorname{Cov}[x \mid z] \preceq \rho_L^2 I` it leaves out (:math:`10^{-6}` at the default
    :math:`\rho_L`; a larger ``rho_min`` saves levels but removes up to :math:`\rho_L^2` of variance from every
    direction, all of it from directions of prior variance below :math:`\rho_L^2`); without it, :math:`z` itself,
    which has :math:`\rho_L^2` too much.

    Step size. :math:`\delta_i = \tau v_i` with ``step_size`` :math:`= \tau` and
    :math:`v_i = (\rho_i^{-2} + (\sigma_y^2 - \rho_i^2)^{-1})^{-1}`: since :math:`-\nabla^2 \log p_\rho \preceq
    I / \rho^2` for any data (the Hessian is :math:`(\operatorname{Cov}[x \mid z] / \rho^2 - I) / \rho^2`), the
    target's curvature is at most :math:`1 / v_i`, the scheme is stable for :math:`\tau < 2`, and on a Gaussian
    target its stationary covariance is :math:`(P (1 - \delta P / 2))^{-1}` for precision :math:`P`, a variance
    bias of at most :math:`\tau / (2 - \tau)` (relative) in the stiffest direction, whose variance is of order
    :math:`\rho_i^2`, and vanishing as :math:`\delta_i / 2 v` in directions of variance :math:`v \gg \rho_i^2`. The
    main error is elsewhere: at small :math:`\rho_i` the chain barely moves in the directions of large posterior
    variance, so these must be mixed at the early levels, and what is not mixed there stays (a lag of the mean and
    variance behind the moving targets). On Gaussian data the defaults (10 levels of 20 steps, :math:`\tau = 1`)
    leave a Kullback-Leibler divergence of :math:`10^{-3}`-:math:`2 \cdot 10^{-2}` from :math:`p(x \mid y)` for
    :math:`\sigma_y \in [0.1, 1]`, mostly a mean offset of 0.04-0.1 posterior standard deviations; the offset falls
    as :math:`1 / (\text{levels} \cdot \text{steps})` (computed exactly in ``tests/test_posterior_methods.py``).
    Song & Ermon's step :math:`\alpha_i = \epsilon \sigma_i^2 / \sigma_L^2` is :math:`\alpha_i = 2 \delta_i`; their
    :math:`\epsilon = 2 \cdot 10^{-5}`, :math:`\sigma_L = 0.01` is :math:`\tau \approx 0.1`, with 100 steps per level.

    Cost: ``levels * steps`` evaluations, plus one if ``denoise``. This is the Langevin baseline: the matched-start
    ancestral sampler (:func:`posterior_sample`) samples the same posterior without step bias and with fewer
    evaluations.
    """
    steps = _count("steps", steps)
    samples = _count("samples", samples)
    if not 0 < step_size < 2:
        raise ValueError(f"step_size must lie in (0, 2) for a stable chain, got {step_size}")
    sigma_y = float(sigma_y)
    grid = langevin_levels(denoiser.schedule, sigma_y, levels, rho_min)
    observed = _repeat(y, samples)
    z = observed.clone()
    with torch.no_grad():
        for rho, t in grid:
            delta = step_size / (1 / rho**2 + 1 / (sigma_y**2 - rho**2))
            for _ in range(steps):
                score = level_posterior_score(denoiser, z, observed, sigma_y, rho, t)
                z = z + delta * score + math.sqrt(2 * delta) * _randn_like(z, generator)
        if denoise:
            rho, t = grid[-1]
            z = denoiser(_alpha_sigma(denoiser.schedule, t)[0] * z, t)
    return z.reshape(samples, *y.shape)


# ---------------------------------------------------------------------------------------------------------------
# The guided reverse process (a heuristic baseline)


class _Guided:
    r"""The denoiser :math:`\hat{x} + \lambda (y - x_t / \alpha_t)`, i.e. the score
    :math:`\nabla \log p_t + \lambda (\alpha_t y - x_t) / \sigma_t^2`."""

    def __init__(self, denoiser: DenoiserLike, y: Tensor, strength: float) -> None:
        self.denoiser, self.y, self.strength = denoiser, y, strength
        self.schedule = denoiser.schedule

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor:
        alpha, _ = _alpha_sigma(self.schedule, t)
        return self.denoiser(x_t, t) + self.strength * (self.y - x_t / alpha)


def guided(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    t_start: float = 0.5,
    strength: float = 0.1,
    steps: int = 64,
    samples: int = 1,
    denoise: bool = True,
    power: float = 7.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The reverse process from a fixed :math:`t_\text{start}` with a pull towards :math:`y`; ``(K, B, C, H, W)``.

    A heuristic baseline (an SDEdit-like start, Meng et al., 2022, plus a guidance term), not a posterior sampler.

    Start. :math:`x_{t_s} = \alpha_{t_s} y + \sqrt{\sigma_{t_s}^2 - \alpha_{t_s}^2 \sigma_y^2}\; \varepsilon`
    when :math:`t_s \geq t^*` (the square root is real): the observation, noised up to level :math:`t_s`, which is a
    draw of :math:`p(x_{t_s} \mid x_{t^*} = \alpha_{t^*} y)`. When :math:`t_s < t^*` the observation is already
    noisier than level :math:`t_s`; the start is then :math:`\alpha_{t_s} y`, whose excess noise
    :math:`\alpha_{t_s}^2 \sigma_y^2 - \sigma_{t_s}^2` the process does not remove completely. (The noise
    :math:`\varepsilon` is drawn in both cases, so the random stream does not depend on the case.)

    Guidance. The ancestral sampler (:func:`sda_cli.sampler.ancestral`, ``steps`` steps down to 0) runs on the
    score :math:`\nabla \log p_t(x_t) + \lambda (\alpha_t y - x_t) / \sigma_t^2` with ``strength`` :math:`= \lambda`,
    that is, on the denoised estimate

    .. math:: \hat{x}_\lambda(x_t, t) = \hat{x}(x_t, t) + \lambda\, (y - z_t), \qquad z_t = x_t / \alpha_t,

    the students' :math:`\lambda (y - x_t)` written in the scaled variable :math:`z_t = x + \rho_t \varepsilon`
    (where the observation lives) and added to :math:`\hat{x}`, which makes :math:`\lambda` dimensionless and the
    same for every schedule. At the last step :math:`z \approx \hat{x}`, so the output is close to
    :math:`(1 - \lambda) \hat{x} + \lambda y`: :math:`\lambda` trades fidelity to :math:`y` against the noise it
    brings back. :math:`\lambda = 0` is plain ancestral sampling from :math:`x_{t_s}`, which forgets more of
    :math:`y` the larger :math:`t_s`. Neither is :math:`p(x \mid y)` in general.
    """
    if not 0 < t_start <= 1:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start}")
    samples = _count("samples", samples)
    sigma_y, strength = float(sigma_y), float(strength)
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
    alpha, sigma = _alpha_sigma(denoiser.schedule, t_start)
    observed = _repeat(y, samples)
    noise = _randn_like(observed, generator)
    x = alpha * observed + math.sqrt(max(sigma**2 - alpha**2 * sigma_y**2, 0.0)) * noise
    model = denoiser if strength == 0 else _Guided(denoiser, observed, strength)
    x = sample(model, x, t_start, 0.0, steps, "ancestral", generator=generator, denoise=denoise, power=power)
    return x.reshape(samples, *y.shape)


# ---------------------------------------------------------------------------------------------------------------
# Score-based data assimilation


def _identity(x: Tensor) -> Tensor:
    return x


def _sda_terms(
    denoiser: DenoiserLike,
    x_t: Tensor,
    t: float,
    y: Tensor,
    sigma_y: float,
    gamma: float,
    operator: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """:math:`\\hat{x}(x_t, t)` and the SDA likelihood score at ``x_t``, from one forward and one backward pass."""
    alpha, sigma = _alpha_sigma(denoiser.schedule, t)
    variance = sigma_y**2 + gamma * (sigma / alpha) ** 2
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        x_hat = denoiser(x, t)
        log_p = -(y - operator(x_hat)).square().sum() / (2 * variance)
        (score,) = torch.autograd.grad(log_p, x)
    return x_hat.detach(), score


def sda_likelihood_score(
    denoiser: DenoiserLike,
    x_t: Tensor,
    t: float,
    y: Tensor,
    sigma_y: float,
    *,
    gamma: float = 1e-2,
    operator: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""The approximate likelihood score of SDA (Rozet & Louppe, 2023, eq. 12-13) for :math:`y = A(x) + \sigma_y n`:

    .. math:: \log p(y \mid x_t) \approx -\frac{\lVert y - A(\hat{x}(x_t, t)) \rVert^2}
                                               {2 (\sigma_y^2 + \gamma \sigma_t^2 / \alpha_t^2)}, \qquad
              \nabla_{x_t} \log p(y \mid x_t) \approx
              \frac{J^\top J_A^\top (y - A(\hat{x}))}{\sigma_y^2 + \gamma \sigma_t^2 / \alpha_t^2},

    differentiated through :math:`\hat{x}` by autograd (:math:`J = \partial \hat{x} / \partial x_t`); the sum runs
    over the whole batch, each image's gradient depending on its own terms only. It replaces the exact Gaussian
    :math:`p(y \mid x_t) \approx \mathcal{N}(y; A \hat{x}, \sigma_y^2 I + A \operatorname{Cov}[x \mid x_t] A^\top)`
    (linear :math:`A`, Gaussian :math:`p(x \mid x_t)`) by :math:`\operatorname{Cov}[x \mid x_t] \approx \gamma
    \rho_t^2 I`, :math:`\rho_t = \sigma_t / \alpha_t`. Exact when the data are Gaussian and
    :math:`\operatorname{Cov}[x \mid x_t] = \gamma \rho_t^2 I` (e.g. :math:`\Sigma = \lambda I`,
    :math:`\gamma = \lambda / (\lambda + \rho_t^2)`), and as :math:`\rho_t \to 0` with :math:`\gamma = 1`, where
    :math:`\operatorname{Cov}[x \mid x_t] = \rho_t^2 I + O(\rho_t^4)`. ``operator`` defaults to the identity.
    """
    return _sda_terms(denoiser, x_t, t, y, float(sigma_y), float(gamma), operator or _identity)[1]


class _SDAPosterior:
    r"""The denoiser whose score is the SDA posterior score: :math:`\hat{x} + (\sigma_t^2 / \alpha_t) g`, with
    :math:`g` the likelihood score, since :math:`\nabla \log p_t = (\alpha_t \hat{x} - x_t) / \sigma_t^2`."""

    def __init__(
        self,
        denoiser: DenoiserLike,
        y: Tensor,
        sigma_y: float,
        gamma: float,
        operator: Callable[[Tensor], Tensor],
    ) -> None:
        self.denoiser, self.y, self.sigma_y, self.gamma, self.operator = denoiser, y, sigma_y, gamma, operator
        self.schedule = denoiser.schedule

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor:
        x_hat, score = _sda_terms(self.denoiser, x_t, t, self.y, self.sigma_y, self.gamma, self.operator)
        alpha, sigma = _alpha_sigma(self.schedule, t)
        return x_hat + (sigma**2 / alpha) * score


def sda(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    *,
    steps: int = 256,
    corrections: int = 1,
    tau: float = 0.5,
    gamma: float = 1e-2,
    adaptive: bool = True,
    operator: Callable[[Tensor], Tensor] | None = None,
    shape: Sequence[int] | None = None,
    samples: int = 1,
    denoise: bool = True,
    power: float = 7.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Score-based data assimilation (Rozet & Louppe, 2023) for :math:`y = A(x) + \sigma_y n`; ``(K, B, *shape)``.

    Predictor-corrector sampling (:func:`sda_cli.sampler.pc`: a DDIM step, then ``corrections`` Langevin steps
    with :math:`\delta = \tau D / \lVert s \rVert^2`, or :math:`\tau \sigma_t^2` if not ``adaptive``) from pure
    noise at :math:`t = 1` (:func:`sda_cli.sampler.prior_noise`) down to :math:`t = 0` in ``steps`` steps of
    :func:`sda_cli.sampler.time_grid`, on the approximate posterior score

    .. math:: s(x_t \mid y) = \nabla \log p_t(x_t) + \nabla_{x_t} \log p(y \mid x_t)

    with the likelihood score of :func:`sda_likelihood_score` (one forward and one backward pass per evaluation).
    ``operator`` :math:`A` maps a batch of images ``(N, *shape)`` to observations shaped like ``y``'s entries
    (default: the identity, i.e. denoising, ``shape = y.shape[1:]``); masks, blurs and downsampling are any
    differentiable function. The :math:`K` draws per observation run as one batch of :math:`K B` images.

    Accuracy. Unlike :func:`posterior_sample` this is approximate even with an exact denoiser, through
    :math:`\operatorname{Cov}[x \mid x_t] \approx \gamma \rho_t^2 I`; its strength is that :math:`A` may be anything.
    The step counts, :math:`\tau` and :math:`\gamma` follow the paper's code (256 steps, 1 correction,
    :math:`\tau = 0.5`, :math:`\gamma = 10^{-2}`); the grid is :func:`~sda_cli.sampler.time_grid`'s, not the
    paper's uniform one in :math:`t`. On 6-dimensional Gaussian data with the fixed step, the output law is within
    0.07-0.25 posterior standard deviations in mean and 13% in variance of :math:`p(x \mid y)` for
    :math:`\sigma_y \in [0.1, 1]` (computed exactly in ``tests/test_posterior_methods.py``). The adaptive step
    inflates the variance: on 256-dimensional Gaussian data at :math:`\tau = 0.5` the posterior variance came out
    25% too large (the :math:`1 + \tau/2` of :func:`~sda_cli.sampler.pc`) and the mean right; a smaller
    :math:`\tau` gives a better calibrated standard-deviation map. With few steps and small :math:`\sigma_y` the
    likelihood term is stiff and explicit steps can diverge (64 fixed-step steps at :math:`\sigma_y = 0.1`,
    :math:`\gamma = 10^{-2}` did, on that Gaussian; the adaptive step did not).
    """
    samples = _count("samples", samples)
    sigma_y = float(sigma_y)
    if not sigma_y > 0:
        raise ValueError(f"sigma_y must be positive, got {sigma_y}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be non-negative, got {gamma}")
    shape = tuple(y.shape[1:]) if shape is None else tuple(shape)
    observed = _repeat(y, samples)
    model = _SDAPosterior(denoiser, observed, sigma_y, float(gamma), operator or _identity)
    x = prior_noise(
        denoiser.schedule, (samples * y.shape[0], *shape), generator=generator, device=y.device, dtype=y.dtype
    )
    options = {"corrections": corrections, "tau": tau, "adaptive": adaptive}
    x = sample(model, x, 1.0, 0.0, steps, "pc", generator=generator, denoise=denoise, power=power, **options)
    return x.reshape(samples, y.shape[0], *shape)


PosteriorMethod = Callable[..., Tensor]
"""``method(denoiser, y, sigma_y, *, samples, generator, **options) -> Tensor`` shaped ``(K, B, ...)``."""

METHODS: dict[str, PosteriorMethod] = {
    "matched": posterior_sample,
    "langevin": langevin,
    "guided": guided,
    "sda": sda,
}
"""The posterior methods by name. Only ``"matched"`` samples :math:`p(x \\mid y)` exactly (given an exact denoiser
and enough steps); ``"langevin"`` has an :math:`O(\\tau)` step bias, ``"sda"`` an approximate likelihood,
``"guided"`` is a heuristic."""


DENOISE_METHODS: tuple[str, ...] = ("mmse", "posterior", "mean", "langevin", "guided", "sda")
"""The methods of ``sda denoise``: ``mmse`` is :func:`mmse`; ``posterior`` and ``mean`` draw from
:func:`posterior_sample` (``mean`` averages the draws); the others are the methods of :data:`METHODS` of that name."""


def denoise_draws(
    denoiser: DenoiserLike,
    y: Tensor,
    sigma_y: float,
    method: str,
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
    **options: object,
) -> Tensor:
    """The draws of a :data:`DENOISE_METHODS` method, ``(K, B, C, H, W)``; ``mmse`` gives its one estimate (K = 1).

    ``options`` go to the method (for ``posterior`` and ``mean``: to :func:`posterior_sample`).
    """
    if method == "mmse":
        return mmse(denoiser, y, sigma_y).unsqueeze(0)
    name = "matched" if method in ("posterior", "mean") else method
    if name not in METHODS:
        raise ValueError(f"unknown denoising method {method!r}; expected one of {', '.join(DENOISE_METHODS)}")
    return METHODS[name](denoiser, y, sigma_y, samples=samples, generator=generator, **options)


def match_channels(
    y: Tensor, sigma_y: float, channels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, float, Callable[[Tensor], Tensor]]:
    r"""Fit an observation's channels to the model's: returns :math:`y`, its noise level, and the way back.

    A grey image on an RGB model: with :math:`u = (1, 1, 1) / \sqrt{3}`, the grey observation
    :math:`y = x + \sigma n` repeated in three channels is :math:`x \mathbf{1} + \sqrt{3} \sigma n u`: white noise of
    level :math:`\sqrt{3} \sigma` along :math:`u` and none across it. Adding independent noise of level
    :math:`\sqrt{3} \sigma` across :math:`u` makes the noise white in RGB, so the exact matched-time identity holds
    with :math:`\sigma' = \sqrt{3} \sigma`; the way back averages the channels (axis ``-3``) to grey.
    """
    if y.shape[1] == channels:
        return y, sigma_y, _identity
    if y.shape[1] == 1 and channels == 3:
        level = math.sqrt(3) * sigma_y
        rgb = y.expand(-1, 3, -1, -1)
        device = generator.device if generator is not None else y.device
        extra = level * torch.randn(rgb.shape, generator=generator, device=device).to(y)
        extra = extra - extra.mean(dim=1, keepdim=True)  # the part across u
        return rgb + extra, level, lambda x: x.mean(dim=-3, keepdim=True)
    raise ValueError(
        "the image is RGB but the model is grey (1 channel); convert the image to grey, or pass an RGB model "
        "with --model"
    )
