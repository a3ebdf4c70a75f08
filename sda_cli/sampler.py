r"""Reverse-time samplers: from :math:`x_{t_0}` at any time :math:`t_0` down to any :math:`t_1 < t_0`.

Every sampler speaks through the denoiser :math:`\hat{x}(x_t, t) \approx \mathbb{E}[x \mid x_t]` and two
identities of the kernel :math:`x_t = \alpha_t x + \sigma_t \varepsilon` (Vincent, 2011; Song et al., 2021):

.. math:: \hat{\varepsilon} = \frac{x_t - \alpha_t \hat{x}}{\sigma_t}, \qquad
          \nabla_{x_t} \log p_t(x_t) = -\frac{\hat{\varepsilon}}{\sigma_t}.

**Scaled variables.** With :math:`z = x_t / \alpha_t` and the noise ratio :math:`\rho_t = \sigma_t / \alpha_t`,
:math:`z = x + \rho_t \varepsilon`: every VP or VE kernel is a VE process in :math:`\rho`, and the
probability-flow ODE (Song et al., 2021) reads (Karras et al., 2022, eq. 4 with :math:`s = \alpha`,
:math:`\sigma = \rho`)

.. math:: \frac{\mathrm{d} z}{\mathrm{d} \rho} = \frac{z - \hat{x}}{\rho} = \hat{\varepsilon}.

DDIM is its Euler step and Heun its trapezoidal step. Given the same sequence of :math:`\rho`, the deterministic
samplers therefore produce the same :math:`z` (up to the factor :math:`\alpha`) whatever the schedule.

**Time grid.** :func:`time_grid` places the steps in :math:`\rho`, not in :math:`t`, with the spacing of
Karras et al. (2022, eq. 5), :math:`\rho_i = (\rho_0^{1/p} + \tfrac{i}{N}(\rho_N^{1/p} - \rho_0^{1/p}))^p`,
:math:`p = 7`, then maps back to :math:`t` with ``schedule.time_of_ratio``. The network is conditioned on
:math:`\rho` only, so a grid in :math:`\rho` spends the steps where the solution changes, whatever the
schedule; :math:`p = 7` concentrates them at low noise, where the trajectories curve and where the
errors remain visible in the output (Karras et al. found :math:`p \approx 7` best; :math:`p \to \infty` is
uniform in :math:`\log \rho`, available as ``power=math.inf``).

**Final step.** By default :func:`sample` returns the Tweedie estimate :math:`\hat{x}(x_{t_1}, t_1)`, one more
evaluation. At :math:`t_1 = 0` it is the step from :math:`\rho_0 > 0` (:math:`\sigma_0 = \eta` on the cosine
schedule) to the noiseless limit :math:`\rho = 0`, where DDIM, DDPM and Euler all reduce to
:math:`x = \hat{x}`; it removes the residual noise :math:`\sigma_0` instead of leaving it in the image.
``denoise=False`` returns :math:`x_{t_1}` itself, e.g. to continue sampling from :math:`t_1`. If the
schedule reaches :math:`\sigma_{t_1} = 0` exactly, the last step of the grid already is that noiseless
step (Heun then uses an Euler last step, as in Karras et al.), and no extra evaluation is made.

**One loop.** :class:`Sampler` owns the loop over the grid and the final step; a solver defines only its
``step(x_t, t, s) -> x_s`` and how many evaluations a step costs (as in azula's ``sample.py``).

References:
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
    Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019.
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from sda_cli.schedule import Schedule

__all__ = [
    "DDIM",
    "DEFAULT_STEPS",
    "PC",
    "SAMPLERS",
    "START_RATIO",
    "Ancestral",
    "DenoiserLike",
    "Heun",
    "SDEMultistep",
    "Sampler",
    "alpha_sigma",
    "epsilon_from_mean",
    "make_sampler",
    "positive_int",
    "prior_noise",
    "randn_like",
    "score_from_mean",
    "start_time",
    "time_grid",
]


class DenoiserLike(Protocol):
    """Anything with ``denoiser(x_t, t) -> x_hat`` and a ``schedule``; ``t`` is a float here."""

    schedule: Schedule

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor: ...


def epsilon_from_mean(x_t: Tensor, x_hat: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    r""":math:`\hat{\varepsilon} = (x_t - \alpha_t \hat{x}) / \sigma_t`."""
    return (x_t - alpha * x_hat) / sigma


def score_from_mean(x_t: Tensor, x_hat: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    r""":math:`\nabla_{x_t} \log p_t(x_t) = -\hat{\varepsilon} / \sigma_t = (\alpha_t \hat{x} - x_t) / \sigma_t^2`."""
    return -epsilon_from_mean(x_t, x_hat, alpha, sigma) / sigma


def alpha_sigma(schedule: Schedule, t: float) -> tuple[float, float]:
    r""":math:`(\alpha_t, \sigma_t)` computed in float64, as Python floats."""
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (so seeds agree across devices)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def time_grid(
    schedule: Schedule, t_start: float, t_stop: float = 0.0, steps: int = 64, *, power: float = 7.0
) -> Tensor:
    r"""``steps + 1`` times from ``t_start`` down to ``t_stop`` (float64, both ends exact).

    .. math:: \rho_i = \Big(\rho_{t_0}^{1/p} + \tfrac{i}{N} \big(\rho_{t_1}^{1/p} - \rho_{t_0}^{1/p}\big)\Big)^p,
              \qquad t_i = t(\rho_i), \qquad i = 0, \dots, N,

    the spacing of Karras et al. (2022, eq. 5) in the noise ratio :math:`\rho = \sigma / \alpha`, mapped to time by
    the schedule's inverse. ``power=math.inf`` gives steps uniform in :math:`\log \rho`. If
    :math:`\sigma_{t_\text{stop}} = 0`, interior times whose :math:`\sigma` rounds to 0 in float64 are dropped, so the
    grid may have fewer than ``steps`` steps.
    """
    t_start, t_stop = float(t_start), float(t_stop)
    if not 0.0 <= t_stop < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_stop < t_start <= 1, got t_start={t_start}, t_stop={t_stop}")
    positive_int("steps", steps)
    if not power > 0:
        raise ValueError(f"power must be positive, got {power}")
    ends = schedule.ratio(torch.tensor([t_start, t_stop], dtype=torch.float64))
    high, low = float(ends[0]), float(ends[1])
    fraction = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if math.isinf(power):
        if low <= 0:
            raise ValueError("steps uniform in log(sigma/alpha) need sigma > 0 at t_stop; use a finite power")
        ratios = torch.exp(math.log(high) + fraction * (math.log(low) - math.log(high)))
    else:
        ratios = (high ** (1 / power) + fraction * (low ** (1 / power) - high ** (1 / power))) ** power
    times = schedule.time_of_ratio(ratios).to(torch.float64)
    times[0], times[-1] = t_start, t_stop
    times = times.clamp(t_stop, t_start).cummin(0).values
    if low == 0:  # interior times that round to sigma = 0 would be steps from a noiseless state: drop them
        noisy = schedule.alpha_sigma(times)[1] > 0
        noisy[-1] = True
        times = times[noisy]
    return times


START_RATIO = 80.0
r"""The noise ratio :math:`\rho = \sigma / \alpha` at which new images start (:func:`start_time`): EDM's
:math:`\sigma_\max = 80` (Karras et al., 2022), 160 times the data's standard deviation."""


def start_time(schedule: Schedule, ratio: float = START_RATIO) -> float:
    r"""The time at which sampling new images starts: where :math:`\rho_t` = ``ratio``, or 1 if the schedule ends
    below it. The cosine schedule runs on to :math:`\rho_1 = 1/\eta = 1000`, and a grid of Karras et al.'s spacing
    from there spends a third of its steps above 80, where the data has no visible effect: on a Gaussian of pixel
    standard deviations 0.016 to 0.07, Heun's 32 steps from :math:`\rho = 1000` widen its variance by 11.5-18.4 %,
    from 80 by 4.6-7.1 % (18 steps: 43-70 % and 16-25 %)."""
    if float(schedule.ratio(torch.tensor(1.0, dtype=torch.float64))) <= ratio:
        return 1.0
    return float(schedule.time_of_ratio(torch.tensor(ratio, dtype=torch.float64)))


def prior_noise(
    schedule: Schedule,
    shape: Sequence[int],
    *,
    t: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""A start for sampling new images at time ``t``: :math:`x_t \sim \mathcal{N}(0, \sigma_t^2 I)`.

    The true marginal is :math:`x_t = \alpha_t x + \sigma_t \varepsilon`; the signal term is dropped, which is
    harmless when it is small against :math:`\sigma_t`: at :math:`t = 1`, :math:`\alpha_1 = \eta = 10^{-3}` on the
    cosine schedule, :math:`\alpha_1 \approx 0.0066` on the linear one, and :math:`\sigma_1 = \sigma_{\max} = 100`
    against data in :math:`[-1, 1]` on the VE one; at :func:`start_time`, :math:`\alpha_t x` is at most 1/80 of
    :math:`\sigma_t` for data in :math:`[-1, 1]` (its variance :math:`4 \cdot 10^{-5}` of the noise's for CIFAR-10).
    """
    _, sigma = alpha_sigma(schedule, t)
    noise_device = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=dtype)
    return sigma * noise.to(device if device is not None else noise.device)


class Sampler:
    r"""A reverse-time sampler: the loop over a decreasing time grid, and the final Tweedie step.

    A solver subclasses it and defines :meth:`step` from :math:`x_t` to :math:`x_s`, :math:`s < t`, and
    :attr:`evaluations_per_step`. ``generator`` drives all randomness (:meth:`noise`): the same seed gives the same
    output bit for bit.
    """

    name: ClassVar[str] = ""
    evaluations_per_step: int = 1

    def __init__(self, denoiser: DenoiserLike, *, generator: torch.Generator | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.generator = generator

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        r"""One step from time ``t`` to time ``s < t``; only ``s`` may have :math:`\sigma_s = 0`."""
        raise NotImplementedError

    def noise(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x`` from the sampler's generator."""
        return randn_like(x, self.generator)

    def coefficients(self, t: float, s: float) -> tuple[float, float, float, float]:
        r""":math:`(\alpha_t, \sigma_t, \alpha_s, \sigma_s)` of a step from ``t`` to ``s``."""
        alpha_t, sigma_t = alpha_sigma(self.schedule, t)
        if sigma_t <= 0:
            raise ValueError(f"a step cannot start where sigma = 0 (t = {t}); only the last time of a grid may")
        return alpha_t, sigma_t, *alpha_sigma(self.schedule, s)

    @torch.no_grad()
    def run(self, x: Tensor, times: Tensor | Sequence[float]) -> Tensor:
        """Step ``x`` along ``times`` (non-increasing, at least two) and return :math:`x` at the last time."""
        grid = [float(t) for t in times]
        if len(grid) < 2 or any(s > t for t, s in pairwise(grid)):
            raise ValueError(f"a time grid needs at least two non-increasing times, got {grid}")
        for t, s in pairwise(grid):
            x = self.step(x, t, s)
        return x

    @torch.no_grad()
    def __call__(
        self,
        x: Tensor,
        t_start: float,
        t_stop: float = 0.0,
        steps: int = 64,
        *,
        denoise: bool = True,
        power: float = 7.0,
    ) -> Tensor:
        r"""Run from :math:`x_{t_\text{start}}` = ``x`` down to ``t_stop`` in ``steps`` steps of :func:`time_grid`.

        Returns :math:`\hat{x}(x_{t_\text{stop}}, t_\text{stop})` if ``denoise`` (one more evaluation; see the
        module docstring), else :math:`x_{t_\text{stop}}`; same shape, dtype and device as ``x``.
        """
        times = time_grid(self.schedule, t_start, t_stop, steps, power=power)
        x = self.run(x, times)
        if denoise and alpha_sigma(self.schedule, float(times[-1]))[1] > 0:
            x = self.denoiser(x, float(times[-1]))
        return x

    def nfe(self, steps: int, *, denoise: bool = True) -> int:
        r"""The denoiser evaluations of ``steps`` steps (and the final Tweedie step if ``denoise``), for a schedule
        whose :math:`\sigma` stays positive, as all the shipped ones do."""
        return positive_int("steps", steps) * self.evaluations_per_step + int(denoise)


class Ancestral(Sampler):
    r"""Ancestral (DDPM) sampling: draw :math:`x_s \sim q(x_s \mid x_t, x = \hat{x}(x_t, t))` at each step.

    For :math:`s < t` the kernel gives :math:`x_t \mid x_s \sim \mathcal{N}(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)`
    with :math:`\alpha_{t|s} = \alpha_t / \alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2 \sigma_s^2`,
    and Bayes' rule the exact Gaussian transition

    .. math:: q(x_s \mid x_t, x) = \mathcal{N}\Big(
                  \frac{\alpha_{t|s} \sigma_s^2}{\sigma_t^2} x_t + \frac{\alpha_s \sigma_{t|s}^2}{\sigma_t^2} x,\;
                  \frac{\sigma_s^2 \sigma_{t|s}^2}{\sigma_t^2} I \Big),

    that is, with :math:`\varepsilon = (x_t - \alpha_t x) / \sigma_t` and :math:`z \sim \mathcal{N}(0, I)`,

    .. math:: x_s = \alpha_s x + \sigma_s \Big( \frac{\rho_s}{\rho_t} \varepsilon
                    + \sqrt{1 - \rho_s^2 / \rho_t^2}\; z \Big).

    With :math:`x = \hat{x}` this is a discretisation of the reverse-time SDE, whose transitions are those of the
    forward process read backwards: started from a fixed :math:`x_{t_0}` it samples :math:`p(x \mid x_{t_0})`, up to
    an :math:`O(1/\text{steps})` loss of variance (the transition leaves out :math:`\operatorname{Cov}[x \mid x_t]`).
    (Ho et al., 2020, eq. 6-7; Song et al., 2021.)
    """

    name = "ancestral"

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        x_hat = self.denoiser(x_t, t)
        eps = epsilon_from_mean(x_t, x_hat, alpha_t, sigma_t)
        keep = (sigma_s / alpha_s) / (sigma_t / alpha_t)  # rho_s / rho_t
        return alpha_s * x_hat + sigma_s * (keep * eps + math.sqrt(max(1.0 - keep**2, 0.0)) * self.noise(x_t))


class SDEMultistep(Ancestral):
    r"""The second-order multistep solver of the reverse-time SDE in data prediction (DPM-Solver++(2M) SDE; Lu et al.,
    2022, with Gonzalez et al.'s SDE variant): the ancestral step plus the integral of the linear trend of
    :math:`\hat{x}` over the step, taken from the previous step's :math:`\hat{x}`.

    With :math:`\lambda = -\log \rho` and the step :math:`h = \lambda_s - \lambda_t = \log(\rho_t / \rho_s)`, the
    reverse SDE in :math:`z = x_t / \alpha_t` solves exactly to

    .. math:: z_s = e^{-2h} z_t + \int_{\lambda_t}^{\lambda_s} 2 e^{-2(\lambda_s - \lambda)} \hat{x}_\lambda
              \,\mathrm{d}\lambda + \rho_s \sqrt{1 - e^{-2h}}\, z.

    :class:`Ancestral` holds :math:`\hat{x}_\lambda` at :math:`\hat{x}_t`; here it is
    :math:`\hat{x}_t + (\lambda - \lambda_t) D` with the slope :math:`D = (\hat{x}_t - \hat{x}_r) / h_r` from the
    previous step (from :math:`r` to :math:`t`, of length :math:`h_r`), whose integral adds

    .. math:: \Big(h - \frac{1 - e^{-2h}}{2}\Big) D,

    exact when :math:`\hat{x}` is linear in :math:`\lambda` along the step. The first step, and any step that
    follows a step to a noiseless state, is the ancestral one. One evaluation per step, as ancestral sampling, with a
    discretisation error of higher order in the step.

    References:
        Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", 2022.
        Gonzalez et al., "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models",
        NeurIPS 2023.
    """

    name = "sde2m"

    def __init__(self, denoiser: DenoiserLike, *, generator: torch.Generator | None = None) -> None:
        super().__init__(denoiser, generator=generator)
        self._previous: tuple[Tensor, float, float] | None = None
        """The previous step's estimate, the time it ends at and its length h."""

    @torch.no_grad()
    def run(self, x: Tensor, times: Tensor | Sequence[float]) -> Tensor:
        self._previous = None
        return super().run(x, times)

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        x_hat = self.denoiser(x_t, t)
        rho_t, rho_s = sigma_t / alpha_t, sigma_s / alpha_s
        keep = rho_s / rho_t  # e^{-h}
        z_t = x_t / alpha_t
        z_s = x_hat + keep**2 * (z_t - x_hat)
        if rho_s > 0:
            h = math.log(rho_t / rho_s)
            previous = self._previous
            if previous is not None and previous[1] != t:
                previous = None
            if previous is not None:
                slope = (x_hat - previous[0]) / previous[2]
                z_s = z_s + (h - (1 - keep**2) / 2) * slope
            z_s = z_s + rho_s * math.sqrt(max(1.0 - keep**2, 0.0)) * self.noise(x_t)
            self._previous = (x_hat, s, h)
        else:
            self._previous = None
        return alpha_s * z_s


class DDIM(Sampler):
    r"""Deterministic DDIM: the first-order (Euler) step of the probability-flow ODE in :math:`(z, \rho)`.

    .. math:: x_s = \alpha_s \hat{x}(x_t, t) + \sigma_s \hat{\varepsilon}(x_t, t),
              \qquad\text{i.e.}\qquad z_s = z_t + (\rho_s - \rho_t) \hat{\varepsilon}.

    Exact when :math:`\hat{x}` is constant along the step. (Song, Meng & Ermon, 2021, eq. 12 with
    :math:`\sigma_t = 0`.)
    """

    name = "ddim"

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        x_hat = self.denoiser(x_t, t)
        return alpha_s * x_hat + sigma_s * epsilon_from_mean(x_t, x_hat, alpha_t, sigma_t)


class Heun(Sampler):
    r"""Heun's second-order method on the probability-flow ODE :math:`\mathrm{d}z / \mathrm{d}\rho = \hat{\varepsilon}`.

    .. math:: \tilde{z}_s = z_t + (\rho_s - \rho_t)\, \hat{\varepsilon}(x_t, t), \qquad
              z_s = z_t + \tfrac12 (\rho_s - \rho_t) \big(\hat{\varepsilon}(x_t, t)
                    + \hat{\varepsilon}(\alpha_s \tilde{z}_s, s)\big),

    with :math:`x = \alpha z`; two evaluations per step. A step that ends at :math:`\rho_s = 0`, where
    :math:`\hat{\varepsilon}` is undefined, keeps the Euler value :math:`\tilde{z}_s = \hat{x}`.
    (Karras et al., 2022, Algorithm 1.)
    """

    name = "heun"
    evaluations_per_step = 2

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        rho_t, rho_s = sigma_t / alpha_t, sigma_s / alpha_s
        z = x_t / alpha_t
        slope = epsilon_from_mean(x_t, self.denoiser(x_t, t), alpha_t, sigma_t)
        z_next = z + (rho_s - rho_t) * slope
        if sigma_s > 0:
            x_next = alpha_s * z_next
            slope_next = epsilon_from_mean(x_next, self.denoiser(x_next, s), alpha_s, sigma_s)
            z_next = z + (rho_s - rho_t) * 0.5 * (slope + slope_next)
        return alpha_s * z_next


class PC(Sampler):
    r"""Predictor-corrector: a DDIM step to :math:`s`, then ``corrections`` Langevin steps on :math:`p_s`.

    .. math:: x \leftarrow x + \delta\, \nabla \log p_s(x) + \sqrt{2 \delta}\, z, \qquad z \sim \mathcal{N}(0, I),

    with the score :math:`\nabla \log p_s = -\hat{\varepsilon} / \sigma_s`. The step size, per image, is that of
    SDA (Rozet & Louppe, 2023), a constant ratio :math:`\sqrt{\tau / 2}` of drift to noise as in the "snr" rule of
    Song et al. (2021, Algorithm 4):

    .. math:: \delta = \frac{\tau}{\operatorname{mean}_i\, (\nabla \log p_s)_i^2}
                     = \frac{\tau \sigma_s^2 D}{\lVert \hat{\varepsilon} \rVert^2},

    or, with ``adaptive=False``, the state-independent :math:`\delta = \tau \sigma_s^2` of annealed Langevin
    dynamics (Song & Ermon, 2019), to which the first reduces at high noise, where
    :math:`\lVert \hat{\varepsilon} \rVert^2 \approx D`.

    Accuracy. Unadjusted Langevin is biased by :math:`O(\tau)`: with a fixed :math:`\delta`, on a Gaussian of variance
    :math:`v` its stationary variance is :math:`v / (1 - \delta / 2v)`, at most :math:`v / (1 - \tau / 2)` here since
    :math:`v \geq \sigma_s^2`. The adaptive step depends on the state; on an isotropic Gaussian in :math:`D`
    dimensions its stationary variance is :math:`v (1 + \tau / 2) D / (D - 2)` to leading order in :math:`1/D`. It
    is a rule for images (:math:`D \geq 10^3`), not for a handful of dimensions. The corrector targets the
    marginal :math:`p_s`: this sampler is right when :math:`x_{t_0} \sim p_{t_0}`, e.g. from noise at
    :math:`t_0 = 1`, but it does not sample :math:`p(x \mid x_{t_0})` from a fixed :math:`x_{t_0}` (use
    :class:`Ancestral` for that). No correction is made where :math:`\sigma_s = 0`.
    """

    name = "pc"

    def __init__(
        self,
        denoiser: DenoiserLike,
        *,
        generator: torch.Generator | None = None,
        corrections: int = 1,
        tau: float = 0.1,
        adaptive: bool = True,
    ) -> None:
        super().__init__(denoiser, generator=generator)
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.corrections = positive_int("corrections", corrections, minimum=0)
        self.tau, self.adaptive = float(tau), bool(adaptive)
        self.evaluations_per_step = 1 + self.corrections

    def step(self, x_t: Tensor, t: float, s: float) -> Tensor:
        alpha_t, sigma_t, alpha_s, sigma_s = self.coefficients(t, s)
        x_hat = self.denoiser(x_t, t)
        x = alpha_s * x_hat + sigma_s * epsilon_from_mean(x_t, x_hat, alpha_t, sigma_t)
        if sigma_s == 0:
            return x
        dims = tuple(range(1, x.ndim))
        for _ in range(self.corrections):
            score = score_from_mean(x, self.denoiser(x, s), alpha_s, sigma_s)
            if self.adaptive:
                delta = self.tau / score.square().mean(dims, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            else:
                delta = torch.full((), self.tau * sigma_s**2, dtype=x.dtype, device=x.device)
            x = x + delta * score + torch.sqrt(2 * delta) * self.noise(x)
        return x


SAMPLERS: dict[str, type[Sampler]] = {kind.name: kind for kind in (Ancestral, SDEMultistep, DDIM, Heun, PC)}
"""The samplers by name, as the command line offers them."""

DEFAULT_STEPS: dict[str, int] = {"ancestral": 128, "sde2m": 32, "ddim": 64, "heun": 18, "pc": 64}
"""The default step count of each sampler (``sda sample --steps`` and the posterior methods use these), measured on
1,000 samples of the CIFAR-10 model (FID-1k, KID-1k; ``benchmarks/RESULTS.md``, sample quality). ``sde2m``'s 32 (33
network evaluations), at step 10800: 79.80 and 0.0322, within the noise of the best measured, 36 steps (78.61 and
0.0302; paired KID difference 0.0020 ± 0.0015), and of 64 (78.67, 0.0328); 18 are worse (83.95, 0.0379). Heun's 18
(37 evaluations, EDM's count for CIFAR-10), at step 8000: within the noise of 32 (90.54 and 0.0465 against 90.91
and 0.0476 from :data:`START_RATIO`); 9 are worse (105.37 and 0.0583 from the schedule's end)."""


def make_sampler(
    name: str, denoiser: DenoiserLike, *, generator: torch.Generator | None = None, **options: object
) -> Sampler:
    """The sampler called ``name`` on ``denoiser``; ``options`` are its own (``corrections``, ``tau``, ``adaptive``
    for ``pc``)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    try:
        return SAMPLERS[name](denoiser, generator=generator, **options)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"sampler {name!r} takes no option among {sorted(options)}") from None
