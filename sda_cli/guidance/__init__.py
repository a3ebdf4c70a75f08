r"""Posterior methods: one small class per method, each wrapping the denoiser given an observation.

* :class:`MatchedPosterior`: the exact posterior of :math:`y = x + \sigma_y n` by the matched time (mean in one
  evaluation, draws by the reverse SDE);
* :class:`SDA`: score-based data assimilation, for any differentiable observation operator;
* :class:`AnnealedLangevin` and :class:`GuidedReverse`: the two student projects' methods, kept as baselines.

Every class takes ``(denoiser, y, sigma_y, **options)`` in model units, draws one sample per row of ``y`` with
``sample(generator=...)``, and says its network evaluations (``nfe``). Defaults live on each class.
"""

from sda_cli.guidance.guided import GuidedDenoiser, GuidedReverse
from sda_cli.guidance.langevin import AnnealedLangevin, langevin_levels, level_posterior_score
from sda_cli.guidance.matched import MatchedPosterior, matched_time
from sda_cli.guidance.sda import SDA, mean_and_vjp, sda_likelihood_score

__all__ = [
    "SDA",
    "AnnealedLangevin",
    "GuidedDenoiser",
    "GuidedReverse",
    "MatchedPosterior",
    "langevin_levels",
    "level_posterior_score",
    "matched_time",
    "mean_and_vjp",
    "sda_likelihood_score",
]
