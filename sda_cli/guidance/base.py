r"""What every posterior method declares, and the set-up they share.

A posterior method turns a denoiser :math:`\hat{x}(x_t, t) \approx \mathbb{E}[x \mid x_t]` and an observation

.. math:: y = A x + \sigma_y n, \qquad n \sim \mathcal{N}(0, I)

(model units; :math:`A` the identity for denoising) into draws of, or an estimate of, :math:`p(x \mid y)`. Each one
is a subclass of :class:`PosteriorMethod` that declares, as class attributes, the facts the library, the command line
and the benchmarks read: its ``name``, a one-line ``summary``, its default ``STEPS`` and ``SAMPLES``, its
:class:`Option` s with their ranges and help, whether it needs a backward pass through the network (``backward``),
whether it draws samples (``draws``), which observations it takes (``identity_only``, ``noise_free``,
``nonlinear``), whether its draws are inflated by the model's calibration (``calibrated``), and whether its estimate
is one draw rather than their mean (``first_draw``). It writes only ``sample`` (and ``nfe``; ``passes`` where its
vector-Jacobian products cost other than one forward and one backward pass). :data:`sda_cli.guidance.METHODS` is
the one registry of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sda_cli.operators import Identity, LinearOperator, linear_observation
from sda_cli.sampler import DenoiserLike, prior_noise

__all__ = ["STEPS_OPTION", "Option", "PosteriorMethod"]

MAX_STEPS = 10_000
"""The most steps any method takes: far beyond what any converges with, a guard against typos."""


@dataclass(frozen=True)
class Option:
    """One option of a posterior method: its default, its range and what it does. The library checks it; the command
    line shows it (``--name-with-dashes``) with its help."""

    name: str
    default: float | int
    help: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    @property
    def flag(self) -> str:
        """The command line's spelling: ``step_size`` → ``--step-size``."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The range in interval notation, such as ``(0, 2)`` or ``[1, 100]``."""
        low, high = (f"{bound:g}" for bound in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, value: Any) -> float | int:
        """``value`` if it lies in the range (an integer where one is needed), else ``ValueError`` naming the option."""
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            raise ValueError(f"{self.name} must be {kind} in {self.range_text()}, got {value!r}")
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if not (above and below and not math.isnan(value)):
            raise ValueError(f"{self.name} must lie in {self.range_text()}, got {value!r}")
        return int(value) if self.integer else float(value)


STEPS_OPTION = Option("steps", 1, "the method's steps", low=1, high=MAX_STEPS, integer=True)
"""The range of ``steps``, which every method but ``mmse`` takes, each with its own default (``STEPS``)."""


class PosteriorMethod:
    r"""The base of every posterior method: its declared facts (module docstring) and the shared set-up.

    ``PosteriorMethod(denoiser, y, sigma_y, operator=A, shape=(C, H, W), steps=..., **options)`` checks
    :math:`\sigma_y` and every option against its declared range, sets up the observation once
    (:func:`~sda_cli.operators.linear_observation`: ``self.operator``, ``self.y`` with the values :math:`A x` never
    carries set to 0, the images' ``self.shape``, ``self.sigma_y``), and stores each option as an attribute of its
    name. ``sample(generator=...)`` gives one draw (or the estimate) per row of ``y``, shaped ``(B, *shape)``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    STEPS: ClassVar[int | None] = None
    SAMPLES: ClassVar[int] = 1
    options: ClassVar[tuple[Option, ...]] = ()
    backward: ClassVar[bool] = False
    """It keeps the network's graph for vector-Jacobian products: its calls take fewer pixels."""
    draws: ClassVar[bool] = True
    """It draws samples (``samples`` K > 1 and a spread make sense); False for one deterministic estimate."""
    identity_only: ClassVar[bool] = False
    """It needs :math:`A = I`, :math:`y = x + \\sigma_y n` (denoising)."""
    noise_free: ClassVar[bool] = True
    """It takes :math:`\\sigma_y = 0`."""
    nonlinear: ClassVar[bool] = False
    """It takes any differentiable operator, not only a :class:`~sda_cli.operators.LinearOperator`."""
    calibrated: ClassVar[bool] = False
    """Its draws are of the exact posterior; the model's calibrated inflation applies to them (:meth:`mean`)."""
    first_draw: ClassVar[bool] = False
    """Its estimate is the first draw, not the mean of the draws."""

    steps: int
    power: float

    def __init__(
        self,
        denoiser: DenoiserLike,
        y: Tensor,
        sigma_y: float,
        *,
        operator: LinearOperator | Callable[[Tensor], Tensor] | None = None,
        shape: Sequence[int] | None = None,
        steps: int | None = None,
        power: float = 7.0,
        **options: float,
    ) -> None:
        self.check_options(steps, options)
        self.denoiser, self.schedule, self.power = denoiser, denoiser.schedule, float(power)
        if self.STEPS is not None:
            self.steps = self.STEPS if steps is None else int(steps)
        for option in self.options:
            value = options.get(option.name)
            setattr(self, option.name, option.default if value is None else option.check(value))
        self.check_sigma_y(float(sigma_y))
        if self.identity_only and operator is not None and not isinstance(operator, Identity):
            raise ValueError(
                f"method {self.name} denoises only (y = x + noise); for another operator use one of "
                f"{', '.join(_operator_methods())}"
            )
        if operator is None and shape is None:  # denoising: y holds images of any shape, (B, C, H, W) or (B, D)
            self.operator, self.y, self.shape, self.sigma_y = Identity(), y, tuple(y.shape[1:]), float(sigma_y)
        elif operator is None or isinstance(operator, LinearOperator):
            self.operator, self.y, self.shape, self.sigma_y = linear_observation(operator, y, sigma_y, shape)
        elif self.nonlinear:
            self.operator, self.y, self.sigma_y = operator, y, float(sigma_y)
            self.shape = tuple(y.shape[1:]) if shape is None else tuple(int(n) for n in shape)
        else:
            raise TypeError(f"method {self.name} needs a LinearOperator, got {type(operator).__name__}")

    @classmethod
    def check_options(cls, steps: int | None, options: dict[str, Any]) -> None:
        """Refuse options the method does not take and values outside their ranges (before any work is done)."""
        known = {option.name: option for option in cls.options}
        unknown = sorted(name for name, value in options.items() if value is not None and name not in known)
        if steps is not None and cls.STEPS is None:
            unknown = ["steps", *unknown]
        if unknown:
            raise ValueError(f"method {cls.name} takes no option {', '.join(unknown)}; see its options in --help")
        if steps is not None:
            STEPS_OPTION.check(steps)
        for name, value in options.items():
            if value is not None:
                known[name].check(value)

    @classmethod
    def check_sigma_y(cls, sigma_y: float) -> None:
        """Refuse a negative noise level, and a noise-free observation where the method needs noise."""
        if not sigma_y >= 0:
            raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
        if sigma_y == 0 and not cls.noise_free:
            others = [name for name, kind in _registry().items() if kind.noise_free and not kind.identity_only]
            raise ValueError(
                f"method {cls.name} cannot take a noise-free observation (sigma 0): give the noise level, or use one "
                f"of {', '.join(others)}"
            )

    @classmethod
    def check_samples(cls, samples: int) -> None:
        """Refuse a number of draws the method cannot give."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if samples > 1 and not cls.draws:
            raise ValueError(
                f"samples needs a sampling method: {cls.name} is one estimate; use one of "
                f"{', '.join(_sampling_methods(cls.identity_only))}"
            )

    def prior_noise(self, generator: torch.Generator | None = None) -> Tensor:
        r"""The start of sampling from pure noise: :math:`x_1 \sim \mathcal{N}(0, \sigma_1^2 I)`, ``(B, *shape)``."""
        shape = (self.y.shape[0], *self.shape)
        return prior_noise(self.schedule, shape, generator=generator, device=self.y.device, dtype=self.y.dtype)

    def sample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """One draw (or the estimate) per observation, shaped ``(B, *shape)``."""
        raise NotImplementedError

    def mean(self) -> Tensor:
        """The posterior mean the draws are inflated about (methods with ``calibrated``)."""
        raise NotImplementedError(f"method {self.name} has no posterior mean in closed form")

    @property
    def nfe(self) -> int:
        """Network evaluations of one :meth:`sample`."""
        raise NotImplementedError

    def passes(self, one_call: bool) -> int:
        """Network passes over the batch in one :meth:`sample`: with ``backward``, a vector-Jacobian product is one
        pass when the batch fits one call, else a forward pass and a tile-by-tile backward pass."""
        return self.nfe * (2 if self.backward and not one_call else 1)


def _registry() -> dict[str, type[PosteriorMethod]]:
    from sda_cli.guidance import METHODS  # the registry imports every method, and so this module

    return METHODS


def _operator_methods() -> list[str]:
    return [name for name, kind in _registry().items() if not kind.identity_only]


def _sampling_methods(identity: bool) -> list[str]:
    return [name for name, kind in _registry().items() if kind.draws and (identity or not kind.identity_only)]
