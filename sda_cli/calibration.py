r"""Fitting the inflation of posterior draws on clean images: what ``sda calibrate`` and
``benchmarks/calibration.py --fit`` run.

For clean images :math:`x` (model units, :math:`x = 2p - 1`) and each noise level :math:`\sigma` (pixel units,
:math:`\sigma_y = 2 \sigma`), :func:`calibrate` draws the observation :math:`y = x + \sigma_y n` in float, unclipped
(:func:`sda_cli.observe.observe`), so that :math:`p(x \mid y)` is exactly what the model is asked for; then, through
:func:`sda_cli.restore.denoise`, the MMSE estimate :math:`\hat{x}` (``method="mmse"``) and the mean :math:`\bar{x}_K`
and the per-pixel standard deviation :math:`s` (Bessel's correction) of :math:`K` raw draws :math:`d_k`
(``method="mean"``, ``inflation=1``). Everything below is a sum over all pixels and images of the four sums of
:class:`Sums`, so the images can come in batches of any size and shape.

For exact posterior draws (:mod:`sda_cli.inflation`)

.. math:: \mathbb{E} \lVert x - d \rVert^2 = 2\, \mathbb{E} \lVert x - \hat{x} \rVert^2, \qquad
          \mathbb{E} \lVert x - \bar{x}_K \rVert^2 = (1 + 1/K)\, \mathbb{E}[s^2],

which give the two ratios of :class:`Ratios`, 2 and 1 for exact draws. The average squared error of the draws
follows from their mean and spread, :math:`\frac1K \sum_k \lVert x - d_k \rVert^2 = \lVert x - \bar{x}_K \rVert^2 +
\frac{K - 1}{K} s^2` summed over pixels, and so does their spread about the MMSE estimate,
:math:`\frac1K \sum_k \lVert d_k - \hat{x} \rVert^2 = \lVert \bar{x}_K - \hat{x} \rVert^2 + \frac{K - 1}{K} s^2`.
The factor of multiplicative inflation (Anderson & Anderson, 1999) is

.. math:: \lambda = \left( \frac{\sum \lVert x - \hat{x} \rVert^2}
          {\frac1K \sum_k \sum \lVert d_k - \hat{x} \rVert^2} \right)^{1/2}
          \qquad (:func:`sda_cli.inflation.fit_factor`),

and the inflated draws :math:`\hat{x} + \lambda (d_k - \hat{x})` have mean :math:`\hat{x} + \lambda (\bar{x}_K -
\hat{x})` and spread :math:`\lambda s`: their ratios follow from the same four sums (:meth:`Sums.ratios`).

:func:`write_calibrated` writes a copy of a checkpoint whose config holds the fitted table ``calibration.inflation``
(a ``[sigma, factor]`` pair per level, read by ``--inflation auto``) and what it was fitted on; the weights are
copied as they are.

Reference:
    Anderson & Anderson, "A Monte Carlo implementation of the nonlinear filtering problem to produce ensemble
    assimilations and forecasts", Monthly Weather Review 127, 1999.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sda_cli.atomic import atomic_path
from sda_cli.checkpoint import read_metadata, update_config
from sda_cli.denoiser import Denoiser
from sda_cli.guidance.matched import PosteriorMean
from sda_cli.inflation import fit_factor
from sda_cli.observe import observe
from sda_cli.restore import check_request, check_sigma, denoise, pixels_per_batch
from sda_cli.seeds import seeded_generator

__all__ = [
    "Calibration",
    "LevelFit",
    "Ratios",
    "Sums",
    "calibrate",
    "check_calibration",
    "fit_level",
    "write_calibrated",
]

METHOD = "mean"
STEPS = PosteriorMean.STEPS
"""The sampler steps calibrations are fitted at by default: those the calibrated methods draw at by default."""
"""The method whose raw draws are measured: K draws of the exact posterior by the reverse SDE, their mean and std."""


@dataclass(frozen=True)
class Ratios:
    """The two calibration ratios over all pixels and images (module docstring)."""

    draw: float
    r""":math:`\mathbb{E} \lVert x - d \rVert^2 / \mathbb{E} \lVert x - \hat{x} \rVert^2`: 2 for exact draws."""
    std: float
    r""":math:`\mathbb{E} \lVert x - \bar{x}_K \rVert^2 / ((1 + 1/K)\, \mathbb{E}[s^2])`: 1 for an honest std map."""


@dataclass
class Sums:
    r"""Sums over pixels and images, in pixel units, from which the fit and the ratios follow (module docstring).

    With :math:`e = x - \hat{x}` the MMSE error and :math:`a = \bar{x}_K - \hat{x}` the offset of the draws' mean:
    ``error`` :math:`\sum e^2`, ``cross`` :math:`\sum e\, a`, ``offset`` :math:`\sum a^2`, ``variance``
    :math:`\sum s^2`.
    """

    error: float = 0.0
    cross: float = 0.0
    offset: float = 0.0
    variance: float = 0.0

    def add(self, x: Tensor, mmse: Tensor, mean: Tensor, std: Tensor) -> None:
        """Add images ``x``, their MMSE estimates, the mean and the standard deviation of their K draws."""
        x, mmse, mean, std = (v.detach().to("cpu", torch.float64) for v in (x, mmse, mean, std))
        e, a = x - mmse, mean - mmse
        self.error += float(e.square().sum())
        self.cross += float((e * a).sum())
        self.offset += float(a.square().sum())
        self.variance += float(std.square().sum())

    def spread(self, samples: int) -> float:
        r""":math:`\frac1K \sum_k \sum \lVert d_k - \hat{x} \rVert^2 = \sum a^2 + \frac{K - 1}{K} \sum s^2`."""
        return self.offset + (samples - 1) / samples * self.variance

    def ratios(self, samples: int, factor: float = 1.0) -> Ratios:
        r"""The ratios of the draws inflated by ``factor`` about :math:`\hat{x}` (1: the raw draws): their mean's
        error is :math:`\sum (e - \lambda a)^2` and their spread :math:`\lambda s`."""
        mean_error = self.error - 2 * factor * self.cross + factor**2 * self.offset
        draw_error = mean_error + factor**2 * (samples - 1) / samples * self.variance
        return Ratios(draw_error / self.error, mean_error / ((1 + 1 / samples) * factor**2 * self.variance))


@dataclass(frozen=True)
class LevelFit:
    """The fit at one noise level: the factor, and the ratios of the raw and of the inflated draws."""

    sigma: float
    """Pixel units."""
    factor: float
    """:math:`\\lambda`, by which ``--inflation auto`` moves the draws away from the MMSE estimate."""
    raw: Ratios
    inflated: Ratios


def fit_level(sigma: float, sums: Sums, samples: int) -> LevelFit:
    """The inflation factor at ``sigma`` from the sums over K = ``samples`` raw draws, and the ratios before and
    after it (:func:`sda_cli.inflation.fit_factor` of the MMSE error and the draws' spread about the MMSE estimate)."""
    factor = fit_factor(sums.error, sums.spread(samples))
    return LevelFit(float(sigma), factor, sums.ratios(samples), sums.ratios(samples, factor))


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured: a fit per noise level and what they were fitted on."""

    levels: tuple[LevelFit, ...]
    count: int
    """Images."""
    samples: int
    """Draws per image, K."""
    steps: int
    seed: int

    @property
    def table(self) -> list[list[float]]:
        """``calibration.inflation``: ``[sigma, factor]`` pairs, the factor to 4 decimals."""
        return [[level.sigma, round(level.factor, 4)] for level in self.levels]

    def section(self, fitted_on: str) -> dict[str, Any]:
        """The config section ``calibration``: the table and a note of what it was fitted on."""
        return {
            "inflation": self.table,
            "fitted_on": fitted_on,
            "count": self.count,
            "sigmas": [level.sigma for level in self.levels],
            "samples": self.samples,
            "steps": self.steps,
            "seed": self.seed,
            "noise": "float white Gaussian, unclipped",
        }


def check_calibration(model: Denoiser, sigmas: Sequence[float], samples: int, steps: int) -> None:
    """Refuse a request before any work (``ValueError``): no noise level, a level the model does not know, fewer
    than 2 draws (the std ratio needs a spread), or steps the sampler does not take."""
    if not sigmas:
        raise ValueError("give at least one noise level to fit the inflation at, such as 0.1")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be at least 2 draws per image (their spread is measured), not {samples!r}")
    check_request(METHOD, samples, steps)
    for sigma in sigmas:
        check_request(METHOD, samples, sigma=sigma)
        check_sigma(model, float(sigma))


def _groups(images: Sequence[Tensor], budget: int) -> list[Tensor]:
    """The images in batches of one shape and at most ``budget`` pixels each (at least one image), in order."""
    shapes: dict[tuple[int, ...], list[Tensor]] = {}
    for image in images:
        shapes.setdefault(tuple(image.shape), []).append(image)
    batches = []
    for shape, same in shapes.items():
        per = max(1, budget // (shape[-2] * shape[-1]))
        batches += [torch.stack(same[i : i + per]) for i in range(0, len(same), per)]
    return batches


def _channels(image: Tensor, channels: int) -> Tensor:
    """A clean image ``(C, H, W)`` with the model's channels: a grey image on an RGB model is repeated (a grey image
    is an RGB image), an RGB image on a grey model refused."""
    if image.ndim != 3:
        raise ValueError(f"images must be (C, H, W) tensors, got shape {tuple(image.shape)}")
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1)
    raise ValueError(
        f"an image has {image.shape[0]} channels but the model {channels}; calibrate a grey model on grey images"
    )


def calibrate(
    model: Denoiser,
    images: Tensor | Sequence[Tensor],
    sigmas: Sequence[float],
    *,
    samples: int = 2,
    steps: int = STEPS,
    seed: int | None = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    r"""Fit the inflation factor of ``model``'s posterior draws at each noise level on clean images (module docstring).

    Args:
        model: a denoiser (:func:`sda_cli.load_model`).
        images: clean images in [0, 1] pixel units, a batch ``(N, C, H, W)`` or a list of ``(C, H, W)`` of any sizes
            (grouped by size); grey images on an RGB model are repeated to RGB. Use images the model was not trained
            on: on its training images the error is smaller and the factor too small.
        sigmas: noise levels in pixel units (:math:`\sigma_y = 2 \sigma`).
        samples: raw draws per image, :math:`K \geq 2`.
        steps: the sampler's steps, those the calibrated draws will be made at (the loss of variance depends on them).
        seed: the seed of the noise and of the draws (their own streams); ``None``: a random one (in the result).
        progress: called after each batch with the images done so far over all levels, and in all.

    Returns:
        The :class:`Calibration`: per level the factor and the ratios of the raw and inflated draws.
    """
    sigmas = [float(sigma) for sigma in sigmas]
    check_calibration(model, sigmas, samples, steps)
    channels = model.backbone.config.channels
    images = [_channels(image, channels) for image in images]
    if not images:
        raise ValueError("no images to calibrate on; give at least one clean image")
    seed = secrets.randbits(32) if seed is None else seed
    device = next(model.parameters()).device
    noise = seeded_generator(seed, "calibrate noise")[0]
    draws = seeded_generator(seed, "calibrate", device)[0]
    batches = _groups(images, pixels_per_batch(samples))
    done, total, levels = 0, len(images) * len(sigmas), []
    for sigma in sigmas:
        sums = Sums()
        for x in batches:
            y = observe(x.float(), sigma, generator=noise)
            mmse, _ = denoise(model, y, sigma, method="mmse")
            mean, std = denoise(
                model, y, sigma, method=METHOD, samples=samples, steps=steps, inflation=1.0, generator=draws
            )
            assert std is not None  # K >= 2
            sums.add(x, mmse, mean, std)
            done += len(x)
            if progress is not None:
                progress(done, total)
        levels.append(fit_level(sigma, sums, samples))
    return Calibration(tuple(levels), len(images), samples, steps, seed)


def write_calibrated(
    source: str | Path, destination: str | Path, calibration: Calibration, *, fitted_on: str | None = None
) -> None:
    """Write a copy of the checkpoint ``source`` at ``destination`` whose config section ``calibration`` holds the
    fitted table and a note of what it was fitted on (``fitted_on``: a description of the images), weights unchanged.

    ``source`` is left as it is unless ``destination`` is the same path; either way the file at ``destination`` is
    replaced atomically (the copy is made and completed beside it, then renamed into place)."""
    source, destination = Path(source), Path(destination)
    read_metadata(source)  # a bad source fails here, before anything is written
    note = fitted_on or f"{calibration.count} clean images"
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)
        update_config(temporary, "calibration", calibration.section(note))
