r"""Noise schedules of the perturbation kernel.

A schedule maps continuous time :math:`t \in [0, 1]` to the coefficients of

.. math:: x_t = \alpha_t x + \sigma_t \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I),

with a signal-to-noise ratio :math:`\alpha_t / \sigma_t` that falls with :math:`t`. Every schedule
also inverts the noise ratio :math:`\rho = \sigma_t / \alpha_t \mapsto t`, which is how a Gaussian
observation :math:`y = x + \sigma_y n` is matched to the time :math:`t^*` whose kernel it follows
(:math:`\sigma_{t^*} / \alpha_{t^*} = \sigma_y`).

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023 (cosine VP schedule).
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021 (VE and VP SDEs).
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (linear betas).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022 (a discrete
    model's noise levels as a continuous schedule, interpolated in log rho: their appendix C.3.4 and k-diffusion).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["CosineSchedule", "DiscreteSchedule", "LinearSchedule", "Schedule", "VESchedule", "make_schedule"]


class Schedule:
    """A map :math:`t \\mapsto (\\alpha_t, \\sigma_t)` and its inverse in the noise ratio."""

    name: str = ""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def time_of_ratio(self, ratio: Tensor) -> Tensor:
        """The time :math:`t` at which :math:`\\sigma_t / \\alpha_t = \\rho`."""
        raise NotImplementedError

    def ratio(self, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha

    def ratio_range(self) -> tuple[float, float]:
        """The smallest and largest noise ratio the schedule reaches on :math:`[0, 1]`."""
        ends = self.ratio(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class CosineSchedule(Schedule):
    r"""The variance-preserving cosine schedule of SDA (Rozet & Louppe, 2023).

    .. math:: \alpha_t = \cos(\arccos(\sqrt{\eta})\, t)^2, \qquad
              \sigma_t = \sqrt{1 - \alpha_t^2 + \eta^2}.

    Inverse: from :math:`\sigma^2 = \rho^2 \alpha^2` follows
    :math:`\alpha = \sqrt{(1 + \eta^2) / (1 + \rho^2)}` and
    :math:`t = \arccos(\sqrt{\alpha}) / \arccos(\sqrt{\eta})`.
    """

    name = "cosine"

    def __init__(self, eta: float = 1e-3) -> None:
        self.eta = eta
        self.theta = math.acos(math.sqrt(eta))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        cos = torch.cos(self.theta * t)
        alpha = cos**2
        # 1 - cos^4 = sin^2 (1 + cos^2): no cancellation at small t in float32
        sigma = torch.sqrt(torch.sin(self.theta * t) ** 2 * (1 + cos**2) + self.eta**2)
        return alpha, sigma

    def time_of_ratio(self, ratio: Tensor) -> Tensor:
        alpha = torch.sqrt((1 + self.eta**2) / (1 + ratio**2))
        return torch.acos(torch.sqrt(alpha.clamp(max=1.0))) / self.theta

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eta": self.eta}


class VESchedule(Schedule):
    r"""The variance-exploding schedule of Song et al. (2021).

    .. math:: \alpha_t = 1, \qquad \sigma_t = \sigma_{\min} (\sigma_{\max} / \sigma_{\min})^t.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1e2) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.log_span = math.log(sigma_max / sigma_min)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * torch.exp(self.log_span * t)
        return torch.ones_like(t), sigma

    def time_of_ratio(self, ratio: Tensor) -> Tensor:
        return torch.log(ratio / self.sigma_min) / self.log_span

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class LinearSchedule(Schedule):
    r"""The linear-beta variance-preserving schedule of DDPM (Ho et al., 2020), in continuous time.

    .. math:: \beta(t) = \beta_0 + t(\beta_1 - \beta_0), \qquad
              \alpha_t = \exp\!\Big(-\tfrac12 \int_0^t \beta\Big), \qquad
              \sigma_t = \sqrt{1 - \alpha_t^2 + \eta^2}.

    Inverse: :math:`-2 \log \alpha = \beta_0 t + \tfrac12 (\beta_1 - \beta_0) t^2` is a quadratic in
    :math:`t`. A small :math:`\eta` keeps :math:`\sigma_0 > 0`, as in the cosine schedule.
    """

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eta: float = 1e-3) -> None:
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.eta = eta

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        alpha = torch.exp(-0.5 * integral)
        return alpha, torch.sqrt(1 - alpha**2 + self.eta**2)

    def time_of_ratio(self, ratio: Tensor) -> Tensor:
        alpha = torch.sqrt((1 + self.eta**2) / (1 + ratio**2)).clamp(max=1.0)
        c = 2 * torch.log(alpha)  # a t^2 + b t + c = 0
        a = 0.5 * (self.beta_max - self.beta_min)
        b = self.beta_min
        if a == 0:
            return -c / b
        # the root (-b + sqrt(b^2 - 4ac)) / 2a, written without cancellation
        return -2 * c / (b + torch.sqrt(b**2 - 4 * a * c))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "eta": self.eta}


class DiscreteSchedule(Schedule):
    r"""The variance-preserving schedule of a discrete-time model: ``alphas_cumprod`` :math:`\bar\alpha_k`,
    :math:`k = 0, \dots, T - 1` (a DDPM's training steps), in continuous time.

    Step :math:`k` has the noise ratio :math:`\rho_k = \sqrt{(1 - \bar\alpha_k) / \bar\alpha_k}`. Time
    :math:`t \in [0, 1]` is the fractional step :math:`\kappa = t (T - 1)`, between which :math:`\log \rho` is
    linear, and

    .. math:: \alpha_t = 1 / \sqrt{1 + \rho_t^2}, \qquad \sigma_t = \rho_t \alpha_t,

    so that at :math:`t = k / (T - 1)`, :math:`\alpha_t = \sqrt{\bar\alpha_k}` and :math:`\sigma_t =
    \sqrt{1 - \bar\alpha_k}`: the model's own kernel :math:`x_k = \sqrt{\bar\alpha_k} x +
    \sqrt{1 - \bar\alpha_k} \varepsilon`. Its range is :math:`[\rho_0, \rho_{T-1}]`; the inverse clamps to it.
    """

    name = "discrete"

    def __init__(self, alphas_cumprod: list[float] | Tensor) -> None:
        bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if bar.numel() < 2 or not bool(((bar > 0) & (bar < 1)).all()):
            raise ValueError("alphas_cumprod needs at least two values, each strictly between 0 and 1")
        self.alphas_cumprod = bar
        self.log_ratios = 0.5 * torch.log((1 - bar) / bar)
        r""":math:`\log \rho_k`, increasing in :math:`k`."""
        if not bool((self.log_ratios.diff() > 0).all()):
            raise ValueError("alphas_cumprod must decrease strictly: each step adds noise")

    @property
    def steps(self) -> int:
        """:math:`T`, the number of the model's own noise levels."""
        return self.log_ratios.numel()

    def log_ratio_at(self, index: Tensor) -> Tensor:
        r""":math:`\log \rho` at the fractional steps ``index`` in :math:`[0, T - 1]`, linear between steps."""
        table = self.log_ratios.to(index.device)
        kappa = index.double().clamp(0, self.steps - 1)
        low = kappa.floor().clamp(max=self.steps - 2)
        fraction = kappa - low
        low = low.long()
        return (table[low] * (1 - fraction) + table[low + 1] * fraction).to(index.dtype)

    def index_of_log_ratio(self, log_ratio: Tensor) -> Tensor:
        r"""The fractional step whose :math:`\log \rho` is ``log_ratio`` (clamped to the model's range), float64."""
        table = self.log_ratios.to(log_ratio.device)
        value = log_ratio.double().clamp(float(table[0]), float(table[-1]))
        high = torch.searchsorted(table, value).clamp(1, self.steps - 1)
        low = high - 1
        return low + (value - table[low]) / (table[high] - table[low])

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        rho = torch.exp(self.log_ratio_at(t * (self.steps - 1)))
        alpha = torch.rsqrt(1 + rho**2)
        return alpha, rho * alpha

    def time_of_ratio(self, ratio: Tensor) -> Tensor:
        return (self.index_of_log_ratio(torch.log(ratio)) / (self.steps - 1)).to(ratio.dtype)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alphas_cumprod": self.alphas_cumprod.tolist()}


_SCHEDULES: dict[str, type[Schedule]] = {
    "cosine": CosineSchedule,
    "ve": VESchedule,
    "linear": LinearSchedule,
    "discrete": DiscreteSchedule,
}


def make_schedule(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from its :meth:`Schedule.config`."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(_SCHEDULES)}")
    return _SCHEDULES[name](**options)
