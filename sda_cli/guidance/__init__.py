r"""Posterior methods: one small class per method, each wrapping the denoiser given an observation.

* :class:`MatchedPosterior`: the exact posterior of :math:`y = x + \sigma_y n` by the matched time (mean in one
  evaluation, draws by the reverse SDE);
* :class:`SDA`: score-based data assimilation, for any differentiable observation operator;
* :class:`MMPS`: moment-matching posterior sampling, the Tweedie covariance solved by conjugate gradients;
* :class:`DPS`: diffusion posterior sampling, ancestral steps down the gradient of the residual's norm;
* :class:`DiffPIR`: a proximal data step on the denoised estimate, no backpropagation through the network;
* :class:`PnP`: plug-and-play half-quadratic splitting (DPIR), one deterministic estimate, no draws;
* :class:`AnnealedLangevin` and :class:`GuidedReverse`: the two student projects' methods, kept as baselines.

Every class takes ``(denoiser, y, sigma_y, **options)`` in model units, draws one sample per row of ``y`` with
``sample(generator=...)`` (:class:`PnP`: its one estimate), and says its network evaluations (``nfe``). Defaults live on
each class.
"""

from sda_cli.guidance.diffpir import DiffPIR
from sda_cli.guidance.dps import DPS
from sda_cli.guidance.guided import GuidedDenoiser, GuidedReverse
from sda_cli.guidance.langevin import AnnealedLangevin, langevin_levels, level_posterior_score
from sda_cli.guidance.matched import MatchedPosterior, matched_time
from sda_cli.guidance.mmps import MMPS, linearise
from sda_cli.guidance.pnp import PnP
from sda_cli.guidance.sda import SDA, mean_and_vjp, sda_likelihood_score

__all__ = [
    "DPS",
    "MMPS",
    "SDA",
    "AnnealedLangevin",
    "DiffPIR",
    "GuidedDenoiser",
    "GuidedReverse",
    "MatchedPosterior",
    "PnP",
    "langevin_levels",
    "level_posterior_score",
    "linearise",
    "matched_time",
    "mean_and_vjp",
    "sda_likelihood_score",
]
