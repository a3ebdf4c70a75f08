"""Samplers against closed-form truth: exact denoisers for Gaussian and Gaussian-mixture data.

Monte Carlo checks use :func:`oracle.assert_gaussian` (chi-square tests of the whitened sample mean and
second moment at false-alarm level ``LEVEL``). The step counts of ``ACCURATE`` make each sampler's
discretisation bias small against the Monte Carlo error at ``N`` samples (measured exactly for the
deterministic samplers in ``test_deterministic_convergence_order``).
"""

from __future__ import annotations

import math
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
from oracle import (
    CountingDenoiser,
    GaussianDenoiser,
    MixtureDenoiser,
    assert_gaussian,
    coefficients,
    random_covariance,
    random_gaussian,
)
from scipy.stats import norm
from torch import Tensor, nn

from sda_cli.generate import DEFAULT_SAMPLER
from sda_cli.generate import sample as generate_sample
from sda_cli.sampler import (
    DEFAULT_STEPS,
    PC,
    SAMPLERS,
    epsilon_from_mean,
    make_sampler,
    prior_noise,
    score_from_mean,
    start_time,
    time_grid,
)
from sda_cli.schedule import CosineSchedule, LinearSchedule, Schedule, VESchedule

STOCHASTIC = {"ancestral", "sde2m", "pc"}  # the samplers that draw noise at each step
DIM = 6
N = 8000
LEVEL = 1e-4
F64 = torch.float64

# Steps and options per sampler for the accuracy tests.
ACCURATE: dict[str, tuple[int, dict[str, object]]] = {
    "ancestral": (1024, {}),
    "sde2m": (256, {}),
    "ddim": (1024, {}),
    "heun": (128, {}),
    "pc": (256, {"adaptive": False, "tau": 0.1}),
}


def gaussian(schedule: Schedule) -> GaussianDenoiser:
    return random_gaussian(schedule, DIM)


def mixture(schedule: Schedule) -> MixtureDenoiser:
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64)
    covs = torch.tensor([[[0.05, 0.02], [0.02, 0.04]], [[0.03, -0.01], [-0.01, 0.06]]], dtype=F64)
    return MixtureDenoiser(weights, means, covs, schedule)


def images(x: Tensor) -> Tensor:
    """Vectors ``(B, D)`` as images ``(B, D, 1, 1)``."""
    return x.reshape(x.shape[0], -1, 1, 1)


def sample(
    denoiser: object,
    x: Tensor,
    t_start: float,
    t_stop: float = 0.0,
    steps: int = 64,
    sampler: str = "ddim",
    *,
    generator: torch.Generator | None = None,
    denoise: bool = True,
    **options: object,
) -> Tensor:
    """The sampler called ``sampler`` run from ``t_start`` to ``t_stop``, as the command line runs it."""
    solver = make_sampler(sampler, denoiser, generator=generator, **options)  # type: ignore[arg-type]
    return solver(x, t_start, t_stop, steps, denoise=denoise)


def nfe(sampler: str, steps: int, *, denoise: bool = True, **options: object) -> int:
    return make_sampler(sampler, gaussian(CosineSchedule()), **options).nfe(steps, denoise=denoise)


def alpha_of(schedule: Schedule, t: float) -> float:
    return float(schedule.alpha_sigma(torch.tensor(t, dtype=F64))[0])


# ---------------------------------------------------------------------------------------------------------------
# The oracles themselves


def test_gaussian_oracle_is_the_closed_form_posterior_mean() -> None:
    oracle = gaussian(CosineSchedule())
    generator = torch.Generator().manual_seed(1)
    t = torch.rand(5, generator=generator, dtype=F64)
    x_t = torch.randn(5, DIM, generator=generator, dtype=F64)
    alpha, sigma = oracle.schedule.alpha_sigma(t)
    expected = []
    for a, s, x in zip(alpha, sigma, x_t, strict=True):
        gain = a * oracle.cov @ torch.linalg.inv(a**2 * oracle.cov + s**2 * torch.eye(DIM, dtype=F64))
        expected.append(oracle.mean + gain @ (x - a * oracle.mean))
    torch.testing.assert_close(oracle(images(x_t), t).flatten(1), torch.stack(expected), rtol=1e-12, atol=1e-12)
    # a float or 0-d time broadcasts over the batch
    torch.testing.assert_close(oracle(x_t, float(t[0])), oracle(x_t, t[0].expand(5)), rtol=0, atol=0)


def test_mixture_oracle_satisfies_tweedie() -> None:
    """x_hat = (x_t + sigma^2 grad log p_t(x_t)) / alpha, with the score from autograd of the exact density."""
    oracle = mixture(CosineSchedule())
    generator = torch.Generator().manual_seed(2)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8], dtype=F64)
    x_t = torch.randn(4, 2, generator=generator, dtype=F64).requires_grad_()
    (score,) = torch.autograd.grad(oracle.log_prob(x_t, t).sum(), x_t)
    alpha, sigma = coefficients(oracle.schedule, t, x_t)
    torch.testing.assert_close(oracle(x_t, t), (x_t + sigma**2 * score) / alpha, rtol=1e-10, atol=1e-10)
    # with one component it is the Gaussian oracle
    single = MixtureDenoiser(torch.ones(1), oracle.means[:1], oracle.covs[:1], oracle.schedule)
    plain = GaussianDenoiser(oracle.means[0], oracle.covs[0], oracle.schedule)
    torch.testing.assert_close(single(x_t.detach(), t), plain(x_t.detach(), t), rtol=1e-12, atol=1e-12)


def test_epsilon_and_score_identities() -> None:
    """score(x_t) = -(alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu) for Gaussian data; eps = -sigma score."""
    oracle = gaussian(CosineSchedule())
    t = 0.4
    mean, cov = oracle.marginal(t)
    alpha, sigma = (float(v) for v in oracle.schedule.alpha_sigma(torch.tensor(t, dtype=F64)))
    x_t = oracle.sample_marginal(7, t, torch.Generator().manual_seed(3))
    x_hat = oracle(x_t, t)
    expected = -torch.linalg.solve(cov, (x_t - mean).T).T
    torch.testing.assert_close(score_from_mean(x_t, x_hat, alpha, sigma), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(epsilon_from_mean(x_t, x_hat, alpha, sigma), -sigma * expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# Time grid


@pytest.mark.parametrize("schedule", [CosineSchedule(), VESchedule(), LinearSchedule()], ids=lambda s: s.name)
@pytest.mark.parametrize(("t_start", "t_stop"), [(1.0, 0.0), (0.7, 0.2), (0.05, 0.0)])
def test_time_grid_spacing_and_ends(schedule: Schedule, t_start: float, t_stop: float) -> None:
    steps = 10
    times = time_grid(schedule, t_start, t_stop, steps)
    assert times.dtype == F64 and times.shape == (steps + 1,)
    assert float(times[0]) == t_start and float(times[-1]) == t_stop
    assert bool((times[1:] < times[:-1]).all())
    # Karras et al. spacing: ratio^(1/7) is uniform
    root = schedule.ratio(times) ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff().mean().expand(steps), rtol=1e-8, atol=0)
    # power=inf: log ratio is uniform
    log_ratio = schedule.ratio(time_grid(schedule, t_start, t_stop, steps, power=math.inf)).log()
    torch.testing.assert_close(log_ratio.diff(), log_ratio.diff().mean().expand(steps), rtol=1e-8, atol=0)


@pytest.mark.parametrize(
    ("t_start", "t_stop", "steps"), [(0.5, 0.5, 4), (0.3, 0.6, 4), (1.5, 0.0, 4), (1.0, -0.1, 4), (1.0, 0.0, 0)]
)
def test_time_grid_rejects_bad_arguments(t_start: float, t_stop: float, steps: int) -> None:
    with pytest.raises(ValueError):
        time_grid(CosineSchedule(), t_start, t_stop, steps)


# ---------------------------------------------------------------------------------------------------------------
# Gaussian data: sample mean and covariance against mu and Sigma


def test_accuracy_table_covers_every_sampler() -> None:
    assert set(ACCURATE) == set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_from_noise_matches_gaussian(name: str) -> None:
    oracle = gaussian(CosineSchedule())
    steps, options = ACCURATE[name]
    generator = torch.Generator().manual_seed(10)
    x_1 = prior_noise(oracle.schedule, (N, DIM, 1, 1), generator=generator, dtype=F64)
    x = sample(oracle, x_1, 1.0, 0.0, steps, name, generator=generator, **options)
    assert x.shape == x_1.shape and x.dtype == F64
    assert_gaussian(x.flatten(1), oracle.mean, oracle.cov, LEVEL, what=f"{name} from t=1")


@pytest.mark.parametrize("schedule", [VESchedule(), LinearSchedule()], ids=lambda s: s.name)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_from_exact_marginal_matches_gaussian(name: str, schedule: Schedule) -> None:
    oracle = gaussian(schedule)
    steps, options = ACCURATE[name]
    t_start = 0.6
    generator = torch.Generator().manual_seed(11)
    x_t = images(oracle.sample_marginal(N, t_start, generator))
    x = sample(oracle, x_t, t_start, 0.0, steps // 2, name, generator=generator, **options)
    assert_gaussian(x.flatten(1), oracle.mean, oracle.cov, LEVEL, what=f"{name} from t={t_start}, {schedule.name}")


def output_law(oracle: GaussianDenoiser, name: str, t_start: float, steps: int) -> tuple[Tensor, Tensor]:
    """The exact law of a deterministic sampler's output started from the exact marginal at ``t_start``.

    On Gaussian data the sampler is an affine map x -> A x + b, read off from D + 1 runs.
    """
    points = torch.cat([torch.zeros(1, DIM, dtype=F64), torch.eye(DIM, dtype=F64)])
    out = sample(oracle, images(points), t_start, 0.0, steps, name).flatten(1)
    offset, linear = out[0], (out[1:] - out[0]).T
    mean, cov = oracle.marginal(t_start)
    return linear @ mean + offset, linear @ cov @ linear.T


def whitened_errors(oracle: GaussianDenoiser, mean: Tensor, cov: Tensor) -> tuple[float, float]:
    chol_inv = torch.linalg.inv(torch.linalg.cholesky(oracle.cov))
    mean_error = float((chol_inv @ (mean - oracle.mean)).norm())
    cov_error = float((chol_inv @ cov @ chol_inv.T - torch.eye(DIM, dtype=F64)).abs().max())
    return mean_error, cov_error


@pytest.mark.parametrize("schedule", [CosineSchedule(), VESchedule(), LinearSchedule()], ids=lambda s: s.name)
@pytest.mark.parametrize(("name", "order"), [("ddim", 1), ("heun", 2)])
def test_deterministic_convergence_order(name: str, order: int, schedule: Schedule) -> None:
    """No Monte Carlo: the exact output covariance converges to Sigma at the method's order; the mean is exact."""
    oracle = gaussian(schedule)
    errors = []
    for steps in (64, 128, 256):
        mean_error, cov_error = whitened_errors(oracle, *output_law(oracle, name, 1.0, steps))
        assert mean_error < 1e-9
        errors.append(cov_error)
    rates = [math.log2(a / b) for a, b in pairwise(errors)]
    assert all(abs(rate - order) < 0.2 for rate in rates), (errors, rates)
    # and the step counts of the Monte Carlo tests leave a bias well under its resolution (~0.05 at N = 8000)
    _, cov_error = whitened_errors(oracle, *output_law(oracle, name, 1.0, ACCURATE[name][0]))
    assert cov_error < 0.012


@pytest.mark.parametrize("name", ["ddim", "heun"])
def test_deterministic_samplers_see_the_schedule_only_through_the_noise_ratio(name: str) -> None:
    """Started at the same noise ratio with the same z = x / alpha, every schedule gives the same output."""
    outputs = []
    z = torch.randn(16, DIM, generator=torch.Generator().manual_seed(4), dtype=F64)
    for schedule in (CosineSchedule(), VESchedule(), LinearSchedule()):  # all three have sigma_0 / alpha_0 = 1e-3
        oracle = gaussian(schedule)
        t_start = float(schedule.time_of_ratio(torch.tensor(3.0, dtype=F64)))
        outputs.append(sample(oracle, images(alpha_of(schedule, t_start) * z), t_start, 0.0, 12, name))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# What ``sda sample`` runs: sda_cli.generate.sample with its defaults (sde2m, DEFAULT_STEPS["sde2m"] = 32 steps)


class PixelModel(nn.Module):
    """The exact denoiser of ``channels x side x side`` images whose values are N(mean, cov) in model units, as a
    model ``sda_cli.generate.sample`` takes (a schedule, a training size, a backbone's channel count, parameters
    that say the device); evaluated in float64, returned in the caller's dtype."""

    def __init__(self, oracle: GaussianDenoiser, channels: int, side: int) -> None:
        super().__init__()
        self.oracle, self.schedule, self.image_size = oracle, oracle.schedule, side
        self.anchor = nn.Parameter(torch.zeros(()))
        self.backbone = SimpleNamespace(config=SimpleNamespace(channels=channels))

    def forward(self, x_t: Tensor, t: float) -> Tensor:
        return self.oracle(x_t.double(), t).to(x_t.dtype)


SAMPLE_SHAPE = (3, 2, 2)  # 3 colours, 2 x 2 pixels: D = 12


def sample_oracle() -> GaussianDenoiser:
    """N(mu, Sigma) on 3 x 2 x 2 images in model units: mean 0.2 N(0, 1) per value, eigenvalues 1e-3 to 0.02 (pixel
    standard deviations 0.016 to 0.07): no draw comes within 6 standard deviations of the clamp at [0, 1] pixels."""
    generator = torch.Generator().manual_seed(0)
    dim = math.prod(SAMPLE_SHAPE)
    mean = 0.2 * torch.randn(dim, generator=generator, dtype=F64)
    return GaussianDenoiser(mean, random_covariance(dim, generator, 1e-3, 0.02), CosineSchedule())


def default_sample_draws(n: int) -> Tensor:
    """``n`` images from ``sda_cli.generate.sample`` with every default (the sampler, its steps, the batch size),
    seed 1, back in model units ``(n, D)``; checked to be strictly inside (0, 1) in pixels, so nothing was clamped."""
    pixels = generate_sample(PixelModel(sample_oracle(), SAMPLE_SHAPE[0], SAMPLE_SHAPE[1]), n, seed=1)
    assert pixels.shape == (n, *SAMPLE_SHAPE)
    assert 0 < float(pixels.min()) and float(pixels.max()) < 1
    return (2 * pixels.double() - 1).flatten(1)


def affine_sampler_law(
    oracle: GaussianDenoiser, sampler: str = DEFAULT_SAMPLER, steps: int | None = None
) -> tuple[Tensor, Tensor]:
    """The exact law of ``sampler``'s output (at ``steps``, default its default) from x_s ~ N(0, sigma_s^2 I) at the
    start time s (``start_time``, ``prior_noise``). On Gaussian data a sampler of fixed steps (all but pc's adaptive
    ones) is affine in its start and in the K standard normal draws z_k it makes on the way, x_0 = B x_s + sum_k C_k z_k
    + c, so x_0 ~ N(c, sigma_s^2 B B^T + sum_k C_k C_k^T). One batched run reads off c, B and every C_k: row 0 starts at
    0 with all draws 0, row i at the basis vector e_i, and the row of (draw k, dimension j) gets e_j as its k-th draw
    (the sampler's ``noise`` replaced by these basis vectors; a first run counts the draws)."""
    dim, steps = oracle.dim, steps or DEFAULT_STEPS[sampler]
    start = start_time(oracle.schedule)
    counter = make_sampler(sampler, oracle)  # type: ignore[arg-type]
    draws = 0

    def count(x: Tensor) -> Tensor:
        nonlocal draws
        draws += 1
        return torch.zeros_like(x)

    counter.noise = count  # type: ignore[method-assign]
    counter(torch.zeros(1, *SAMPLE_SHAPE, dtype=F64), start, 0.0, steps)
    rows = 1 + dim * (1 + draws)
    basis = torch.eye(rows, dtype=F64)[:, 1:].reshape(rows, 1 + draws, dim)  # basis[r, k]: row r's k-th input
    solver = make_sampler(sampler, oracle)  # type: ignore[arg-type]
    made = 0

    def draw(x: Tensor) -> Tensor:
        nonlocal made
        made += 1
        return basis[:, made].reshape(x.shape)

    solver.noise = draw  # type: ignore[method-assign]
    out = solver(basis[:, 0].reshape(rows, *SAMPLE_SHAPE), start, 0.0, steps).flatten(1)
    offset, linear = out[0], (out[1:] - out[0]).T
    sigma_s = float(oracle.schedule.alpha_sigma(torch.tensor(start, dtype=F64))[1])
    start_part, noise_part = linear[:, :dim], linear[:, dim:]
    return offset, sigma_s**2 * start_part @ start_part.T + noise_part @ noise_part.T


def test_sda_sample_defaults_draw_their_exact_law() -> None:
    """4000 images of ``sda sample``'s code path with all its defaults pass the chi-square tests (mean, two-sided
    variance, covariance; level 1e-4 each) against the exact law of the default sampler (``affine_sampler_law``).
    This checks the path around the sampler: the start's scale sigma_1, the seeded noise, the batches of 64, the
    units (pixels (x + 1) / 2) and the final Tweedie step; draws scaled by 0.9 or 1.1 about their mean fail (the
    variance statistic resolves 1.3% at N D = 48,000 values). The law itself is not the data's: see the next test."""
    oracle = sample_oracle()
    x = default_sample_draws(4000)
    assert_gaussian(x, *affine_sampler_law(oracle), LEVEL, what=f"sda sample ({DEFAULT_SAMPLER}) against its law")


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the default sampler (sde2m, 32 steps from rho = 80) widens every direction's variance by 29.2-41.3% on "
    "this Gaussian (exact law; 35.9% on average); at 64 steps 5.6-8.7%, at 128 1.3-1.8%, at 256 0.3-0.4%",
)
def test_sda_sample_defaults_draw_the_data_gaussian() -> None:
    """The truth that ``sda sample`` promises: with the exact denoiser of N(mu, Sigma), 4000 images drawn with every
    default follow N(mu, Sigma) (chi-square tests of mean, two-sided variance and covariance at level 1e-4 each).

    They do not: the SDE's 32 steps leave the variance 29.2-41.3% too large in every eigen-direction (exact, from
    ``affine_sampler_law``), far beyond the 1.3% the variance statistic resolves at this size. The data's pixel standard
    deviations are 0.016 to 0.07, where a sampler's error is largest against the signal; Heun's 18 steps, the default
    before, were 15.8-25.4% wide. On 1,000 CIFAR-10 samples the SDE at 32 steps is within the noise of 36 and 64
    (5.6-8.7% wide here) and Heun's 18 are outside the noise of 36 (``benchmarks/RESULTS.md``, sample quality against
    sampler settings): the data chose the default, and this test keeps its cost on a Gaussian in view. Marked as an
    expected failure (strict: it fails the suite once it passes) until the default steps or sampler change; the exact
    law at 128 steps is 1.3-1.8% wide, at 256 steps 0.3-0.4%."""
    oracle = sample_oracle()
    assert_gaussian(default_sample_draws(4000), oracle.mean, oracle.cov, LEVEL, what="sda sample's defaults")


# ---------------------------------------------------------------------------------------------------------------
# Gaussian mixture: the weights of well-separated modes


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_recovers_mixture_weights(name: str) -> None:
    """Components 5 standard deviations apart: the nearest component labels a sample; the fraction per label is
    binomial with standard error sqrt(w (1 - w) / N), and the samples of a label follow that component."""
    oracle = mixture(CosineSchedule())
    steps, options = ACCURATE[name]
    generator = torch.Generator().manual_seed(12)
    x_1 = prior_noise(oracle.schedule, (N, 1, 2, 1), generator=generator, dtype=F64)
    x = sample(oracle, x_1, 1.0, 0.0, steps, name, generator=generator, **options).flatten(1)
    labels = oracle.responsibilities(x, 0.0).argmax(1)
    z = norm.isf(LEVEL / 2)
    for k, weight in enumerate(oracle.weights.tolist()):
        fraction = float((labels == k).double().mean())
        assert abs(fraction - weight) <= z * math.sqrt(weight * (1 - weight) / N), (k, fraction, weight)
        assert_gaussian(x[labels == k], oracle.means[k], oracle.covs[k], LEVEL, what=f"{name}, component {k}")


# ---------------------------------------------------------------------------------------------------------------
# The Langevin corrector


def test_langevin_corrector_with_fixed_step_has_the_predicted_law() -> None:
    """delta = tau sigma^2: x' - m = (I - delta C^{-1})(x - m) + sqrt(2 delta) z on the marginal N(m, C) at t,
    so from x ~ N(m, C0) the covariance after k steps is M^k C0 M^k + 2 delta sum_j M^{2j}, M = I - delta C^{-1}."""
    oracle = gaussian(CosineSchedule())
    t, tau, corrections = 0.3, 0.5, 4
    mean, cov = oracle.marginal(t)
    sigma = float(oracle.schedule.alpha_sigma(torch.tensor(t, dtype=F64))[1])
    delta = tau * sigma**2
    generator = torch.Generator().manual_seed(13)
    start = mean + 1.5 * (oracle.sample_marginal(N, t, generator) - mean)  # over-dispersed: covariance 2.25 C
    x = PC(oracle, generator=generator, corrections=corrections, tau=tau, adaptive=False).run(images(start), [t, t])
    step = torch.eye(DIM, dtype=F64) - delta * torch.linalg.inv(cov)
    expected = 2.25 * cov
    for _ in range(corrections):
        expected = step @ expected @ step + 2 * delta * torch.eye(DIM, dtype=F64)
    assert not torch.allclose(expected, cov, rtol=0.05)  # the law has moved, and not yet to C
    assert_gaussian(x.flatten(1), mean, expected, LEVEL, what="fixed-step Langevin")


def test_langevin_corrector_adaptive_step_fixed_point() -> None:
    """delta = tau D / |score|^2 on an isotropic Gaussian of variance v in D dimensions: with Q = |x - m|^2 / v,
    E[x_i'^2] / v = r - 2 tau + (tau^2 + 2 tau) D E[1/Q], whose fixed point is r = (1 + tau/2) D / (D - 2) when
    Q / r ~ chi2_D. Monte Carlo error: sqrt(2 / (N D)); the next order in 1/D is allowed for by 1/D."""
    dim, n, t, tau = 256, 256, 0.2, 0.2
    oracle = GaussianDenoiser(torch.zeros(dim), 0.3 * torch.eye(dim, dtype=F64), CosineSchedule())
    mean, cov = oracle.marginal(t)
    generator = torch.Generator().manual_seed(14)
    x = PC(oracle, generator=generator, corrections=30, tau=tau).run(oracle.sample_marginal(n, t, generator), [t, t])
    ratio = float((x - mean).square().mean() / cov[0, 0])
    expected = (1 + tau / 2) * dim / (dim - 2)
    assert abs(ratio - expected) <= norm.isf(LEVEL / 2) * math.sqrt(2 / (n * dim)) + 1 / dim, (ratio, expected)


# ---------------------------------------------------------------------------------------------------------------
# Randomness, counting, edge cases


def test_pc_default_from_noise_on_image_like_data() -> None:
    """``sda sample --sampler pc`` at its defaults (64 steps, adaptive corrector, tau 0.1), from noise, on a
    512-dimensional Gaussian with an image-like spectrum (four decades): the samples' variance along the prior's
    eigen-directions, in units of the prior's, averages within [0.95, 1.05] and within [0.85, 1.15] over the weaker
    and the stronger half (the adaptive step's bias, about 1 + tau / 2 in the weak directions)."""
    generator = torch.Generator().manual_seed(42)
    dim, n = 512, 64
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=F64))
    oracle = GaussianDenoiser(torch.zeros(dim), (q * torch.logspace(-4, 0, dim, dtype=F64)) @ q.T, CosineSchedule())
    x_1 = prior_noise(oracle.schedule, (n, 1, dim, 1), generator=generator, dtype=F64)
    x = sample(oracle, x_1, 1.0, 0.0, DEFAULT_STEPS["pc"], "pc", generator=generator).flatten(1)
    whitened = ((x @ oracle.eigenvectors).square() / oracle.eigenvalues).mean(0)
    weak, strong = float(whitened[: dim // 2].mean()), float(whitened[dim // 2 :].mean())
    assert 0.95 <= float(whitened.mean()) <= 1.05 and 0.85 <= min(weak, strong) and max(weak, strong) <= 1.15, (
        float(whitened.mean()),
        weak,
        strong,
    )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_output(name: str) -> None:
    oracle = gaussian(CosineSchedule())
    x_1 = prior_noise(oracle.schedule, (32, DIM, 1, 1), generator=torch.Generator().manual_seed(5), dtype=F64)
    runs = [sample(oracle, x_1, 1.0, 0.0, 8, name, generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], runs[2]) == (name not in STOCHASTIC)
    # unseeded deterministic samplers are reproducible too
    if name not in STOCHASTIC:
        assert torch.equal(sample(oracle, x_1, 1.0, 0.0, 8, name), runs[0])


def test_prior_noise_scale_and_seed() -> None:
    for schedule in (CosineSchedule(), VESchedule()):
        sigma_1 = float(schedule.alpha_sigma(torch.tensor(1.0, dtype=F64))[1])
        x = prior_noise(schedule, (20000, 3), generator=torch.Generator().manual_seed(6), dtype=F64)
        assert x.shape == (20000, 3) and x.dtype == F64
        # the sample standard deviation has relative standard error 1 / sqrt(2 n)
        assert abs(float(x.std()) / sigma_1 - 1) < norm.isf(LEVEL / 2) / math.sqrt(2 * x.numel())
    same = [prior_noise(CosineSchedule(), (4, 4), generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*same) and same[0].dtype == torch.float32


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ancestral", {}),
        ("sde2m", {}),
        ("ddim", {}),
        ("heun", {}),
        ("pc", {}),
        ("pc", {"corrections": 0}),
        ("pc", {"corrections": 3}),
    ],
)
def test_nfe_counts_the_calls(name: str, options: dict[str, object], denoise: bool) -> None:
    for steps in (1, 5):
        oracle = CountingDenoiser(gaussian(CosineSchedule()))
        x = prior_noise(oracle.schedule, (3, DIM, 1, 1), dtype=F64)
        sample(oracle, x, 1.0, 0.0, steps, name, denoise=denoise, **options)
        assert oracle.calls == nfe(name, steps, denoise=denoise, **options)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_noiseless_end_uses_no_evaluation_at_sigma_zero(name: str) -> None:
    """A schedule with sigma_0 = 0: the last step lands on x_hat, Heun's last step is Euler, no final Tweedie step;
    the result is still right."""
    schedule = LinearSchedule(eta=0.0)
    assert schedule.ratio_range()[0] == 0.0
    oracle = CountingDenoiser(gaussian(schedule))
    steps, options = ACCURATE[name]
    generator = torch.Generator().manual_seed(15)
    x_t = images(oracle.denoiser.sample_marginal(N, 0.6, generator))
    x = sample(oracle, x_t, 0.6, 0.0, steps // 2, name, generator=generator, **options)
    grid = time_grid(schedule, 0.6, 0.0, steps // 2)
    assert float(schedule.alpha_sigma(grid[-2])[1]) > 0
    # the last step lands on sigma = 0: Heun's is Euler (one evaluation), pc makes no correction, no Tweedie step
    per_step = make_sampler(name, oracle, **options).evaluations_per_step
    assert oracle.calls == per_step * (len(grid) - 1) - (per_step - 1)
    assert bool(torch.isfinite(x).all())
    assert_gaussian(x.flatten(1), oracle.denoiser.mean, oracle.denoiser.cov, LEVEL, what=f"{name}, sigma_0 = 0")


def test_stopping_early_returns_the_marginal_or_its_denoised_value() -> None:
    """With denoise=False the output at t_stop follows p_{t_stop}; with denoise=True it is x_hat of it."""
    oracle = gaussian(CosineSchedule())
    generator = torch.Generator().manual_seed(16)
    x_t = images(oracle.sample_marginal(N, 0.8, generator))
    x = sample(oracle, x_t, 0.8, 0.4, 512, "ancestral", generator=generator, denoise=False)
    assert_gaussian(x.flatten(1), *oracle.marginal(0.4), LEVEL, what="x at t_stop = 0.4")
    torch.testing.assert_close(
        sample(oracle, x_t, 0.8, 0.4, 16, "heun"), oracle(sample(oracle, x_t, 0.8, 0.4, 16, "heun", denoise=False), 0.4)
    )


def test_float32_in_float32_out() -> None:
    oracle = gaussian(CosineSchedule())
    x = prior_noise(oracle.schedule, (4, DIM, 1, 1))
    for name in SAMPLERS:
        out = sample(oracle, x, 1.0, 0.0, 4, name, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and out.shape == x.shape and bool(torch.isfinite(out).all())


def test_sample_rejects_unknown_sampler_and_options() -> None:
    oracle = gaussian(CosineSchedule())
    x = torch.zeros(2, DIM, 1, 1, dtype=F64)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(oracle, x, 1.0, sampler="euler")
    with pytest.raises(ValueError, match="no option"):
        sample(oracle, x, 1.0, sampler="ddim", tau=0.5)
    with pytest.raises(ValueError, match="no option"):
        make_sampler("heun", oracle, corrections=2)
    with pytest.raises(ValueError, match="corrections"):
        sample(oracle, x, 1.0, sampler="pc", corrections=-1)
    with pytest.raises(ValueError, match="steps"):
        sample(oracle, x, 1.0, steps=0)


class ZeroNetwork(torch.nn.Module):
    """A backbone that outputs zeros: with the EDM parametrisation, x_hat = c_skip z = E[x | x_t] for x ~ N(0, 1/4)."""

    def forward(self, z: Tensor, c_noise: Tensor) -> Tensor:
        return torch.zeros_like(z)


def test_samplers_drive_the_real_denoiser_class() -> None:
    """sda_cli.denoiser.Denoiser in float32, through the same interface: it equals the oracle for N(0, I/4)."""
    from sda_cli.denoiser import Denoiser

    denoiser = Denoiser(ZeroNetwork(), CosineSchedule())
    oracle = GaussianDenoiser(torch.zeros(16), 0.25 * torch.eye(16, dtype=F64), CosineSchedule())
    x_t = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(17))
    for t in (0.05, 0.5, 1.0):
        torch.testing.assert_close(denoiser(x_t, t), oracle(x_t.double(), t).float(), rtol=1e-5, atol=1e-6)
    x_1 = prior_noise(denoiser.schedule, (2000, 1, 4, 4), generator=torch.Generator().manual_seed(18))
    x = sample(denoiser, x_1, 1.0, 0.0, 128, "heun")
    assert x.dtype == torch.float32 and x.shape == x_1.shape
    # variance of 32000 independent values: relative standard error sqrt(2 / 32000) (Heun's bias here: 1%)
    assert abs(float(x.var()) / 0.25 - 1) < norm.isf(LEVEL / 2) * math.sqrt(2 / x.numel())
