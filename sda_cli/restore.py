r"""The one pipeline in pixel units: what ``sda denoise``, ``sda restore`` and the Python API call.

From observations :math:`y = A p + \sigma n` in pixel units (files hold :math:`p = (x + 1) / 2`; :math:`A` the
identity for denoising) to the estimate and the per-pixel standard deviation of the draws, in pixel units:

1. units: :math:`2 y - A\mathbf{1} = A x + \sigma_y n` with :math:`\sigma_y = 2 \sigma` (model units are twice pixel
   units; :func:`model_units`);
2. clipping: 8- and 16-bit files hold :math:`\operatorname{clip}(A p + \sigma n)`; their observed pixels at 0 and 1
   are replaced by their expected unclipped values first (:func:`sda_cli.clipping.impute_clipped`);
3. channels: a grey image on an RGB model is made an RGB observation with white noise (:func:`match_channels`);
4. grouping: images with their own noise levels (``--sigma auto``) are processed level by level;
5. the method (:data:`sda_cli.guidance.METHODS`), with its own defaults: :math:`K` draws of the whole image, one noise
   field (the draws have no seams), their mean (or, for ``posterior``, the first) and their spread; draws of the exact
   posterior are inflated about the posterior mean by the model's calibrated factor, or by each image's own from
   Stein's unbiased risk estimate (``inflation="sure"``; :mod:`sda_cli.inflation`);
6. tiling and memory: only the network evaluation inside each step is split, into tiles of large images and chunks
   of many small ones (:class:`sda_cli.tiles.TiledDenoiser`), fewer pixels per call for methods with a backward pass.

:func:`denoise` is :func:`restore` with the identity operator, after checking that each noise level is one the model
knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sda_cli.clipping import impute_clipped
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import PosteriorMethod, get_method, matched_time
from sda_cli.images import to_model, to_pixels
from sda_cli.inflation import inflate, inflation_factor, sure_factors
from sda_cli.operators import Downsample, Identity, LinearOperator, stages
from sda_cli.seeds import seeded_generator
from sda_cli.tiles import BACKWARD_FACTOR, PIXELS_PER_CALL, TiledDenoiser, default_tile, is_local

__all__ = [
    "batch_pixels",
    "check_request",
    "check_sigma",
    "denoise",
    "image_size",
    "match_channels",
    "model_units",
    "parse_inflation",
    "pixels_per_batch",
    "random_stream",
    "restore",
]

CLIPPED = ("auto", "on", "off")
"""How clipped pixels are treated: ``auto`` (imputed in 8- and 16-bit files), ``on`` (in any input), ``off``."""


def match_channels(
    y: Tensor, sigma_y: float, channels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, float, Callable[[Tensor], Tensor]]:
    r"""Fit an observation's channels to the model's: returns :math:`y`, its noise level, and the way back.

    A grey image on an RGB model: with :math:`u = (1, 1, 1) / \sqrt{3}`, the grey observation
    :math:`y = x + \sigma n` repeated in three channels is :math:`x \mathbf{1} + \sqrt{3} \sigma n u`: white noise of
    level :math:`\sqrt{3} \sigma` along :math:`u` and none across it. Adding independent noise of level
    :math:`\sqrt{3} \sigma` across :math:`u` makes the noise white in RGB, so the exact matched-time identity holds
    with :math:`\sigma' = \sqrt{3} \sigma`; the way back averages the channels (axis ``-3``) to grey.
    """
    if y.shape[1] == channels:
        return y, sigma_y, lambda x: x
    if y.shape[1] == 1 and channels == 3:
        level = math.sqrt(3) * sigma_y
        rgb = y.expand(-1, 3, -1, -1)
        device = generator.device if generator is not None else y.device
        extra = level * torch.randn(rgb.shape, generator=generator, device=device).to(y)
        extra = extra - extra.mean(dim=1, keepdim=True)  # the part across u
        return rgb + extra, level, lambda x: x.mean(dim=-3, keepdim=True)
    raise ValueError(
        "the image is RGB but the model is grey (1 channel); convert the image to grey, or pass an RGB model "
        "with --model"
    )


def check_sigma(model: Denoiser, sigma: float) -> None:
    """Refuse a pixel-unit noise level outside the model's range, saying the range in pixel units."""
    try:
        matched_time(model.schedule, 2 * sigma)
    except ValueError:
        low, high = (level / 2 for level in model.schedule.ratio_range())  # model units are twice pixel units
        advice = (
            "noise this weak is below what the model knows: use the image as it is"
            if sigma < low
            else "use a model trained on stronger noise"
        )
        raise ValueError(
            f"sigma {sigma:.4g} is outside this model's noise range [{low:.3g}, {high:.3g}] (in [0, 1] pixel units); "
            f"pass a sigma in that range ({advice})"
        ) from None


def parse_inflation(inflation: float | str) -> float | str:
    """``auto``, ``sure`` or a number in (0, 10) (a string of one is read), else ``ValueError``."""
    if isinstance(inflation, str):
        if inflation.strip().lower() in ("auto", "sure"):
            return inflation.strip().lower()
        try:
            inflation = float(inflation)
        except ValueError:
            pass
    if isinstance(inflation, bool) or not isinstance(inflation, (int, float)) or not 0 < inflation < 10:
        raise ValueError(f"inflation must be auto, sure or a number in (0, 10) such as 1, not {inflation!r}")
    return float(inflation)


def check_request(
    method: str,
    samples: int | None = None,
    steps: int | None = None,
    options: dict[str, float | None] | None = None,
    *,
    sigma: float | Sequence[float] | None = None,
    spread: bool = False,
    denoising: bool = True,
    clipped: str = "auto",
    inflation: float | str = "auto",
) -> tuple[type[PosteriorMethod], int]:
    """Check a request before any work: the method, its draws (at least 2 for a ``spread``), steps and options, the
    noise level (one, or one per image), whether it can take an operator other than the identity (``denoising``
    False), ``clipped`` and ``inflation``. Returns the method's class and the number of draws (its default if none)."""
    kind = get_method(method)
    draws = kind.SAMPLES if samples is None else samples
    kind.check_samples(draws)
    if spread and draws < 2:
        raise ValueError(
            "a standard-deviation map (--std) needs 2 draws or more of a sampling method: pass samples=8 "
            "(--samples 8), with a method such as mean or mmps"
        )
    kind.check_options(steps, options or {})
    for level in [] if sigma is None else [sigma] if isinstance(sigma, (int, float)) else set(sigma):
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level < math.inf:
            raise ValueError(f"sigma must be a finite number >= 0 of [0, 1] pixel units, got {level!r}")
        kind.check_sigma_y(2 * float(level))
    if not denoising and kind.identity_only:
        others = ", ".join(name for name, other in _methods().items() if not other.identity_only)
        raise ValueError(f"method {method} denoises only (y = x + noise); for this operator use one of {others}")
    if clipped not in CLIPPED:
        raise ValueError(f"clipped must be auto, on or off, not {clipped!r}")
    if parse_inflation(inflation) == "sure" and kind.calibrated and draws < 2:  # calibrated methods only denoise
        raise ValueError(
            "inflation sure scales the draws' own spread to the error it estimates: pass samples=2 or more "
            "(--samples 2)"
        )
    return kind, draws


def _methods() -> dict[str, type[PosteriorMethod]]:
    from sda_cli.guidance import METHODS

    return METHODS


def image_size(operator: LinearOperator, height: int, width: int) -> tuple[int, int]:
    """The size of the images behind observations of ``height × width``: each block average or decimation makes them
    ``scale`` times larger on each side; the other operators keep the size."""
    scale = math.prod(stage.scale for stage in stages(operator) if isinstance(stage, Downsample))
    return height * scale, width * scale


def _quantisation_step(clipped: str, bit_depth: int | None) -> float | None:
    """The quantisation step in model units of a file whose pixels at 0 and 1 are clipped, or None (not clipped)."""
    integer = bit_depth in (8, 16)
    if clipped == "off" or (clipped == "auto" and not integer):
        return None
    return 2 / (2 ** int(bit_depth) - 1) if integer else 0.0  # type: ignore[arg-type]


def model_units(
    pixels: Tensor, sigma_y: float, operator: LinearOperator, shape: Sequence[int], step: float | None
) -> Tensor:
    r"""The observation :math:`A x + \sigma_y n` in model units from its pixels :math:`y = A p + \sigma n`.

    With :math:`x = 2 p - 1`, :math:`2 y - A\mathbf{1} = A x + 2 \sigma n`: :math:`A\mathbf{1} = 1` for the identity,
    a blur, a block average and a kernel that sums to 1, so that this is :math:`2 y - 1`; it is the mask itself for a
    mask. Clipped pixels (``step``: the file's quantisation step, :func:`_quantisation_step`) are imputed first at
    observed pixels only (a mask's missing pixels are set to mid-grey for the local mean) and only when
    ``sigma_y > 0``: a noise-free observation of an image in [0, 1] is not clipped. Missing values end at 0.
    """
    y = to_model(pixels)  # the file's values, clipped at -1 and 1
    seen = operator.observed(torch.ones_like(y[:1])) > 0
    if step is not None and sigma_y > 0:
        y = torch.where(seen, impute_clipped(torch.where(seen, y, 0), sigma_y, step=step), y)
    ones = operator(torch.ones((1, *shape), device=y.device))
    if not bool((ones == 1).all()):
        y = y + (1 - ones)
    return operator.observed(y)


def batch_pixels(kind: type[PosteriorMethod]) -> int:
    """The pixels one network call of a method takes: :data:`~sda_cli.tiles.PIXELS_PER_CALL`, a
    :data:`~sda_cli.tiles.BACKWARD_FACTOR`-th of it for methods that keep a graph for backward passes."""
    return PIXELS_PER_CALL // (BACKWARD_FACTOR if kind.backward else 1)


def pixels_per_batch(draws: int, scale: int = 1) -> int:
    """Observation pixels to hand :func:`restore` at once (images of ``scale`` times their observation's side, each
    drawn ``draws`` times): one network call's worth, :data:`~sda_cli.tiles.PIXELS_PER_CALL`, and at least one."""
    return max(1, PIXELS_PER_CALL // (draws * scale**2))


def random_stream(denoising: bool) -> str:
    """The command whose random stream of ``--seed`` :func:`restore` draws from: ``denoise`` for the identity
    (``denoising``), so that ``sda restore`` without an operator gives the numbers of ``sda denoise``, else
    ``restore``."""
    return "denoise" if denoising else "restore"


def resolved_inflation(model: Denoiser, kind: type[PosteriorMethod], inflation: float | str, draws: int) -> float | str:
    """``auto`` made concrete: the model's calibrated table if it holds one; else, for the draws of the exact
    posterior (``calibrated`` methods) with 2 or more of them, each image's own factor from SURE (``sure``); else none.
    Other values are kept."""
    if inflation != "auto" or getattr(model, "inflation", ()):
        return inflation
    return "sure" if kind.calibrated and draws >= 2 else 1.0


def _inflation_factor(model: Denoiser, kind: type[PosteriorMethod], inflation: float | str, sigma: float) -> float:
    """The factor the draws of ``kind`` are inflated by at pixel level ``sigma``: 1 unless they are calibrated."""
    if not kind.calibrated or inflation == "sure":  # sure: a factor per image, from the image (sure_factors)
        return 1.0
    return inflation_factor(getattr(model, "inflation", ()), sigma) if inflation == "auto" else float(inflation)


def _tile_counter(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """The :attr:`TiledDenoiser.on_tiles` callback that reports the tiles evaluated so far, and ``total``."""
    done = 0

    def count(tiles: int) -> None:
        nonlocal done
        done += tiles
        progress(done, total)

    return count


def restore(
    model: Denoiser,
    observation: Tensor,
    sigma: float | Sequence[float],
    operator: LinearOperator | None = None,
    *,
    method: str = "pnp",
    samples: int | None = None,
    steps: int | None = None,
    bit_depth: int | None = None,
    clipped: str = "auto",
    inflation: float | str = "auto",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: float | None,
) -> tuple[Tensor, Tensor | None]:
    r"""Recover images from observations :math:`y = A p + \sigma n` in pixel units: the estimate and the draws'
    standard deviation, at the images' full size (module docstring).

    Args:
        model: a denoiser (:func:`sda_cli.load_model`).
        observation: observations ``(B, C, h, w)`` or one ``(C, h, w)`` in pixel units, at the observation's size
            (``scale`` times smaller than the images for a block average); a mask's missing values are ignored.
        sigma: the noise standard deviation in pixel units, one for all or one per image; 0 for a noise-free
            observation (for the methods that take one).
        operator: :math:`A` (:func:`sda_cli.operators.make_operator`); ``None``: the identity.
        method: a name of :data:`sda_cli.guidance.METHODS`; ``pnp`` gives one deterministic estimate, the sampling
            methods :math:`K` draws of :math:`p(x \mid y)`.
        samples: draws per image :math:`K` (default: the method's own, 1 but for ``mean``); the estimate is their
            mean (``posterior``: the first draw).
        steps: the method's steps (default: the method's own).
        bit_depth: 8 or 16 when the observation comes from an integer file (clipped and quantised), else ``None``.
        clipped: ``auto`` (impute clipped pixels of integer files), ``on`` (of any input) or ``off``.
        inflation: the factor by which calibrated draws (``posterior``, ``mean``) move away from the posterior mean:
            ``auto`` (the model's calibrated factor at this sigma; for a model without a table, ``sure`` with 2
            draws or more, else none), ``sure`` (each image's own factor from Stein's unbiased risk estimate of its
            error, which needs the exact sigma: denoising with 2 draws or more; :func:`sda_cli.inflation.sure_factors`)
            or a number (1: raw draws).
        seed: the seed of the command line's ``--seed`` (``sda denoise``'s stream with no operator, else
            ``sda restore``'s); or pass ``generator``.
        tile: images larger than this are evaluated in overlapping tiles (default: :func:`~sda_cli.tiles.default_tile`).
        progress: called after each network call with the tiles (or small images) evaluated so far and in all.
        options: the method's own options (its ``options``: ``sda_cli.guidance.METHODS[method].options``).

    Returns:
        The estimate ``(B, C, H, W)`` (or ``(C, H, W)``) in pixel units, and the per-pixel standard deviation of the
        draws for :math:`K \geq 2` (``None`` otherwise), both on the model's device.
    """
    operator = operator or Identity()
    single = observation.ndim == 3
    batch = observation[None] if single else observation
    count, colours, height, width = batch.shape
    levels = [float(sigma)] * count if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(levels) != count:
        raise ValueError(f"got {len(levels)} noise levels for {count} images")
    denoising = isinstance(operator, Identity)
    kind, draws = check_request(
        method, samples, steps, options, sigma=levels, denoising=denoising, clipped=clipped, inflation=inflation
    )
    inflation = resolved_inflation(model, kind, parse_inflation(inflation), draws)
    shape = (colours, *image_size(operator, height, width))
    if tuple(operator.out_shape((count, *shape))) != tuple(batch.shape):
        raise ValueError(f"the operator does not give observations of {height}×{width} pixels; check its options")
    device = next(model.parameters()).device
    if generator is None:
        generator, _ = seeded_generator(seed, random_stream(denoising), device)
    side, overlap, grid = default_tile(model, tile)
    denoiser = TiledDenoiser(model, side, overlap, batch_pixels(kind), grid=grid, fit=is_local(model))
    given = {"steps": steps} if steps is not None else {}
    given |= {name: value for name, value in options.items() if value is not None}
    channels = model.backbone.config.channels
    full = (channels, *shape[1:])
    if progress is not None:
        calls = _network_calls(kind, denoiser, operator, full, draws, levels, model, inflation, given)
        denoiser.on_tiles = _tile_counter(progress, calls)

    step = _quantisation_step(clipped, bit_depth)
    estimate = torch.empty((count, *shape), device=device)
    spread = torch.empty_like(estimate) if draws >= 2 else None
    for level in dict.fromkeys(levels):  # in order of first appearance, so the random stream is reproducible
        index = [i for i, value in enumerate(levels) if value == level]
        sigma_y = 2 * level
        y = model_units(batch[index].to(device, torch.float32), sigma_y, operator, shape, step)
        observed, sigma_obs, back = match_channels(y, sigma_y, channels, generator)
        observed = operator.observed(observed)  # the noise match_channels adds is no observation either
        repeated = observed.unsqueeze(0).expand(draws, *observed.shape).reshape(-1, *observed.shape[1:])
        posterior = kind(denoiser, repeated, sigma_obs, operator=operator, shape=full, **given)
        drawn = posterior.sample(generator=generator).reshape(draws, len(index), *full)
        factor = _inflation_factor(model, kind, inflation, level)
        if inflation == "sure" and kind.calibrated:
            t = matched_time(model.schedule, sigma_obs)
            alpha = float(model.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))[0])
            pixels = batch[index].to(device)
            kept = None if step is None else (pixels > 0) & (pixels < 1)  # clipped pixels' noise is not Gaussian
            center, factors = sure_factors(denoiser, observed, sigma_obs, t, alpha, drawn, kept, generator=generator)
            drawn = inflate(drawn, center, factors)
        elif factor != 1.0:
            center = kind(denoiser, observed, sigma_obs, operator=operator, shape=full, **given).mean()
            drawn = inflate(drawn, center, factor)
        drawn = back(drawn)
        estimate[index] = to_pixels(drawn[0] if kind.first_draw else drawn.mean(0))
        if spread is not None:
            spread[index] = drawn.std(0) / 2  # model units are twice pixel units
    if single:
        return estimate[0], None if spread is None else spread[0]
    return estimate, spread


def _network_calls(
    kind: type[PosteriorMethod],
    denoiser: TiledDenoiser,
    operator: LinearOperator,
    shape: tuple[int, ...],
    draws: int,
    levels: list[float],
    model: Denoiser,
    inflation: float | str,
    given: dict[str, float],
) -> int:
    """Tiles (or, for images no larger than a tile, images) that the network evaluates for the whole batch: per group
    of one noise level, the method's passes times its draws, and one more evaluation for inflated draws."""
    tiles = denoiser.tiles_per_image(*shape[1:])
    total = 0
    for level in dict.fromkeys(levels):
        count = levels.count(level)
        probe = operator(torch.zeros((1, *shape)))
        method = kind(denoiser, probe, 2 * level, operator=operator, shape=shape, **given)
        per_call = max(1, denoiser.batch_pixels // (shape[1] * shape[2]))
        one_call = tiles == 1 and draws * count <= per_call
        inflating = _inflation_factor(model, kind, inflation, level) != 1.0
        sure = 0 if inflation != "sure" or not kind.calibrated else 1 if tiles == 1 and count <= per_call else 2
        total += tiles * count * (draws * method.passes(one_call) + int(inflating) + sure)
    return total


def denoise(
    model: Denoiser,
    pixels: Tensor,
    sigma: float | Sequence[float],
    *,
    method: str = "mmse",
    **settings: object,
) -> tuple[Tensor, Tensor | None]:
    r"""Denoise images with white Gaussian noise of level ``sigma``: :func:`restore` with the identity operator, after
    checking that each noise level is one the model knows (:func:`check_sigma`).

    ``pixels``: noisy images ``(B, C, H, W)`` or one ``(C, H, W)`` in [0, 1] pixel units (float files may hold values
    outside); ``sigma``: one level for all or one per image; ``method``: ``mmse`` (the default: the posterior mean in
    one evaluation), ``posterior``, ``mean`` or any method of :data:`sda_cli.guidance.METHODS`; ``settings``: as for
    :func:`restore` (``samples``, ``steps``, ``bit_depth``, ``clipped``, ``inflation``, ``seed``, ``tile``, ...).
    """
    levels = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    for level in set(levels):
        check_sigma(model, level)
    return restore(model, pixels, sigma, None, method=method, **settings)  # type: ignore[arg-type]
