r"""Oracle denoisers: the exact posterior mean :math:`\mathbb{E}[x \mid x_t]` for Gaussian data.

For data :math:`x \sim \mathcal{N}(\mu, \Sigma)` in :math:`D` dimensions and the kernel
:math:`x_t = \alpha_t x + \sigma_t \varepsilon`, the pair :math:`(x, x_t)` is jointly Gaussian and

.. math:: \hat{x}(x_t, t) = \mu + \alpha_t \Sigma (\alpha_t^2 \Sigma + \sigma_t^2 I)^{-1} (x_t - \alpha_t \mu).

With :math:`\Sigma = U \Lambda U^\top` this is a gain :math:`\alpha_t \lambda_i / (\alpha_t^2 \lambda_i + \sigma_t^2)`
per eigen-direction, which is how it is computed here (one eigendecomposition, any number of times).

For a mixture :math:`\sum_k w_k \mathcal{N}(\mu_k, \Sigma_k)`, the marginal of :math:`x_t` is
:math:`\sum_k w_k \mathcal{N}(\alpha_t \mu_k, \alpha_t^2 \Sigma_k + \sigma_t^2 I)` and

.. math:: \hat{x}(x_t, t) = \sum_k r_k(x_t)\, \hat{x}_k(x_t, t), \qquad
          r_k(x_t) \propto w_k\, \mathcal{N}(x_t; \alpha_t \mu_k, \alpha_t^2 \Sigma_k + \sigma_t^2 I),

with :math:`\hat{x}_k` the Gaussian formula of component :math:`k`.

Images of any shape ``(B, ...)`` are flattened to vectors of :math:`D` entries; the time may be a float,
a 0-d tensor or a per-image tensor of shape ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import chi2
from torch import Tensor

from sda_cli.denoiser import JacobianProducts
from sda_cli.schedule import Schedule

__all__ = [
    "CountingDenoiser",
    "GaussianDenoiser",
    "MixtureDenoiser",
    "assert_gaussian",
    "coefficients",
    "gaussian_statistics",
    "random_covariance",
    "random_gaussian",
]


def coefficients(schedule: Schedule, t: Tensor | float, x_t: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`(\\alpha_t, \\sigma_t)` as ``(B, 1)`` columns in the dtype of ``x_t``, computed in float64."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
    t = t.expand(x_t.shape[0]) if t.ndim == 0 else t.reshape(-1)
    alpha, sigma = schedule.alpha_sigma(t)
    return alpha.to(x_t.dtype)[:, None], sigma.to(x_t.dtype)[:, None]


def random_covariance(dim: int, generator: torch.Generator, low: float = 0.05, high: float = 1.0) -> Tensor:
    """A non-diagonal covariance with eigenvalues spread log-uniformly in ``[low, high]``, float64."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(math.log10(low), math.log10(high), dim, dtype=torch.float64)
    return (q * eigenvalues) @ q.T


class GaussianDenoiser(JacobianProducts):
    """The exact :math:`\\mathbb{E}[x \\mid x_t]` for :math:`x \\sim \\mathcal{N}(\\mu, \\Sigma)`."""

    def __init__(self, mean: Tensor, cov: Tensor, schedule: Schedule) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.schedule = schedule
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def __call__(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        alpha, sigma = coefficients(self.schedule, t, x_t)
        z = x_t.flatten(1)
        mean, u, lam = (v.to(z) for v in (self.mean, self.eigenvectors, self.eigenvalues))
        gain = alpha * lam / (alpha**2 * lam + sigma**2)
        x_hat = mean + (gain * ((z - alpha * mean) @ u)) @ u.T
        return x_hat.reshape(x_t.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of :math:`x`, shape ``(n, D)``, float64."""
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + (noise * self.eigenvalues.sqrt()) @ self.eigenvectors.T

    def marginal(self, t: float) -> tuple[Tensor, Tensor]:
        """Mean and covariance of :math:`x_t`: :math:`(\\alpha_t \\mu, \\alpha_t^2 \\Sigma + \\sigma_t^2 I)`."""
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return alpha * self.mean, alpha**2 * self.cov + sigma**2 * torch.eye(self.dim, dtype=torch.float64)

    def sample_marginal(self, n: int, t: float, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of :math:`x_t = \\alpha_t x + \\sigma_t \\varepsilon`, shape ``(n, D)``."""
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        x = self.sample(n, generator)
        return alpha * x + sigma * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)

    def posterior(self, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor]:
        """:math:`p(x \\mid y) = \\mathcal{N}(m, S)` for :math:`y = x + \\sigma_y n`:
        :math:`S = (\\Sigma^{-1} + I/\\sigma_y^2)^{-1}`, :math:`m = S(\\Sigma^{-1}\\mu + y/\\sigma_y^2)`.

        ``y`` has shape ``(B, D)``; returns ``m`` of shape ``(B, D)`` and ``S`` of shape ``(D, D)``.
        """
        precision = torch.linalg.inv(self.cov)
        cov = torch.linalg.inv(precision + torch.eye(self.dim, dtype=torch.float64) / sigma_y**2)
        mean = (precision @ self.mean + y.to(torch.float64) / sigma_y**2) @ cov.T
        return mean, cov


class MixtureDenoiser(JacobianProducts):
    """The exact :math:`\\mathbb{E}[x \\mid x_t]` for :math:`x \\sim \\sum_k w_k \\mathcal{N}(\\mu_k, \\Sigma_k)`."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, schedule: Schedule) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)  # (K, D, D)
        self.schedule = schedule
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covs)  # (K, D), (K, D, D)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x_t: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Log responsibilities ``(B, K)`` (unnormalised) and per-component posterior means ``(B, K, D)``."""
        alpha, sigma = coefficients(self.schedule, t, x_t)
        alpha, sigma = alpha[:, :, None], sigma[:, :, None]  # (B, 1, 1)
        z = x_t.flatten(1)[:, None, :]  # (B, 1, D)
        w, mu, u, lam = (v.to(z) for v in (self.weights, self.means, self.eigenvectors, self.eigenvalues))
        coords = torch.einsum("bkd,kde->bke", z - alpha * mu, u)  # residual in each component's eigenbasis
        var = alpha**2 * lam + sigma**2  # (B, K, D)
        log_p = w.log() - 0.5 * (coords**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        means = mu + torch.einsum("bke,kde->bkd", alpha * lam / var * coords, u)
        return log_p, means

    def responsibilities(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """:math:`r_k(x_t)`, shape ``(B, K)``."""
        return torch.softmax(self._components(x_t, t)[0], dim=1)

    def log_prob(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """:math:`\\log p_t(x_t)`, shape ``(B,)``."""
        return torch.logsumexp(self._components(x_t, t)[0], dim=1)

    def __call__(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        log_p, means = self._components(x_t, t)
        x_hat = (torch.softmax(log_p, dim=1)[:, :, None] * means).sum(1)
        return x_hat.reshape(x_t.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws of :math:`x`, shape ``(n, D)``, and their component labels, shape ``(n,)``."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = noise * self.eigenvalues[labels].sqrt()
        return self.means[labels] + torch.einsum("nde,ne->nd", self.eigenvectors[labels], scaled), labels


class CountingDenoiser(JacobianProducts):
    """Wraps a denoiser and counts its calls (network function evaluations)."""

    def __init__(self, denoiser: GaussianDenoiser | MixtureDenoiser) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        self.calls += 1
        return self.denoiser(x_t, t)


def gaussian_statistics(
    samples: Tensor, mean: Tensor, cov: Tensor, level: float = 1e-4
) -> list[tuple[str, float, float, float]]:
    r"""The three statistics of :func:`assert_gaussian`, each as ``(name, value, low, high)``: under the hypothesis each
    falls outside ``[low, high]`` with probability ``level`` (exactly for ``mean`` and ``variance``, approximately for
    ``covariance``)."""
    samples, mean, cov = (v.to(torch.float64) for v in (samples, mean, cov))
    n, d = samples.shape
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (samples - mean).T, upper=False).T
    second = white.T @ white / n - torch.eye(d, dtype=torch.float64)
    cov_mean = d * (d + 1) / 2  # the exact mean and variance of N/2 |S - I|_F^2 (assert_gaussian)
    cov_variance = d * (d + 1) * (n - 1) / n + (2 * d * (d + 1) * (d + 2) + 2 * d) / n
    scale, dof = cov_variance / (2 * cov_mean), 2 * cov_mean**2 / cov_variance
    return [
        ("mean", float(n * white.mean(0).square().sum()), 0.0, float(chi2.ppf(1 - level, d))),
        ("variance", float(white.square().sum()), float(chi2.ppf(level / 2, n * d)), float(chi2.isf(level / 2, n * d))),
        ("covariance", float(n / 2 * second.square().sum()), 0.0, float(scale * chi2.isf(level, dof))),
    ]


def assert_gaussian(samples: Tensor, mean: Tensor, cov: Tensor, level: float = 1e-4, what: str = "samples") -> None:
    r"""Assert that samples ``(N, D)`` are consistent with :math:`\mathcal{N}(\mu, \Sigma)`, each of three checks at
    false-alarm ``level``.

    Whitened, :math:`w = L^{-1}(x - \mu)` with :math:`\Sigma = L L^\top` are i.i.d. :math:`\mathcal{N}(0, I)` under
    the hypothesis. Then (exactly)

    * **mean**: :math:`N \lVert \bar{w} \rVert^2 \sim \chi^2_D`, compared with its :math:`1 - \text{level}`
      quantile;
    * **variance**: :math:`\sum_i \lVert w_i \rVert^2 \sim \chi^2_{ND}` (the trace of the whitened second moment,
      about the true mean), compared with its ``level / 2`` and :math:`1 - \text{level} / 2` quantiles: two-sided,
      so draws that are too narrow fail as surely as draws that are too wide. At N = 300, D = 36 it rejects draws
      scaled by 0.95 or 1.05 about the mean (a variance ratio off by 10%, 7 standard deviations of the statistic);
    * **covariance**: for :math:`\hat{S} = \frac1N \sum w w^\top`,
      :math:`T = \tfrac{N}{2} \lVert \hat{S} - I \rVert_F^2` has mean :math:`D(D+1)/2` and variance
      :math:`D(D+1)(N-1)/N + (2D(D+1)(D+2) + 2D)/N` (exactly, from the fourth moments of the Gaussian), and tends to
      :math:`\chi^2_{D(D+1)/2}` as :math:`N \to \infty`. For N not much larger than D its variance is well above that
      chi-square's (3 times at N = 40, D = 36; 1.25 times at N = 300), and the chi-square quantile is then a false
      alarm 35 times too frequent at level 1e-3 (N = 40) or 3.5 times (N = 300); so T is compared with the quantile of
      the scaled chi-square with T's exact mean and variance (Satterthwaite), which measured 1.1-1.8 times the
      nominal rate at levels 0.1 to 0.001 for N = 40 to 300. It sees a wrong shape of the covariance, but it is
      one-sided in the wrong way for a wrong scale: draws shrunk towards the mean make :math:`\hat{S} - I` smaller
      in the directions where sampling noise made it positive, and at N = 300, D = 36 draws scaled by 0.9 pass it
      (the variance check is there for them).
    """
    messages = {
        "mean": "mean off by {big:.4f} (whitened, max entry); N |mean|^2 = {value:.1f} > chi2_{d} quantile {high:.1f}",
        "variance": "variance off: mean whitened square {ratio:.4f} (1 for exact draws); sum |w|^2 = {value:.1f} "
        "outside the chi2_{nd} interval [{low:.1f}, {high:.1f}]",
        "covariance": "covariance off by {big:.4f} (whitened, max entry); N/2 |S - I|_F^2 = {value:.1f} > "
        "its limit {high:.1f} (mean {dof})",
    }
    samples, mean, cov = (v.to(torch.float64) for v in (samples, mean, cov))
    n, d = samples.shape
    for name, value, low, high in gaussian_statistics(samples, mean, cov, level):
        if low <= value <= high:
            continue
        white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (samples - mean).T, upper=False).T
        big = white.mean(0).abs().max() if name == "mean" else (white.T @ white / n - torch.eye(d)).abs().max()
        detail = messages[name].format(
            big=float(big), value=value, low=low, high=high, d=d, nd=n * d, dof=d * (d + 1) // 2, ratio=value / (n * d)
        )
        raise AssertionError(f"{what}: {detail}")


def random_gaussian(schedule: Schedule, dim: int, seed: int = 0) -> GaussianDenoiser:
    """The oracle of N(mu, Sigma) with a random mean and a random non-diagonal covariance (float64)."""
    generator = torch.Generator().manual_seed(seed)
    cov = random_covariance(dim, generator)
    mean = 0.5 * torch.randn(dim, generator=generator, dtype=torch.float64)
    return GaussianDenoiser(mean, cov, schedule)
