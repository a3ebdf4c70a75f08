r"""Multiplicative inflation of posterior draws, so that their spread matches their error.

A learned denoiser's posterior draws are narrower than its errors: their variance around the posterior-mean
estimate falls short of that estimate's own error, because the sampler's finite steps lose variance
(:math:`O(1/\text{steps})`, measured on the exact denoiser of a Gaussian) and because the network's error adds to
the estimate's error what the draws cannot show. For exact draws

.. math:: \mathbb{E} \lVert x - \text{draw} \rVert^2 = 2\, \mathbb{E} \lVert x - \hat{x} \rVert^2, \qquad
          \mathbb{E} \lVert \text{draw} - \hat{x} \rVert^2 = \mathbb{E} \lVert x - \hat{x} \rVert^2 ,

with :math:`\hat{x}` the posterior mean. Multiplicative inflation (Anderson & Anderson, 1999), the standard remedy of
ensemble data assimilation for ensembles whose spread is smaller than their error, moves each draw away from the
mean by a factor :math:`\lambda \geq 1`,

.. math:: \text{draw}' = \hat{x} + \lambda\, (\text{draw} - \hat{x}), \qquad
          \lambda^2 = \frac{\mathbb{E} \lVert x - \hat{x} \rVert^2}{\mathbb{E} \lVert \text{draw} - \hat{x} \rVert^2},

which restores both identities on the data :math:`\lambda` was fitted on: the draw error is twice the MMSE, and the
standard deviation of :math:`K` draws predicts the error of their mean,
:math:`\mathbb{E} \lVert x - \bar{x}_K \rVert^2 = (1 + 1/K)\, \mathbb{E}[s^2]`. A model's checkpoint holds
:math:`\lambda` at a few noise levels, fitted on images it was neither trained nor evaluated on
(``benchmarks/calibration.py --fit``); between them :math:`\lambda` is interpolated linearly in
:math:`\log \sigma`, and beyond them held at the nearest end.

Reference:
    Anderson & Anderson, "A Monte Carlo implementation of the nonlinear filtering problem to produce ensemble
    assimilations and forecasts", Monthly Weather Review 127, 1999.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor

__all__ = ["fit_factor", "inflate", "inflation_factor"]


def inflation_factor(table: Sequence[Sequence[float]], sigma: float) -> float:
    """:math:`\\lambda` at the pixel noise level ``sigma`` from a table of ``(sigma, factor)`` pairs; 1 if empty."""
    if not table:
        return 1.0
    points = sorted((float(s), float(f)) for s, f in table)
    if sigma <= points[0][0]:
        return points[0][1]
    if sigma >= points[-1][0]:
        return points[-1][1]
    for (s0, f0), (s1, f1) in pairwise(points):
        if s0 <= sigma <= s1:
            w = math.log(sigma / s0) / math.log(s1 / s0)
            return f0 + w * (f1 - f0)
    raise AssertionError("unreachable: sigma lies between the table's ends")


def inflate(draws: Tensor, mean: Tensor, factor: float) -> Tensor:
    """:math:`\\hat{x} + \\lambda (\\text{draw} - \\hat{x})` for draws ``(K, ...)`` around ``mean`` ``(...)``."""
    return draws if factor == 1.0 else mean + factor * (draws - mean)


def fit_factor(mmse_error: float, draw_spread: float) -> float:
    """:math:`\\lambda = (\\mathbb{E}\\lVert x - \\hat{x} \\rVert^2 / \\mathbb{E}\\lVert \\text{draw} - \\hat{x}
    \\rVert^2)^{1/2}`, from sums over the same pixels."""
    if not (mmse_error > 0 and draw_spread > 0):
        raise ValueError("the errors and spreads must be positive")
    return math.sqrt(mmse_error / draw_spread)
