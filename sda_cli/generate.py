"""Sampling new images from the prior: what ``sda sample`` and ``sda_cli.sample`` call.

Pure noise at the noise ratio :math:`\rho = 80` (:func:`sda_cli.sampler.start_time`,
:func:`sda_cli.sampler.prior_noise`), then a reverse-time sampler down to 0 and the final Tweedie step, in batches;
the result in [0, 1] pixel units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sda_cli.denoiser import Denoiser
from sda_cli.images import to_pixels
from sda_cli.sampler import DEFAULT_STEPS, make_sampler, prior_noise, start_time
from sda_cli.seeds import seeded_generator

__all__ = ["DEFAULT_SAMPLER", "sample"]

DEFAULT_SAMPLER = "sde2m"
"""The sampler of ``sda sample``: the reverse-time SDE (:class:`sda_cli.sampler.SDEMultistep`) at its default 32 steps
(33 network evaluations). On 1,000 samples of the CIFAR-10 model at step 10800 (``benchmarks/RESULTS.md``, sample
quality against sampler settings) the best setting measured is the SDE at 36 steps, FID-1k 78.61 and KID-1k 0.0302; 32
steps are within its noise (79.80, 0.0322; paired KID difference 0.0020 ± 0.0015) and the cheapest such; Heun's ODE at
18 steps, the same 37 evaluations as 36, is not (81.62, 0.0342; 0.0040 ± 0.0016 worse). The SDE's gain is not its
discretisation widening the draws: at 64 steps, where that widening is a quarter as large on a Gaussian
(``tests/test_sampler.py``), FID is the same 78.67 and KID, 0.0328, within the noise. The likely reason, not measured
apart: the noise it adds at every step corrects part of the errors an imperfect denoiser made at earlier steps (Karras
et al., 2022, section 4)."""


def sample(
    model: Denoiser,
    n: int,
    *,
    size: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    batch_size: int = 64,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """``n`` new images ``(n, C, size, size)`` in [0, 1] (clamped), ``size`` defaulting to the training size.

    ``seed`` is that of ``sda sample --seed`` (the same numbers as the command line), or pass ``generator``;
    ``progress`` is called with the number of images done after each batch.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    device = next(model.parameters()).device
    if generator is None:
        generator, _ = seeded_generator(seed, "sample", device)
    side = size or model.image_size
    channels = model.backbone.config.channels
    solver = make_sampler(sampler, model, generator=generator)
    count = steps or DEFAULT_STEPS[sampler]
    t_start = start_time(model.schedule)
    chunks = []
    for start in range(0, n, batch_size):
        shape = (min(batch_size, n - start), channels, side, side)
        x = prior_noise(model.schedule, shape, t=t_start, generator=generator, device=device)
        chunks.append(to_pixels(solver(x, t_start, 0.0, count)).clamp(0, 1))
        if progress is not None:
            progress(start + shape[0])
    return torch.cat(chunks)
