r"""The denoiser against closed form: for Gaussian data the optimal network output, the training target and the
minimum of the training loss are known exactly.

For :math:`x \sim \mathcal{N}(\mu, \Sigma)` and :math:`z = x + \rho\,\varepsilon` (the scaled input
:math:`x_t / \alpha_t`), the posterior is Gaussian:

.. math:: \mathbb{E}[x \mid z] = \mu + \Sigma (\Sigma + \rho^2 I)^{-1} (z - \mu), \qquad
          \operatorname{Cov}[x \mid z] = (\Sigma^{-1} + I / \rho^2)^{-1},

and, as :math:`\varepsilon = (z - x) / \rho`,
:math:`\operatorname{Cov}[\varepsilon \mid z] = \operatorname{Cov}[x \mid z] / \rho^2`.

The coefficients below are written out from the docstring of ``sda_cli/denoiser.py`` (never taken from the module):
:math:`c_\text{noise} = \tfrac14 \log\rho`; ``edm`` (:math:`\sigma_d = 0.5`) and ``v`` (:math:`\sigma_d = 1`):
:math:`c_\text{in} = 1/\sqrt{\rho^2+\sigma_d^2}`, :math:`c_\text{skip} = \sigma_d^2/(\rho^2+\sigma_d^2)`,
:math:`c_\text{out} = \rho\sigma_d/\sqrt{\rho^2+\sigma_d^2}`; ``eps``: :math:`\hat{x} = z - \rho F`, with the input
scaled as ``v``'s (:math:`c_\text{in} = 1/\sqrt{\rho^2+1}`, i.e. the network sees :math:`x_t / \sqrt{\alpha_t^2 +
\sigma_t^2}`; the docstring does not state it).

A backbone that outputs the optimal :math:`F^*` (computed from the exact posterior mean of ``tests/oracle.py``)
must make ``Denoiser.forward`` return the exact posterior mean, and its expected loss must be the closed-form
minimum: ``eps``: :math:`\operatorname{tr}\operatorname{Cov}[\varepsilon \mid z] / D`; ``edm`` and ``v``:
:math:`\operatorname{tr}\operatorname{Cov}[x \mid z] / (D c_\text{out}^2)`.
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import GaussianDenoiser, random_gaussian
from torch import Tensor, nn

from sda_cli.denoiser import Denoiser, DenoiserConfig
from sda_cli.schedule import CosineSchedule, LinearSchedule, Schedule, VESchedule
from sda_cli.unet import UNet, UNetConfig

F64 = torch.float64
SHAPE = (2, 4, 4)  # C, H, W
DIM = math.prod(SHAPE)
PARAMETRISATIONS = ["edm", "v", "eps", "x"]
SIGMA_DATA = {"edm": 0.5, "v": 1.0, "eps": 1.0, "x": 1.0}  # eps, x: the input scaling only


class RatioSchedule(Schedule):
    """:math:`\\alpha = 1`, :math:`\\sigma = t`: makes the oracle a function of :math:`(z, \\rho)`."""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), t


def coefficients(parametrisation: str, rho: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:math:`(c_\\text{in}, c_\\text{skip}, c_\\text{out})` as the module docstring states them."""
    sd = SIGMA_DATA[parametrisation]
    c_in = 1 / torch.sqrt(rho**2 + sd**2)
    if parametrisation == "eps":  # x_hat = z - rho F
        return c_in, torch.ones_like(rho), -rho
    if parametrisation == "x":  # x_hat = F
        return c_in, torch.zeros_like(rho), torch.ones_like(rho)
    return c_in, sd**2 / (rho**2 + sd**2), rho * sd / torch.sqrt(rho**2 + sd**2)


def column(values: Tensor) -> Tensor:
    """Per-image values ``(B,)`` as ``(B, 1, 1, 1)``."""
    return values.reshape(-1, 1, 1, 1)


def ratio(schedule: Schedule, t: Tensor) -> Tensor:
    """:math:`\\rho = \\sigma_t / \\alpha_t` in float64, per image ``(B,)``."""
    alpha, sigma = schedule.alpha_sigma(t.to(F64))
    return sigma / alpha


class OptimalBackbone(nn.Module):
    """:math:`F^*(c_\\text{in} z, c_\\text{noise})`, the output whose :math:`\\hat{x}` is
    :math:`\\mathbb{E}[x \\mid z]`.

    It reads :math:`\\rho` back from :math:`c_\\text{noise}` and :math:`z` from :math:`c_\\text{in} z`: a denoiser
    that scales the input or encodes the noise level otherwise than documented gets a wrong :math:`\\hat{x}`.
    """

    def __init__(self, gaussian: GaussianDenoiser, parametrisation: str, scale: float = 1.0) -> None:
        super().__init__()
        self.posterior_mean = GaussianDenoiser(gaussian.mean, gaussian.cov, RatioSchedule())
        self.parametrisation = parametrisation
        self.scale = scale
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, z_in: Tensor, c_noise: Tensor) -> Tensor:
        self.calls.append((tuple(z_in.shape), tuple(c_noise.shape)))
        rho = torch.exp(4 * c_noise.to(F64))
        c_in, c_skip, c_out = (column(c) for c in coefficients(self.parametrisation, rho))
        z = z_in.to(F64) / c_in
        x_hat = self.posterior_mean(z, rho)
        return self.scale * (x_hat - c_skip * z) / c_out


class ConstantBackbone(nn.Module):
    """Outputs a given tensor whatever its input."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, z_in: Tensor, c_noise: Tensor) -> Tensor:
        return self.output


def gaussian(seed: int = 0) -> GaussianDenoiser:
    return random_gaussian(CosineSchedule(), DIM, seed=seed)


def draws(oracle: GaussianDenoiser, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` images :math:`x` of the Gaussian and ``n`` standard normal noises, float64, shape ``(n, C, H, W)``."""
    generator = torch.Generator().manual_seed(seed)
    x = oracle.sample(n, generator).reshape(n, *SHAPE)
    return x, torch.randn(x.shape, generator=generator, dtype=F64)


# ----------------------------------------------------------------------------------------------------------------
# (a) With the optimal network output, x_hat is the exact posterior mean, on every schedule.


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule(), VESchedule()], ids=["cosine", "linear", "ve"])
def test_the_optimal_output_gives_the_exact_posterior_mean(parametrisation: str, schedule: Schedule) -> None:
    data = gaussian()
    oracle = GaussianDenoiser(data.mean, data.cov, schedule)  # the (alpha, sigma) form of E[x | x_t]
    backbone = OptimalBackbone(oracle, parametrisation)
    denoiser = Denoiser(backbone, schedule, DenoiserConfig(parametrisation=parametrisation))
    x, noise = draws(oracle, 16, seed=1)
    times = torch.linspace(0.01, 0.95, 16, dtype=F64)  # one time per image: noise ratios from 1e-3 to over 100
    alpha, sigma = schedule.alpha_sigma(times)
    x_t = column(alpha) * x + column(sigma) * noise
    with torch.no_grad():
        per_image = denoiser(x_t, times)
        scalar = torch.stack([denoiser(x_t[i : i + 1], float(times[i]))[0] for i in range(len(times))])
    expected = oracle(x_t, times)
    # the network output passes through float32 (Denoiser._network): eps multiplies its error by rho
    tolerance = column(1e-5 * (1 + ratio(schedule, times)))
    assert ((per_image - expected).abs() <= tolerance).all(), (per_image - expected).abs().amax(dim=(1, 2, 3))
    assert ((scalar - expected).abs() <= tolerance).all()
    assert backbone.calls[0] == ((16, *SHAPE), (16,))  # c_noise: one scalar per image
    # not trivially true: a denoiser that returned its scaled input z = x_t / alpha_t would fail
    assert float((expected - x_t / column(alpha)).abs().max()) > 0.1


# ----------------------------------------------------------------------------------------------------------------
# (b) The training target is what the docstring says, and the loss is the weighted error of x_hat.


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
def test_the_loss_has_the_documented_target_and_weight(parametrisation: str) -> None:
    schedule = CosineSchedule()
    x, noise = draws(gaussian(), 8, seed=2)
    times = torch.linspace(0.05, 0.9, 8, dtype=F64)
    rho = column(ratio(schedule, times))
    z = x + rho * noise
    output = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    denoiser = Denoiser(ConstantBackbone(output), schedule, DenoiserConfig(parametrisation=parametrisation))
    with torch.no_grad():
        loss = denoiser.loss(x, times, noise)
    output = output.float().to(F64)  # as the network's output reaches the loss
    _, c_skip, c_out = coefficients(parametrisation, rho)
    target = noise if parametrisation == "eps" else (x - c_skip * z) / c_out
    assert loss.shape == (8,)
    torch.testing.assert_close(loss, (output - target).square().mean(dim=(1, 2, 3)), rtol=1e-6, atol=0)
    # the same loss is the error of x_hat = c_skip z + c_out F, weighted by 1/c_out^2 (eps: 1/rho^2)
    x_hat = c_skip * z + c_out * output
    torch.testing.assert_close(loss, ((x_hat - x) / c_out).square().mean(dim=(1, 2, 3)), rtol=1e-6, atol=0)


def test_v_predicts_minus_v_over_the_norm_of_alpha_and_sigma() -> None:
    """``v``'s target is :math:`-(\\alpha_t \\varepsilon - \\sigma_t x)/\\sqrt{\\alpha_t^2 + \\sigma_t^2}`: the
    (negated) v-prediction of Salimans & Ho, exactly so up to the factor :math:`\\sqrt{1 + \\eta^2}` on the cosine
    schedule. Outputting it gives zero loss; outputting :math:`+v` does not."""
    schedule = CosineSchedule()
    x, noise = draws(gaussian(), 8, seed=4)
    times = torch.linspace(0.05, 0.9, 8, dtype=F64)
    alpha, sigma = (column(c) for c in schedule.alpha_sigma(times))
    v = alpha * noise - sigma * x
    config = DenoiserConfig(parametrisation="v")
    with torch.no_grad():
        exact = Denoiser(ConstantBackbone(-v / torch.sqrt(alpha**2 + sigma**2)), schedule, config).loss(x, times, noise)
        plain = Denoiser(ConstantBackbone(-v), schedule, config).loss(x, times, noise)
        opposite = Denoiser(ConstantBackbone(v), schedule, config).loss(x, times, noise)
    assert float(exact.max()) < 1e-12  # float32 rounding of the output only
    assert float(plain.max()) < 1e-10  # sqrt(1 + eta^2) = 1 + 5e-7
    assert float(opposite.min()) > 1.0


# ----------------------------------------------------------------------------------------------------------------
# (c) The expected loss at F* is the closed-form minimum; any other output costs more.


def minimum_loss(oracle: GaussianDenoiser, parametrisation: str, rho: float) -> float:
    """``eps``: tr Cov[eps | z] / D; ``edm``, ``v``: tr Cov[x | z] / (D c_out^2), with
    Cov[x | z] = (Sigma^-1 + I/rho^2)^-1, computed by inverting matrices (not from eigenvalues)."""
    eye = torch.eye(oracle.dim, dtype=F64)
    posterior = torch.linalg.inv(torch.linalg.inv(oracle.cov) + eye / rho**2)
    if parametrisation == "eps":
        return float(torch.trace(posterior / rho**2)) / oracle.dim
    _, _, c_out = coefficients(parametrisation, torch.tensor(rho, dtype=F64))
    return float(torch.trace(posterior)) / (oracle.dim * float(c_out) ** 2)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("t", [0.1, 0.4, 0.7])
def test_the_expected_loss_at_the_optimum_is_the_closed_form_minimum(parametrisation: str, t: float) -> None:
    schedule, oracle = CosineSchedule(), gaussian()
    config = DenoiserConfig(parametrisation=parametrisation)
    optimal = Denoiser(OptimalBackbone(oracle, parametrisation), schedule, config)
    scaled = Denoiser(OptimalBackbone(oracle, parametrisation, scale=1.1), schedule, config)
    n = 20_000
    x, noise = draws(oracle, n, seed=5)
    with torch.no_grad():
        best, wrong = optimal.loss(x, torch.tensor(t), noise), scaled.loss(x, torch.tensor(t), noise)
    rho = float(ratio(schedule, torch.tensor(t)))
    expected = minimum_loss(oracle, parametrisation, rho)
    error = float(best.std()) / math.sqrt(n)
    assert abs(float(best.mean()) - expected) < 4 * error, (float(best.mean()), expected, error)
    # F* = E[target | z]: scaling it by 1.1 adds 0.01 E|F*|^2 / D on average (the cross term has mean zero)
    z_in = coefficients(parametrisation, torch.tensor(rho, dtype=F64))[0] * (x + rho * noise)
    with torch.no_grad():
        output = OptimalBackbone(oracle, parametrisation)(z_in, torch.full((n,), math.log(rho) / 4, dtype=F64))
    excess = wrong - best
    difference = excess - 0.01 * output.square().mean(dim=(1, 2, 3))
    assert float(excess.mean()) > 10 * float(excess.std()) / math.sqrt(n)
    assert abs(float(difference.mean())) < 4 * float(difference.std()) / math.sqrt(n)


# ----------------------------------------------------------------------------------------------------------------
# Training on Gaussian images drives the loss down to its known minimum.


def stationary_gaussian(side: int, variance: float, length: float, mean: float) -> GaussianDenoiser:
    """Grey ``side`` x ``side`` images with covariance ``variance * exp(-|p - q| / length)`` between pixels."""
    rows, cols = torch.meshgrid(torch.arange(side, dtype=F64), torch.arange(side, dtype=F64), indexing="ij")
    points = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    cov = variance * torch.exp(-torch.cdist(points, points) / length)
    return GaussianDenoiser(torch.full((side * side,), mean, dtype=F64), cov, CosineSchedule())


def test_training_reaches_the_minimum_of_the_loss() -> None:
    """A tiny U-Net trained with Adam at one noise level (rho = 0.5, the default edm parametrisation) on 8x8 grey
    Gaussian images: its mean loss on fresh draws ends within 3% above the closed-form minimum, and not below it
    beyond Monte Carlo error. The data are correlated over 2 pixels, so the untrained network (output 0, which
    already shrinks the input by c_skip) is 45% above the minimum."""
    torch.manual_seed(0)
    side, rho = 8, 0.5
    oracle = stationary_gaussian(side, variance=0.25, length=2.0, mean=0.1)
    schedule = CosineSchedule()
    t = schedule.time_of_ratio(torch.tensor(rho, dtype=F64)).float()
    config = UNetConfig(channels=1, widths=(16, 16), blocks=1, attention_levels=(), groups=4)
    denoiser = Denoiser(UNet(config), schedule, DenoiserConfig(parametrisation="edm"))
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[Tensor, Tensor]:
        x = oracle.sample(n, generator).float().reshape(n, 1, side, side)
        return x, torch.randn(x.shape, generator=generator)

    def mean_loss(n: int = 8192) -> tuple[float, float]:
        x, noise = batch(n)
        with torch.no_grad():
            losses = denoiser.loss(x, t, noise)
        return float(losses.mean()), float(losses.std()) / math.sqrt(n)

    expected = minimum_loss(oracle, "edm", rho)
    initial, _ = mean_loss(4096)
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    for _ in range(200):
        x, noise = batch(64)
        loss = denoiser.loss(x, t, noise).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    final, error = mean_loss()
    assert initial > 1.4 * expected, (initial, expected)
    assert expected - 4 * error < final < 1.03 * expected, (final, expected, error)
