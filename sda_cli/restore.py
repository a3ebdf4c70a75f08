r"""The denoising pipeline in pixel units: what ``sda denoise`` and the Python API call.

From noisy pixels :math:`p_y \in [0, 1]` (files hold :math:`p = (x + 1) / 2`) and the noise level ``sigma`` in pixel
units to the estimate and the per-pixel standard deviation of the draws, in pixel units:

1. units: :math:`y = 2 p_y - 1` and :math:`\sigma_y = 2\,\sigma` (model units are twice pixel units);
2. clipping: 8- and 16-bit files hold :math:`\operatorname{clip}(x + \sigma n)`; their pixels at 0 and 1 are
   replaced by their expected unclipped values first (:func:`sda_cli.clipping.impute_clipped`);
3. channels: a grey image on an RGB model is made an RGB observation with white noise (:func:`match_channels`);
4. the method (:data:`METHODS`): ``mmse``, the posterior mean in one evaluation, or :math:`K` draws of a posterior
   method of :mod:`sda_cli.guidance` (``mean`` averages them), with each method's own defaults; draws of the exact
   posterior (``posterior``, ``mean``) are inflated about the posterior mean by the model's calibrated factor
   (:mod:`sda_cli.inflation`), so that their spread matches their error;
5. tiling and memory: the sampler's state is the whole image, one noise field, so that draws have no seams; only
   the network evaluation inside each step is split, into tiles of large images and into chunks of many small ones,
   at most :data:`PIXELS_PER_CALL` pixels per call (:class:`TiledDenoiser`);
6. per-image noise levels (``--sigma auto``): images are grouped by level.

:func:`restore` does the same for observations :math:`y = A x + \sigma n` of a linear operator :math:`A`
(:mod:`sda_cli.operators`: blur, kernel, block average, mask) with the posterior methods of :data:`RESTORE_METHODS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sda_cli.clipping import impute_clipped
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import (
    DPS,
    MMPS,
    SDA,
    AnnealedLangevin,
    DiffPIR,
    GuidedReverse,
    MatchedPosterior,
    PnP,
    matched_time,
)
from sda_cli.inflation import inflate, inflation_factor
from sda_cli.operators import Compose, Downsample, Identity, LinearOperator
from sda_cli.sampler import DenoiserLike
from sda_cli.seeds import seeded_generator
from sda_cli.tiles import map_tiles, map_tiles_vjp, tile_starts

__all__ = [
    "DEFAULT_SAMPLES",
    "METHODS",
    "PIXELS_PER_CALL",
    "RESTORE_CLASSES",
    "RESTORE_METHODS",
    "TiledDenoiser",
    "batch_pixels",
    "check_sigma",
    "default_steps",
    "default_tile",
    "denoise",
    "image_size",
    "match_channels",
    "restore",
]

METHODS: tuple[str, ...] = ("mmse", "posterior", "mean", "langevin", "guided", "sda")
"""``mmse``: the posterior mean; ``posterior``: draws of the exact posterior (:class:`MatchedPosterior`); ``mean``:
their average; ``sda``: :class:`SDA`; ``langevin`` and ``guided``: the baselines."""

DEFAULT_SAMPLES = {"mean": 8}
"""Draws per image when ``samples`` is not given (1 for the other methods)."""

METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "mmse": (),
    "posterior": ("steps",),
    "mean": ("steps",),
    "sda": ("steps", "gamma", "corrections", "tau"),
    "langevin": ("levels", "steps", "step_size"),
    "guided": ("t_start", "strength", "steps"),
}
"""The options each method takes (``steps`` of ``langevin``: per level)."""

PIXELS_PER_CALL = 1 << 16
"""Pixels (N·h·w) per network call: 64 CIFAR images or 16 tiles of 64². Chosen over 2¹⁷ by measurement
(``benchmarks/RESULTS.md``)."""

BACKWARD_FACTOR = 4
"""``sda``'s backward pass holds about 4× the activations of a forward pass: its calls take 1/4 of the pixels."""

TILE = 64
"""Default tile side of a network that sees its whole input (group norm, attention): images larger than this are
evaluated in overlapping tiles."""

LOCAL_TILE = 512
"""Default tile side of a local network (no norm, no attention; ``sda_cli.unet``): a tile gives the output of the
whole image away from its edges, so large tiles with a narrow overlap (1/16 of the side) lose nothing and spend
little on overlaps (``benchmarks/RESULTS.md``, photo model)."""


def default_tile(model: Denoiser, tile: int | None = None) -> tuple[int, int]:
    """The tile side and overlap: a given ``tile`` with 1/8 of it as overlap; with none, :data:`LOCAL_TILE` and 1/16
    of it for a local network, else :data:`TILE` and 1/8 of it."""
    if tile is not None:
        return tile, tile // 8
    config = model.backbone.config
    local = getattr(config, "norm", "group") == "none" and not getattr(config, "attention_levels", (0,))
    return (LOCAL_TILE, LOCAL_TILE // 16) if local else (TILE, TILE // 8)


def default_steps(method: str) -> int | None:
    """The step count ``method`` uses when none is given (``langevin``: per level); ``None`` for ``mmse``."""
    kinds = {"posterior": MatchedPosterior, "mean": MatchedPosterior, "sda": SDA}
    kinds |= {"langevin": AnnealedLangevin, "guided": GuidedReverse}
    return kinds[method].STEPS if method in kinds else None


class TiledDenoiser:
    r"""A denoiser whose network runs on at most ``batch_pixels`` pixels per call.

    Images larger than ``tile`` are evaluated in overlapping tiles blended by a raised-cosine crossfade
    (:func:`sda_cli.tiles.map_tiles`); batches of small images in chunks. The caller's state stays whole, so a
    sampler draws one noise field per image and its draws have no seams: only :math:`\hat{x}` is stitched.
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        tile: int,
        overlap: int,
        batch_pixels: int,
        on_tiles: Callable[[int], None] | None = None,
    ) -> None:
        self.denoiser, self.tile, self.overlap, self.batch_pixels = denoiser, tile, overlap, batch_pixels
        self.schedule = denoiser.schedule
        self.on_tiles = on_tiles
        """Called after each network call with the number of tiles (or small images) it evaluated."""

    def tiles_per_image(self, height: int, width: int) -> int:
        """Tiles in one evaluation of an image of this size (1 when it is not tiled)."""
        return len(tile_starts(height, self.tile, self.overlap)) * len(tile_starts(width, self.tile, self.overlap))

    def _network(self, t: float) -> Callable[[Tensor], Tensor]:
        def network(z: Tensor) -> Tensor:
            out = self.denoiser(z, t)
            if self.on_tiles is not None:
                self.on_tiles(z.shape[0])
            return out

        return network

    def _chunks(self, x: Tensor) -> list[slice]:
        per_call = max(1, self.batch_pixels // (x.shape[-2] * x.shape[-1]))
        return [slice(i, i + per_call) for i in range(0, x.shape[0], per_call)]

    def _small(self, x: Tensor) -> bool:
        return x.shape[-2] <= self.tile and x.shape[-1] <= self.tile

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor:
        network = self._network(t)
        with torch.no_grad():
            if self._small(x_t):
                return torch.cat([network(x_t[part]) for part in self._chunks(x_t)])
            return map_tiles(network, x_t, self.tile, self.overlap, batch_pixels=self.batch_pixels)

    def linearise(self, x_t: Tensor, t: float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r""":math:`\hat{x}` and the map :math:`v \mapsto J^\top v` for several products at one point: the forward
        pass is kept for all of them when the input fits one call, else each product runs tile by tile."""
        if self._small(x_t) and len(self._chunks(x_t)) == 1:
            network = self._network(t)
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                x_hat = network(x)

            def kept(v: Tensor) -> Tensor:
                (gradient,) = torch.autograd.grad(x_hat, x, v, retain_graph=True)
                return gradient

            return x_hat.detach(), kept
        return self(x_t, t), lambda v: self.mean_and_vjp(x_t, t, lambda _: v)[1]

    def mean_and_vjp(self, x_t: Tensor, t: float, cotangent: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        r""":math:`\hat{x}` and :math:`J^\top v`, :math:`v` = ``cotangent(x_hat)``: in one pass when it fits one
        call, else a pass for :math:`\hat{x}` and a second, tile by tile, for the product (memory stays bounded)."""
        network = self._network(t)
        if self._small(x_t) and len(self._chunks(x_t)) == 1:
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                x_hat = network(x)
                (gradient,) = torch.autograd.grad(x_hat, x, cotangent(x_hat.detach()))
            return x_hat.detach(), gradient
        x_hat = self(x_t, t)
        v = cotangent(x_hat)
        if self._small(x_t):
            parts = [map_tiles_vjp(network, x_t[part], v[part], self.tile) for part in self._chunks(x_t)]
            return x_hat, torch.cat(parts)
        return x_hat, map_tiles_vjp(network, x_t, v, self.tile, self.overlap, batch_pixels=self.batch_pixels)


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


def _method(
    method: str, denoiser: DenoiserLike, y: Tensor, sigma_y: float, steps: int | None, options: dict[str, float]
) -> MatchedPosterior | SDA | AnnealedLangevin | GuidedReverse:
    """The posterior method's object for one batch of observations, with its own defaults for what is not given."""
    given = {"steps": steps} if steps is not None else {}
    given |= {name: value for name, value in options.items() if value is not None}
    if method in ("posterior", "mean"):
        return MatchedPosterior(denoiser, y, sigma_y, **given)  # type: ignore[arg-type]
    kind = {"sda": SDA, "langevin": AnnealedLangevin, "guided": GuidedReverse}[method]
    return kind(denoiser, y, sigma_y, **given)  # type: ignore[arg-type]


def _draws(
    denoiser: TiledDenoiser,
    y: Tensor,
    sigma_y: float,
    method: str,
    samples: int,
    steps: int | None,
    options: dict[str, float],
    generator: torch.Generator,
    factor: float,
) -> Tensor:
    """``(K, B, C, H, W)`` draws (``mmse``: its one estimate) of a batch of observations in model units; draws of the
    exact posterior inflated by ``factor`` about the posterior mean (one more evaluation)."""
    if method == "mmse":
        return MatchedPosterior(denoiser, y, sigma_y).mean().unsqueeze(0)
    repeated = y.unsqueeze(0).expand(samples, *y.shape).reshape(samples * y.shape[0], *y.shape[1:])
    drawn = _method(method, denoiser, repeated, sigma_y, steps, options).sample(generator=generator)
    drawn = drawn.reshape(samples, *y.shape)
    if method in ("posterior", "mean") and factor != 1.0:
        drawn = inflate(drawn, MatchedPosterior(denoiser, y, sigma_y).mean(), factor)
    return drawn


def denoise(
    model: Denoiser,
    pixels: Tensor,
    sigma: float | Sequence[float],
    *,
    method: str = "mmse",
    samples: int | None = None,
    steps: int | None = None,
    bit_depth: int | None = None,
    clipped: str = "auto",
    tile: int | None = None,
    inflation: float | str = "auto",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: float,
) -> tuple[Tensor, Tensor | None]:
    r"""Denoise images with white Gaussian noise of level ``sigma``: the estimate and the draws' standard deviation.

    Args:
        model: a denoiser (:func:`sda_cli.load_model`).
        pixels: noisy images ``(B, C, H, W)`` or one ``(C, H, W)``, in [0, 1] pixel units (float files may hold
            values outside).
        sigma: the noise standard deviation in pixel units, one for all or one per image.
        method: one of :data:`METHODS`.
        samples: draws per image :math:`K` of a sampling method (default 1, ``mean``: 8).
        steps: the method's steps (default: the method's own; ``langevin``: per level).
        bit_depth: 8 or 16 when the pixels come from an integer file (clipped to [0, 1] and quantised), ``None`` for
            float data.
        clipped: ``auto`` (impute clipped pixels of integer files), ``on`` (of any input) or ``off``.
        tile: images larger than this are evaluated in overlapping tiles (default: :func:`default_tile`).
        inflation: the factor by which draws of ``posterior`` and ``mean`` move away from the posterior mean:
            ``auto`` (the model's calibrated factor at this sigma, 1 if it has none) or a number (1: raw draws).
        seed: the seed of ``sda denoise --seed`` (same numbers as the command line); or pass ``generator``.
        progress: called after each network call with the tiles (or small images) evaluated so far and in all.
        options: the method's own options (:data:`METHOD_OPTIONS`): ``levels``, ``step_size``, ``t_start``,
            ``strength``, ``gamma``, ``corrections``, ``tau``.

    Returns:
        The estimate (``mean``: the average of the draws; others: the first draw; ``mmse``: the posterior mean),
        shaped like ``pixels``, and the per-pixel standard deviation of the :math:`K \geq 2` draws in pixel units
        (``None`` otherwise), both on the model's device.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    draws = samples if samples is not None else DEFAULT_SAMPLES.get(method, 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if method == "mmse" and draws > 1:
        raise ValueError("samples needs a sampling method: mmse is one estimate; use method mean or posterior")
    unknown = sorted(
        name for name, value in options.items() if value is not None and name not in METHOD_OPTIONS[method]
    )
    if unknown or (steps is not None and method == "mmse"):
        raise ValueError(f"method {method} takes no option {unknown or ['steps']}")
    if clipped not in ("auto", "on", "off"):
        raise ValueError(f"clipped must be auto, on or off, not {clipped!r}")
    if inflation != "auto" and not (isinstance(inflation, (int, float)) and 0 < inflation < 10):
        raise ValueError(f"inflation must be auto or a number in (0, 10), not {inflation!r}")
    single = pixels.ndim == 3
    batch = pixels[None] if single else pixels
    levels = [float(sigma)] * batch.shape[0] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(levels) != batch.shape[0]:
        raise ValueError(f"got {len(levels)} noise levels for {batch.shape[0]} images")
    for level in set(levels):
        check_sigma(model, level)
    device = next(model.parameters()).device
    if generator is None:
        generator, _ = seeded_generator(seed, "denoise", device)
    step = _quantisation_step(clipped, bit_depth)
    channels = model.backbone.config.channels
    per_call = PIXELS_PER_CALL // (BACKWARD_FACTOR if method == "sda" else 1)
    side, overlap = default_tile(model, tile)
    denoiser = TiledDenoiser(model, side, overlap, per_call)
    if progress is not None:
        calibrated = getattr(model, "inflation", ())
        factors = {inflation_factor(calibrated, level) if inflation == "auto" else inflation for level in levels}
        inflating = method in ("posterior", "mean") and factors != {1.0}
        shape = (batch.shape[0], channels, *batch.shape[-2:])
        per_image = _tiles_per_image(denoiser, shape, method, draws, steps, options, 2 * levels[0], inflating)
        denoiser.on_tiles = _tile_counter(progress, per_image * batch.shape[0])

    estimate: Tensor | None = None
    spread: Tensor | None = None
    for level in dict.fromkeys(levels):  # in order of first appearance, so the random stream is reproducible
        index = [i for i, value in enumerate(levels) if value == level]
        y = 2 * batch[index].to(device, torch.float32) - 1
        sigma_y = 2 * level
        if step is not None:
            y = impute_clipped(y, sigma_y, step=step)
        observed, sigma_obs, back = match_channels(y, sigma_y, channels, generator)
        factor = inflation_factor(getattr(model, "inflation", ()), level) if inflation == "auto" else float(inflation)
        drawn = back(_draws(denoiser, observed, sigma_obs, method, draws, steps, options, generator, factor))
        value = drawn.mean(0) if method == "mean" else drawn[0]
        if estimate is None:
            estimate = torch.empty((batch.shape[0], *value.shape[1:]), device=device)
            spread = torch.empty_like(estimate) if draws >= 2 else None
        estimate[index] = (value + 1) / 2
        if spread is not None:
            spread[index] = drawn.std(0) / 2  # model units are twice pixel units
    assert estimate is not None
    if single:
        return estimate[0], None if spread is None else spread[0]
    return estimate, spread


def _tile_counter(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """The :attr:`TiledDenoiser.on_tiles` callback that reports the tiles evaluated so far, and ``total``."""
    done = 0

    def count(tiles: int) -> None:
        nonlocal done
        done += tiles
        progress(done, total)

    return count


def _tiles_per_image(
    denoiser: TiledDenoiser,
    shape: tuple[int, ...],
    method: str,
    samples: int,
    steps: int | None,
    options: dict[str, float],
    sigma_y: float,
    inflating: bool,
) -> int:
    """Tiles (or, for images no larger than a tile, images) that the network evaluates to denoise one image: the
    method's evaluations times its draws, twice for ``sda`` when the backward pass is split (:class:`TiledDenoiser`),
    and one more evaluation for inflated draws."""
    tiles = denoiser.tiles_per_image(shape[-2], shape[-1])
    if method == "mmse":
        return tiles
    probe = torch.zeros(1, shape[1], 1, 1)
    evaluations = _method(method, denoiser, probe, sigma_y, steps, options).nfe
    one_call = samples * shape[0] * shape[2] * shape[3] <= denoiser.batch_pixels
    split = method == "sda" and (tiles > 1 or not one_call)
    return tiles * (evaluations * samples * (2 if split else 1) + int(inflating))


def _quantisation_step(clipped: str, bit_depth: int | None) -> float | None:
    """The quantisation step in model units of a file whose pixels at 0 and 1 are clipped, or None (not clipped)."""
    integer = bit_depth in (8, 16)
    if clipped == "off" or (clipped == "auto" and not integer):
        return None
    return 2 / (2 ** int(bit_depth) - 1) if integer else 0.0  # type: ignore[arg-type]


RESTORE_METHODS: tuple[str, ...] = ("pnp", "mmps", "dps", "diffpir", "sda")
"""Methods of :func:`restore`: :class:`PnP` (the default: one deterministic estimate, the cheapest, and the highest
PSNR of the methods where they were compared, README "restore"), and the posterior samplers :class:`MMPS` (exact
for a Gaussian prior, the one that passes the closed-form chi-squared tests of ``tests/test_guidance_operators.py``:
the method for ``samples`` and the spread), :class:`DPS`, :class:`DiffPIR` (no backward pass through the network)
and :class:`SDA`."""

SAMPLING_METHODS: tuple[str, ...] = RESTORE_METHODS[1:]
r"""The methods of :func:`restore` that draw samples of :math:`p(x \mid y)`."""

RESTORE_OPTIONS: dict[str, tuple[str, ...]] = {
    "pnp": ("lam", "rho_max", "rho_min", "cg_steps"),
    "mmps": ("solver_steps",),
    "dps": ("zeta",),
    "diffpir": ("lam", "zeta", "cg_steps"),
    "sda": ("gamma", "corrections", "tau"),
}
"""The options each method of :func:`restore` takes besides ``steps`` (defaults on each class)."""

RESTORE_CLASSES: dict[str, type[PnP] | type[MMPS] | type[DPS] | type[DiffPIR] | type[SDA]] = {
    "pnp": PnP,
    "mmps": MMPS,
    "dps": DPS,
    "diffpir": DiffPIR,
    "sda": SDA,
}
"""The class behind each method of :func:`restore`: its ``STEPS`` default, and ``nfe`` once built."""


def _stages(operator: LinearOperator) -> list[LinearOperator]:
    """The operators that make up ``operator``, in the order they are applied."""
    if isinstance(operator, Compose):
        return [stage for part in operator.operators for stage in _stages(part)]
    return [operator]


def image_size(operator: LinearOperator, height: int, width: int) -> tuple[int, int]:
    """The size of the images behind observations of ``height × width``: each block average makes them ``scale``
    times larger on each side; the other operators keep the size."""
    scale = math.prod(stage.scale for stage in _stages(operator) if isinstance(stage, Downsample))
    return height * scale, width * scale


def _model_units(
    pixels: Tensor, sigma_y: float, operator: LinearOperator, shape: tuple[int, ...], step: float | None
) -> Tensor:
    r"""The observation :math:`A x + \sigma_y n` in model units from its pixels :math:`y = A p + \sigma n`.

    With :math:`x = 2 p - 1`, :math:`2 y - A\mathbf{1} = A x + 2 \sigma n`: :math:`A\mathbf{1} = 1` for a blur, a
    block average and a kernel that sums to 1, so that this is :math:`2 y - 1` as in :func:`denoise`; it is the mask
    itself for a mask. Clipped pixels of an 8- or 16-bit file are imputed first, as :func:`denoise` does, at observed
    pixels only (a mask's missing pixels are set to mid-grey for the local mean) and only when ``sigma_y > 0``: a
    noise-free observation of an image in [0, 1] is not clipped. Missing values end at 0 (:meth:`observed`).
    """
    y = 2 * pixels - 1  # the file's values, clipped at -1 and 1
    seen = operator.observed(torch.ones_like(y[:1])) > 0
    if step is not None and sigma_y > 0:
        y = torch.where(seen, impute_clipped(torch.where(seen, y, 0), sigma_y, step=step), y)
    ones = operator(torch.ones((1, *shape), device=y.device))
    if not bool((ones == 1).all()):
        y = y + (1 - ones)
    return operator.observed(y)


def batch_pixels(method: str) -> int:
    """The pixels one network call of ``method`` takes: :data:`PIXELS_PER_CALL` for the forward-only methods
    (``pnp``, ``diffpir``), a :data:`BACKWARD_FACTOR`-th of it for those that keep a graph for backward passes."""
    return PIXELS_PER_CALL // (1 if method in ("pnp", "diffpir") else BACKWARD_FACTOR)


def _passes(method: str, posterior: PnP | MMPS | DPS | DiffPIR | SDA, one_call: bool) -> int:
    """Network passes over the whole batch in one draw: a vector-Jacobian product is one pass when it fits one call,
    else a forward pass and a tile-by-tile backward pass (:meth:`TiledDenoiser.mean_and_vjp`); ``mmps``'s products
    reuse its kept forward pass when it fits one call (:meth:`TiledDenoiser.linearise`)."""
    vjp = 1 if one_call else 2
    if method == "mmps":  # x_hat, then a product per solver step and one for the score, on the kept pass
        products = 0 if one_call else 2 * (posterior.solver_steps + 1)  # type: ignore[union-attr]
        return posterior.nfe * (1 + products)
    if method == "dps":  # a product per step, then the final estimate
        return (posterior.nfe - 1) * vjp + 1
    return posterior.nfe * (vjp if method == "sda" else 1)


def restore(
    model: Denoiser,
    observation: Tensor,
    sigma: float,
    operator: LinearOperator | None = None,
    *,
    method: str = "pnp",
    samples: int | None = None,
    steps: int | None = None,
    bit_depth: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: float,
) -> tuple[Tensor, Tensor | None]:
    r"""Recover images from observations :math:`y = A p + \sigma n` in pixel units: the estimate and the draws'
    standard deviation, at the images' full size.

    In model units the observation is :math:`A x + \sigma_y n` with :math:`\sigma_y = 2 \sigma` (:func:`_model_units`);
    ``pnp`` (the default) gives one deterministic estimate; the sampling methods draw :math:`K` samples of
    :math:`p(x \mid y)` from pure noise, the whole image one noise field; the network is evaluated in tiles
    (:class:`TiledDenoiser`). With no operator (:class:`Identity`) this is :func:`denoise`
    through the same method: the same units, clipping, channels, tiles and random stream (``seed``), so ``sda`` with
    one draw gives the same numbers.

    Args:
        model: a denoiser (:func:`sda_cli.load_model`).
        observation: observations ``(B, C, h, w)`` or one ``(C, h, w)`` in pixel units, at the observation's size
            (``scale`` times smaller than the images for a block average); a mask's missing values are ignored.
        sigma: the noise standard deviation in pixel units; 0 for a noise-free observation (all methods but ``sda``,
            which needs it positive).
        operator: :math:`A` (:func:`sda_cli.operators.make_operator`); ``None``: the identity.
        method: one of :data:`RESTORE_METHODS`.
        samples: draws per image :math:`K` (default 1; a sampling method for more); the estimate is their mean.
        steps: the method's steps (default: the method's own).
        bit_depth: 8 or 16 when the observation comes from an integer file (clipped and quantised), else ``None``.
        seed: the seed of ``sda restore --seed`` (``sda denoise``'s stream with no operator); or pass ``generator``.
        tile: images larger than this are evaluated in overlapping tiles (default: :func:`default_tile`).
        progress: called after each network call with the tiles (or small images) evaluated so far and in all.
        options: the method's own options (:data:`RESTORE_OPTIONS`).

    Returns:
        The mean of the :math:`K` draws ``(B, C, H, W)`` (or ``(C, H, W)``) in pixel units, and their per-pixel
        standard deviation for :math:`K \geq 2` (``None`` otherwise), both on the model's device.
    """
    if method not in RESTORE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(RESTORE_METHODS)}")
    draws = 1 if samples is None else samples
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if method not in SAMPLING_METHODS and draws > 1:
        raise ValueError(f"samples needs a sampling method: {method} is one estimate; use method mmps")
    allowed = RESTORE_OPTIONS[method]
    unknown = sorted(name for name, value in options.items() if value is not None and name not in allowed)
    if unknown:
        raise ValueError(f"method {method} takes no option {unknown}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < math.inf:
        raise ValueError(f"sigma must be a finite number >= 0 of [0, 1] pixel units, got {sigma!r}")
    if method == "sda" and sigma == 0:
        raise ValueError(
            "method sda cannot take a noise-free observation (sigma 0): give the noise level, or use mmps or diffpir"
        )
    operator = operator or Identity()
    single = observation.ndim == 3
    batch = observation[None] if single else observation
    count, colours, height, width = batch.shape
    shape = (colours, *image_size(operator, height, width))
    if tuple(operator.out_shape((count, *shape))) != tuple(batch.shape):
        raise ValueError(f"the operator does not give observations of {height}×{width} pixels; check its options")
    device = next(model.parameters()).device
    if generator is None:
        generator, _ = seeded_generator(seed, "denoise" if isinstance(operator, Identity) else "restore", device)
    per_call = batch_pixels(method)
    side, overlap = default_tile(model, tile)
    denoiser = TiledDenoiser(model, side, overlap, per_call)

    sigma_y = 2 * float(sigma)
    y = _model_units(batch.to(device, torch.float32), sigma_y, operator, shape, _quantisation_step("auto", bit_depth))
    observed, sigma_obs, back = match_channels(y, sigma_y, model.backbone.config.channels, generator)
    observed = operator.observed(observed)  # the noise match_channels adds is no observation either
    repeated = observed.unsqueeze(0).expand(draws, *observed.shape).reshape(draws * count, *observed.shape[1:])
    given = {"steps": steps} if steps is not None else {}
    given |= {name: value for name, value in options.items() if value is not None}
    full = (observed.shape[1], *shape[1:])
    kind = RESTORE_CLASSES[method]
    posterior = kind(denoiser, repeated, sigma_obs, operator=operator, shape=full, **given)  # type: ignore[arg-type]
    if progress is not None:
        tiles = denoiser.tiles_per_image(*shape[1:])
        one_call = tiles == 1 and draws * count <= max(1, per_call // (shape[1] * shape[2]))
        denoiser.on_tiles = _tile_counter(progress, tiles * draws * count * _passes(method, posterior, one_call))
    drawn = back(posterior.sample(generator=generator).reshape(draws, count, *full))
    estimate = (drawn.mean(0) + 1) / 2
    spread = drawn.std(0) / 2 if draws >= 2 else None  # model units are twice pixel units
    if single:
        return estimate[0], None if spread is None else spread[0]
    return estimate, spread
