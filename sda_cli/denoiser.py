r"""The denoiser: a backbone and a schedule, seen as :math:`\hat{x}`, :math:`\hat{\varepsilon}` and score.

With :math:`x_t = \alpha_t x + \sigma_t \varepsilon` and the noise ratio :math:`\rho = \sigma_t / \alpha_t`,
the scaled input :math:`z = x_t / \alpha_t = x + \rho\,\varepsilon` depends on the schedule only
through :math:`\rho`. The network is therefore conditioned on :math:`\rho` (through
:math:`c_\text{noise} = \tfrac14 \log \rho`), and one trained model serves every schedule time grid.

Parametrisations of :math:`\hat{x}(x_t, t) \approx \mathbb{E}[x \mid x_t]`:

* ``edm`` (Karras et al., 2022): :math:`\hat{x} = c_\text{skip} z + c_\text{out} F(c_\text{in} z, c_\text{noise})`
  with :math:`c_\text{in} = 1/\sqrt{\rho^2+\sigma_d^2}`, :math:`c_\text{skip} = \sigma_d^2/(\rho^2+\sigma_d^2)`,
  :math:`c_\text{out} = \rho\sigma_d/\sqrt{\rho^2+\sigma_d^2}`, :math:`\sigma_d = 0.5`; loss
  :math:`\lVert F - (x - c_\text{skip} z)/c_\text{out} \rVert^2`, i.e. weight :math:`1/c_\text{out}^2` on the
  :math:`\hat{x}` error.
* ``v`` (Salimans & Ho, 2022): the same with :math:`\sigma_d = 1`; its target
  :math:`(\rho x - \varepsilon)/\sqrt{\rho^2+1}` is, on a variance-preserving schedule, exactly
  :math:`-v` with :math:`v = \alpha_t \varepsilon - \sigma_t x`.
* ``eps`` (Ho et al., 2020): :math:`F` predicts :math:`\varepsilon` from :math:`c_\text{in} z` with
  :math:`c_\text{in} = 1/\sqrt{\rho^2+1}`, and :math:`\hat{x} = z - \rho \hat{\varepsilon}`; loss
  :math:`\lVert F - \varepsilon \rVert^2`.
* ``x``: :math:`F` predicts :math:`x` itself from the same :math:`c_\text{in} z` (:math:`c_\text{skip} = 0`,
  :math:`c_\text{out} = 1`), as DDPMs with ``prediction_type="sample"`` do; loss :math:`\lVert F - x \rVert^2`.

The other two views follow by identity (Vincent, 2011; Song et al., 2021):

.. math:: \hat{\varepsilon} = (x_t - \alpha_t \hat{x}) / \sigma_t, \qquad
          \nabla_{x_t} \log p_t(x_t) = -\hat{\varepsilon} / \sigma_t.

Choice: ``edm`` is the default (the three compared at equal budgets: ``benchmarks/RESULTS.md``,
parametrisation): on the :math:`\hat{x}` error, ``eps`` weighs :math:`1/\rho^2` and ``edm``
:math:`(1 + 4\rho^2)/\rho^2`, so ``edm`` gives more weight to the high noise levels that sampling from pure noise
depends on.

Training noise levels: :math:`\log \rho \sim \mathcal{N}(P_\text{mean}, P_\text{std}^2)` (Karras et al.,
2022), clipped to the schedule's range, mapped to :math:`t` by the schedule's inverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sda_cli.schedule import Schedule

__all__ = [
    "PARAMETRISATIONS",
    "PRECISIONS",
    "Denoiser",
    "DenoiserConfig",
    "JacobianProducts",
    "autocast_dtype",
    "cpu_has_native_bf16",
]

PARAMETRISATIONS = ("edm", "v", "eps", "x")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network for ``precision``, or ``None`` for float32.

    ``auto`` is bf16 where the hardware runs it natively (CUDA with bf16, else fp16; CPUs with AVX-512 BF16 or AMX,
    where a convolution runs about twice as fast), float32 elsewhere (emulated bf16 is slower than float32:
    :func:`cpu_has_native_bf16`). What bf16 changes and saves: ``benchmarks/RESULTS.md``, precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX).

    oneDNN also accepts bf16 on plain AVX-512 by emulating it, which is slower than float32
    (``benchmarks/RESULTS.md``, precision): ``auto`` must not pick it there.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class DenoiserConfig:
    """The parametrisation of :math:`\\hat{x}` and the training distribution of noise levels."""

    parametrisation: str = "edm"
    p_mean: float = -1.2
    p_std: float = 1.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiserConfig:
        config = cls(**data)
        if config.parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {config.parametrisation!r}; expected one of {PARAMETRISATIONS}")
        return config

    @property
    def sigma_data(self) -> float:
        return 0.5 if self.parametrisation == "edm" else 1.0


def _expand(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or a per-image time of shape ``(B,)`` against images ``(B, C, H, W)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class JacobianProducts:
    r"""Products with the Jacobian :math:`J = \partial \hat{x} / \partial x_t` of a denoiser, by autograd.

    The guidance methods need :math:`J^\top v` (:mod:`sda_cli.guidance`): :meth:`mean_and_vjp` gives
    :math:`\hat{x}` and one product in one forward and one backward pass; :meth:`linearise` keeps the forward pass for
    several products at one point. A denoiser that evaluates its network in tiles (:class:`sda_cli.tiles.TiledDenoiser`)
    overrides both to keep memory bounded.
    """

    __call__: Callable[..., Tensor]

    def mean_and_vjp(self, x_t: Tensor, t: float, cotangent: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        r""":math:`\hat{x}(x_t, t)` and :math:`J^\top v` with :math:`v` = ``cotangent(x_hat)``."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x_hat = self(x, t)
            (gradient,) = torch.autograd.grad(x_hat, x, cotangent(x_hat.detach()))
        return x_hat.detach(), gradient

    def linearise(self, x_t: Tensor, t: float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r""":math:`\hat{x}(x_t, t)` and the map :math:`v \mapsto J^\top v`, one forward pass kept for all products."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x_hat = self(x, t)

        def vjp(v: Tensor) -> Tensor:
            (gradient,) = torch.autograd.grad(x_hat, x, v, retain_graph=True)
            return gradient

        return x_hat.detach(), vjp


class Denoiser(JacobianProducts, nn.Module):
    """:math:`\\hat{x}(x_t, t)` from a backbone :math:`F(z, c)` and a schedule."""

    def __init__(
        self,
        backbone: nn.Module,
        schedule: Schedule,
        config: DenoiserConfig | None = None,
        image_size: int = 32,
        inflation: tuple[tuple[float, float], ...] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.config = config or DenoiserConfig()
        self.image_size = image_size
        """The side of the training images: the default size of new samples."""
        self.inflation = inflation
        """``(sigma, factor)`` pairs: the multiplicative inflation of posterior draws (:mod:`sda_cli.inflation`)."""

    def _coefficients(self, rho: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.config.parametrisation == "eps":
            return 1 / torch.sqrt(rho**2 + 1), torch.ones_like(rho), -rho
        if self.config.parametrisation == "x":
            return 1 / torch.sqrt(rho**2 + 1), torch.zeros_like(rho), torch.ones_like(rho)
        sd = self.config.sigma_data
        norm = torch.sqrt(rho**2 + sd**2)
        return 1 / norm, sd**2 / norm**2, rho * sd / norm

    def _network(self, z_in: Tensor, rho: Tensor) -> Tensor:
        c_noise = torch.log(rho.flatten()) / 4
        z_in = z_in.contiguous(memory_format=torch.channels_last)
        precision = getattr(self.backbone, "precision", None)  # the backbone's autocast dtype; None: the caller's
        if precision is None:
            return self.backbone(z_in, c_noise).float()
        with torch.autocast(z_in.device.type, dtype=precision):
            return self.backbone(z_in, c_noise).float()

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """The posterior mean :math:`\\hat{x}(x_t, t)`."""
        alpha, sigma = self.schedule.alpha_sigma(_expand(t, x_t))
        rho = sigma / alpha
        z = x_t / alpha
        c_in, c_skip, c_out = self._coefficients(rho)
        return c_skip * z + c_out * self._network(c_in * z, rho)

    def sample_times(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """Training times: :math:`\\log \\rho \\sim \\mathcal{N}(P_\\text{mean}, P_\\text{std}^2)`, mapped to t."""
        lo, hi = self.schedule.ratio_range()
        device = generator.device if generator is not None else device
        log_rho = self.config.p_mean + self.config.p_std * torch.randn(n, generator=generator, device=device)
        rho = log_rho.exp().clamp(lo * (1 + 1e-4), hi * (1 - 1e-4))
        return self.schedule.time_of_ratio(rho.double()).float().clamp(0.0, 1.0)

    def loss(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The denoising score-matching loss, per image, in the parametrisation's own target space."""
        alpha, sigma = self.schedule.alpha_sigma(_expand(t, x))
        rho = sigma / alpha
        z = x + rho * noise
        c_in, c_skip, c_out = self._coefficients(rho)
        output = self._network(c_in * z, rho)
        target = noise if self.config.parametrisation == "eps" else (x - c_skip * z) / c_out
        return (output - target).square().flatten(1).mean(1)
