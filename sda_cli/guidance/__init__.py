r"""Posterior methods: one small class per method, each a :class:`PosteriorMethod` wrapping the denoiser given an
observation :math:`y = A x + \sigma_y n` in model units.

* :class:`MMSE`, :class:`MatchedPosterior` and :class:`PosteriorMean`: the exact posterior of :math:`y = x +
  \sigma_y n` by the matched time (its mean in one evaluation; draws by the reverse SDE; their mean);
* :class:`SDA`: score-based data assimilation, for any differentiable observation operator;
* :class:`MMPS`: moment-matching posterior sampling, the Tweedie covariance solved by GMRES;
* :class:`DPS`: diffusion posterior sampling, ancestral steps down the gradient of the residual's norm;
* :class:`DiffPIR`: a proximal data step on the denoised estimate, no backpropagation through the network;
* :class:`PnP`: plug-and-play half-quadratic splitting (DPIR), one deterministic estimate, no draws;
* :class:`AnnealedLangevin` and :class:`GuidedReverse`: the two student projects' methods, kept as baselines.

:data:`METHODS` is the one registry: the library, the command line (validation and help) and the benchmarks read a
method's name, defaults, options and costs from its class (:mod:`sda_cli.guidance.base`). A new method is one file
here and one line below.
"""

from sda_cli.guidance.base import STEPS_OPTION, Option, PosteriorMethod
from sda_cli.guidance.diffpir import DiffPIR
from sda_cli.guidance.dps import DPS
from sda_cli.guidance.guided import GuidedDenoiser, GuidedReverse
from sda_cli.guidance.langevin import AnnealedLangevin, langevin_levels, level_posterior_score
from sda_cli.guidance.matched import MMSE, MatchedPosterior, PosteriorMean, matched_time
from sda_cli.guidance.mmps import MMPS
from sda_cli.guidance.pnp import PnP
from sda_cli.guidance.sda import SDA, sda_likelihood_score

__all__ = [
    "DPS",
    "METHODS",
    "MMPS",
    "MMSE",
    "SDA",
    "STEPS_OPTION",
    "AnnealedLangevin",
    "DiffPIR",
    "GuidedDenoiser",
    "GuidedReverse",
    "MatchedPosterior",
    "Option",
    "PnP",
    "PosteriorMean",
    "PosteriorMethod",
    "get_method",
    "langevin_levels",
    "level_posterior_score",
    "matched_time",
    "sda_likelihood_score",
]

METHODS: dict[str, type[PosteriorMethod]] = {
    kind.name: kind
    for kind in (MMSE, MatchedPosterior, PosteriorMean, PnP, MMPS, DPS, DiffPIR, SDA, AnnealedLangevin, GuidedReverse)
}
"""Every posterior method by name, in the order `--help` lists them."""


def get_method(name: str) -> type[PosteriorMethod]:
    """The method called ``name``; ``ValueError`` listing the methods for an unknown one."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]
