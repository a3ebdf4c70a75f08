r"""Applying an image-to-image function to large images in overlapping tiles, each pixel taken from one tile.

The image is covered by tiles of ``tile × tile`` pixels whose starts advance by ``tile - overlap`` (the last tile of
each row and column is moved back to end at the image's edge, so it may overlap its neighbour by more). Along an
axis, two neighbouring tiles overlap on pixels :math:`[a, e)`; with the margin :math:`m = \lfloor \text{overlap} / 4
\rfloor` and a cut position :math:`u \in [0, 1]`, the cut between them lies at

.. math:: c = a + m + u\,(e - a - 2m),

and pixel :math:`p` (centre :math:`p + \tfrac12`) takes the output of the first tile if :math:`p + \tfrac12 < c`,
of the second otherwise. Each pixel takes the output of exactly one tile: the weights are 0/1 masks, separable,
:math:`w_k(i, j) = a_k(i)\, b_k(j)` (each tile keeps a rectangle), and they sum to one at every pixel:

.. math:: f_\text{tiled}(x) = \sum_k w_k \odot f(x|_{T_k}).

Why not a blend: a function that sees the whole tile (normalisation, attention) gives different outputs :math:`A`
and :math:`B` in an overlap, and a blend :math:`w A + (1 - w) B` of two estimates of variance :math:`s^2` each and
correlation :math:`\rho < 1` has the smaller variance :math:`(w^2 + (1 - w)^2 + 2 w (1 - w) \rho)\, s^2`, as low as
:math:`\tfrac{1 + \rho}{2} s^2` at :math:`w = \tfrac12`: posterior draws made with it would be less spread in the
overlaps. Taken from one tile, every pixel has the full variance of one network's output. (With the CIFAR-10 model
on a flat image, :math:`\rho` = 0.955 to 0.976 between two tiles at noise ratios 0.4 to 0.02, so the loss is at
most 1 to 2 % of the variance of :math:`\hat{x}`, below what 16 posterior draws resolve:
``benchmarks/tile_seams.py``.)

The cut moves from one evaluation to the next: :class:`TiledDenoiser` takes :math:`u` for rows and for columns from
the low-discrepancy sequences :math:`u_k = \operatorname{frac}(\tfrac12 + k g)` (:func:`moving_cut`; :math:`g` the
golden ratio's reciprocal for rows, the plastic number's for columns; :math:`k` the count of its evaluations), so a
run is reproducible to the bit, and over many evaluations :math:`u` is uniform on :math:`[0, 1)`: the cut is uniform
over the ramp :math:`[a + m, e - m)`, the expected weight of the first tile falls linearly from 1 to 0 across it (in
expectation a linear crossfade), and the step between two tiles' outputs never stays at one place.

Exactness for local functions: every pixel taken from a tile lies at least :math:`m` pixels from that tile's edges
inside the image (a pixel :math:`p` of the second tile has :math:`p \geq a + m`, one of the first
:math:`p + 1 \leq e - m`), so for a function whose output at a pixel
depends only on the inputs within :math:`m` pixels (a receptive radius :math:`\leq m`, zero padding at the image's
border as in the full image), the tiled result equals the untiled one, whatever the cut.

Memory: the output buffer (``(B, C_out, H, W)``, allocated after the first call, in the dtype of ``fn``'s output),
the input, and one batch of tiles of at most ``batch_pixels`` pixels (tiles × height × width; at least one tile)
in and out of ``fn``, whatever the image size. Each tile's rectangle is copied into the output: no normaliser. Meant
for inference: the output is written in place.

:class:`TiledDenoiser` evaluates a denoiser this way, at most :data:`PIXELS_PER_CALL` pixels per network call, and
gives the products with its Jacobian tile by tile too, through the same cut as the evaluation they belong to;
:func:`default_tile` picks the tile for a network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor

from sda_cli.denoiser import Denoiser, JacobianProducts
from sda_cli.sampler import DenoiserLike
from sda_cli.unet import pad_to_multiple

__all__ = [
    "BACKWARD_FACTOR",
    "CUT_STEPS",
    "LOCAL_TILE",
    "PIXELS_PER_CALL",
    "TILE",
    "TiledDenoiser",
    "default_tile",
    "fitted_tile",
    "is_local",
    "map_tiles",
    "map_tiles_vjp",
    "moving_cut",
    "tile_spans",
    "tile_starts",
    "tile_weights",
]

CUT_STEPS = ((math.sqrt(5) - 1) / 2, 0.7548776662466927)
"""The steps of :func:`moving_cut`'s sequences for rows and columns: the reciprocals of the golden ratio and of the
plastic number (the real root of :math:`x^3 = x + 1`). Their multiples modulo 1 spread evenly (among the first
:math:`n`, no gap over :math:`2.5 / n`), and the two differ, so rows and columns do not cut in step."""


def moving_cut(k: int) -> tuple[float, float]:
    r"""The cut positions :math:`(u, v)` of rows and columns for evaluation ``k`` (from 0):
    :math:`\operatorname{frac}(\tfrac12 + k g)` for each step :math:`g` of :data:`CUT_STEPS`; ``(0.5, 0.5)`` first."""
    return ((0.5 + k * CUT_STEPS[0]) % 1.0, (0.5 + k * CUT_STEPS[1]) % 1.0)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """The start of each tile along an axis of ``size`` pixels: ``0, s, 2s, ...`` with ``s = tile - overlap``, the
    last one moved back to ``size - tile``; ``[0]`` when ``size <= tile``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    return [*range(0, size - tile, stride), size - tile]


def fitted_tile(height: int, width: int, tile: int, overlap: int, grid: int = 1) -> int:
    r"""The smallest square tile side, a multiple of ``grid`` and at most ``tile``, that covers an image of
    ``height × width`` in as many tiles per axis as ``tile`` does, with the same ``overlap`` (and at least twice it).

    An axis of :math:`L` pixels takes :math:`n` tiles of side ``tile`` (:func:`tile_starts`); :math:`n` tiles of side
    :math:`s` with overlap :math:`o` cover it when :math:`n s - (n - 1) o \geq L`, so the least side is
    :math:`\lceil (L + (n - 1) o) / n \rceil`, rounded up to the grid; the side for the image is the larger of its
    two axes'. The network then evaluates less of the overlaps: a 1600 × 1200 photo in 12 tiles of 512² computes
    3.1 megapixels for its 1.9; in 12 tiles of 432², 2.2."""
    side = 0
    for size in (height, width):
        count = len(tile_starts(size, tile, overlap))
        least = -(-(size + (count - 1) * overlap) // count)
        side = max(side, -(-least // grid) * grid)
    return min(max(side, 2 * overlap), tile)


def tile_spans(size: int, tile: int, overlap: int, cut: float = 0.5) -> list[tuple[int, int]]:
    """The pixels ``[lo, hi)`` that each tile gives along an axis, for the cut position ``cut`` in [0, 1] (module
    docstring): consecutive, covering ``[0, size)``, each inside its tile at least ``overlap // 4`` pixels from a tile
    edge inside the image."""
    starts = tile_starts(size, tile, overlap)
    length, margin = min(tile, size), overlap // 4
    bounds = [0]
    for before, after in pairwise(starts):
        a, e = after, before + length  # the overlap of the two tiles
        c = a + margin + cut * (e - a - 2 * margin)
        bounds.append(math.ceil(c - 0.5))  # the first pixel p with p + 1/2 >= c
    bounds.append(size)
    return list(pairwise(bounds))


def tile_weights(
    size: int, tile: int, overlap: int, cut: float = 0.5, dtype: torch.dtype = torch.float64
) -> list[Tensor]:
    """The 1-D weights of each tile along an axis, for the cut position ``cut``: ``weights[k][i]`` for pixel
    ``starts[k] + i``, 1 where the tile gives the pixel (:func:`tile_spans`), 0 elsewhere; at every pixel the weights
    of the tiles covering it sum to one."""
    weights = []
    for start, (lo, hi) in zip(tile_starts(size, tile, overlap), tile_spans(size, tile, overlap, cut), strict=True):
        weight = torch.zeros(min(tile, size), dtype=dtype)
        weight[lo - start : hi - start] = 1
        weights.append(weight)
    return weights


def _check(image: Tensor, tile: int, overlap: int, cut: tuple[float, float], batch_pixels: int) -> None:
    if image.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(image.shape)}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= 2 * overlap <= tile:
        raise ValueError(f"overlap must be an integer with 0 <= 2 * overlap <= tile = {tile}, got {overlap!r}")
    if batch_pixels < 1:
        raise ValueError(f"batch_pixels must be positive, got {batch_pixels}")
    if len(cut) != 2 or not all(isinstance(u, (int, float)) and 0 <= u <= 1 for u in cut):
        raise ValueError(f"cut must be two numbers in [0, 1] (rows, columns), got {cut!r}")


def _places(
    image: Tensor, tile: int, overlap: int, cut: tuple[float, float]
) -> list[tuple[int, int, int, slice, slice]]:
    """Each tile of each image: ``(b, r0, c0, rows, cols)``, its image, its start, and the part of it that it gives
    (slices of the tile)."""
    batch, _, height, width = image.shape
    row_starts, col_starts = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_spans, col_spans = tile_spans(height, tile, overlap, cut[0]), tile_spans(width, tile, overlap, cut[1])
    return [
        (b, r0, c0, slice(r_lo - r0, r_hi - r0), slice(c_lo - c0, c_hi - c0))
        for b in range(batch)
        for r0, (r_lo, r_hi) in zip(row_starts, row_spans, strict=True)
        for c0, (c_lo, c_hi) in zip(col_starts, col_spans, strict=True)
    ]


def map_tiles(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: int = 256,
    overlap: int = 32,
    *,
    cut: tuple[float, float] = (0.5, 0.5),
    batch_pixels: int = 1 << 18,
) -> Tensor:
    r"""Apply ``fn`` to ``image`` ``(B, C, H, W)`` in overlapping ``tile × tile`` tiles, each pixel from one tile.

    ``fn`` maps a batch of tiles ``(N, C, h, w)`` to ``(N, C_out, h, w)`` (a fully convolutional image-to-image
    function). An image no larger than one tile (``H, W <= tile``) goes through ``fn`` whole in one call.
    Otherwise the tiles of all the images in the batch are passed in groups of at most ``batch_pixels`` pixels
    (``N h w <= batch_pixels``, and at least one tile), and each pixel of the output is that of the tile on its side
    of the cuts at positions ``cut`` (rows, columns; each in [0, 1], module docstring, :func:`tile_spans`): exact,
    for pointwise functions and for local ones of receptive radius at most ``overlap // 4``, whatever the cut.
    Needs ``0 <= 2 * overlap <= tile``.
    """
    _check(image, tile, overlap, cut, batch_pixels)
    batch, _, height, width = image.shape
    if height <= tile and width <= tile:
        return fn(image)
    rows, cols = min(tile, height), min(tile, width)
    places = _places(image, tile, overlap, cut)
    per_call = max(1, batch_pixels // (rows * cols))
    out: Tensor | None = None
    for first in range(0, len(places), per_call):
        group = places[first : first + per_call]
        tiles = torch.stack([image[b, :, r0 : r0 + rows, c0 : c0 + cols] for b, r0, c0, _, _ in group])
        result = fn(tiles)
        if result.ndim != 4 or result.shape[0] != len(group) or result.shape[2:] != tiles.shape[2:]:
            raise ValueError(
                f"fn must map tiles {tuple(tiles.shape)} to (N, C_out, {rows}, {cols}), got {tuple(result.shape)}"
            )
        if out is None:
            out = torch.zeros(batch, result.shape[1], height, width, dtype=result.dtype, device=result.device)
        for k, (b, r0, c0, own_rows, own_cols) in enumerate(group):
            out[b, :, r0 : r0 + rows, c0 : c0 + cols][:, own_rows, own_cols] = result[k][:, own_rows, own_cols]
    assert out is not None
    return out


def map_tiles_vjp(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    cotangent: Tensor,
    tile: int = 256,
    overlap: int = 32,
    *,
    cut: tuple[float, float] = (0.5, 0.5),
    batch_pixels: int = 1 << 18,
) -> Tensor:
    r"""The vector-Jacobian product :math:`J^\top v` of :func:`map_tiles` (``fn``, ``image``, the same ``cut``) with
    :math:`v` = ``cotangent`` (shaped like its output), tile by tile, so that only one batch of tiles holds
    activations.

    With :math:`f_\text{tiled}(x) = \sum_k P_k^\top (w_k \odot f(P_k x))` (:math:`P_k` the crop of tile :math:`k`,
    :math:`w_k` its 0/1 mask), :math:`J^\top v = \sum_k P_k^\top J_f(P_k x)^\top (w_k \odot P_k v)`: each tile is
    evaluated again with autograd and its input gradient added in place. An image no larger than one tile is one call.
    """
    _check(image, tile, overlap, cut, batch_pixels)
    _, _, height, width = image.shape
    if height <= tile and width <= tile:
        with torch.enable_grad():
            x = image.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(fn(x), x, cotangent)
        return gradient
    rows, cols = min(tile, height), min(tile, width)
    places = _places(image, tile, overlap, cut)
    per_call = max(1, batch_pixels // (rows * cols))
    gradient = torch.zeros_like(image)
    for first in range(0, len(places), per_call):
        group = places[first : first + per_call]
        tiles = torch.stack([image[b, :, r0 : r0 + rows, c0 : c0 + cols] for b, r0, c0, _, _ in group])
        masked = torch.zeros(len(group), cotangent.shape[1], rows, cols, dtype=cotangent.dtype, device=cotangent.device)
        for k, (b, r0, c0, own_rows, own_cols) in enumerate(group):
            masked[k][:, own_rows, own_cols] = cotangent[b, :, r0 : r0 + rows, c0 : c0 + cols][:, own_rows, own_cols]
        with torch.enable_grad():
            x = tiles.detach().requires_grad_(True)
            (tile_gradient,) = torch.autograd.grad(fn(x), x, masked)
        for k, (b, r0, c0, _, _) in enumerate(group):
            gradient[b, :, r0 : r0 + rows, c0 : c0 + cols] += tile_gradient[k]
    return gradient


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


def is_local(model: Denoiser) -> bool:
    """Whether the model's network is local: no normalisation, no attention (``sda_cli.unet``, ``norm="none"``)."""
    config = model.backbone.config
    return getattr(config, "norm", "group") == "none" and not getattr(config, "attention_levels", (0,))


def default_tile(model: Denoiser, tile: int | None = None) -> tuple[int, int, int]:
    """The tile side, overlap and grid: a given ``tile`` with 1/8 of it as overlap; with none, :data:`LOCAL_TILE` and
    1/16 of it for a local network, the network's own training size (``sample_size``, a diffusers DDPM) and 1/8 of it
    for a global network trained at a fixed size, else :data:`TILE` and 1/8 of it. A local network's tiles start on
    its downsampling grid (the grid is its factor; side and overlap rounded up to multiples of it), so that each tile
    computes the whole image's numbers away from its edges; a global network's grid is 1."""
    config = model.backbone.config
    native = getattr(config, "sample_size", None)
    if tile is None and native is not None:
        return native, native // 8, 1
    local = is_local(model)
    grid = int(getattr(config, "factor", 1)) if local else 1
    if tile is not None:
        side = -(-tile // grid) * grid
        return side, -(-(tile // 8) // grid) * grid, grid
    return (LOCAL_TILE, LOCAL_TILE // 16, grid) if local else (TILE, TILE // 8, grid)


class TiledDenoiser(JacobianProducts):
    r"""A denoiser whose network runs on at most ``batch_pixels`` pixels per call.

    Images larger than ``tile`` are evaluated in overlapping tiles, each pixel taken from one tile
    (:func:`sda_cli.tiles.map_tiles`), with the cuts at :func:`moving_cut` of the count of evaluations so far
    (:attr:`evaluations`): the cut moves from one evaluation to the next, the same way in every run, and a forward
    pass and its vector-Jacobian products (:meth:`mean_and_vjp`, :meth:`linearise`) share one evaluation's cut.
    Batches of small images go in chunks. The caller's state stays whole, so a sampler draws one noise field per image
    and its draws have no seams: only :math:`\hat{x}` is stitched. With a ``grid`` (a local network's downsampling
    factor; ``tile`` and ``overlap`` multiples of it) the image is first padded to a multiple of it as the network
    pads (:func:`sda_cli.unet.pad_to_multiple`), so that every tile starts on the network's grid, and the result is
    cropped back. With ``fit`` (for a local network, whose output away from a tile's edges does not depend on the
    tile's size: :func:`is_local`) each image's tiles shrink to :func:`fitted_tile`; a global network keeps ``tile``,
    the context it was made for.
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        tile: int,
        overlap: int,
        batch_pixels: int,
        on_tiles: Callable[[int], None] | None = None,
        grid: int = 1,
        fit: bool = False,
    ) -> None:
        if tile % grid or overlap % grid:
            raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of the grid {grid}")
        self.denoiser, self.tile, self.overlap, self.batch_pixels = denoiser, tile, overlap, batch_pixels
        self.grid, self.fit = grid, fit
        self.schedule = denoiser.schedule
        self.on_tiles = on_tiles
        """Called after each network call with the number of tiles (or small images) it evaluated."""
        self.evaluations = 0
        """Evaluations so far (calls, :meth:`mean_and_vjp`, :meth:`linearise`): the next one cuts at
        ``moving_cut(evaluations)``."""

    def tiles_per_image(self, height: int, width: int) -> int:
        """Tiles in one evaluation of an image of this size (1 when it is not tiled)."""
        height, width = (-(-side // self.grid) * self.grid for side in (height, width))
        side = self._side(height, width)
        return len(tile_starts(height, side, self.overlap)) * len(tile_starts(width, side, self.overlap))

    def _side(self, height: int, width: int) -> int:
        """The tile side for a (padded) image of this size: :func:`fitted_tile` with ``fit``, else ``tile``."""
        return fitted_tile(height, width, self.tile, self.overlap, self.grid) if self.fit else self.tile

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

    def _next_cut(self) -> tuple[float, float]:
        cut = moving_cut(self.evaluations)
        self.evaluations += 1
        return cut

    def __call__(self, x_t: Tensor, t: float, /) -> Tensor:
        return self._forward(x_t, t, self._next_cut())

    def _forward(self, x_t: Tensor, t: float, cut: tuple[float, float]) -> Tensor:
        network = self._network(t)
        with torch.no_grad():
            if self._small(x_t):
                return torch.cat([network(x_t[part]) for part in self._chunks(x_t)])
            padded = pad_to_multiple(x_t, self.grid)
            side = self._side(*padded.shape[-2:])
            out = map_tiles(network, padded, side, self.overlap, cut=cut, batch_pixels=self.batch_pixels)
            return out[..., : x_t.shape[-2], : x_t.shape[-1]]

    def linearise(self, x_t: Tensor, t: float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r""":math:`\hat{x}` and the map :math:`v \mapsto J^\top v` for several products at one point: the forward
        pass is kept for all of them when the input fits one call, else each product runs tile by tile (a forward and
        a backward pass), through the cut of this evaluation."""
        cut = self._next_cut()
        if self._small(x_t) and len(self._chunks(x_t)) == 1:
            network = self._network(t)
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                x_hat = network(x)

            def kept(v: Tensor) -> Tensor:
                (gradient,) = torch.autograd.grad(x_hat, x, v, retain_graph=True)
                return gradient

            return x_hat.detach(), kept
        return self._forward(x_t, t, cut), lambda v: self._mean_and_vjp(x_t, t, lambda _: v, cut)[1]

    def mean_and_vjp(self, x_t: Tensor, t: float, cotangent: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        r""":math:`\hat{x}` and :math:`J^\top v`, :math:`v` = ``cotangent(x_hat)``: in one pass when it fits one
        call, else a pass for :math:`\hat{x}` and a second, tile by tile, for the product (memory stays bounded), both
        through the cut of this evaluation."""
        return self._mean_and_vjp(x_t, t, cotangent, self._next_cut())

    def _mean_and_vjp(
        self, x_t: Tensor, t: float, cotangent: Callable[[Tensor], Tensor], cut: tuple[float, float]
    ) -> tuple[Tensor, Tensor]:
        network = self._network(t)
        if self._small(x_t) and len(self._chunks(x_t)) == 1:
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                x_hat = network(x)
                (gradient,) = torch.autograd.grad(x_hat, x, cotangent(x_hat.detach()))
            return x_hat.detach(), gradient
        x_hat = self._forward(x_t, t, cut)
        v = cotangent(x_hat)
        if self._small(x_t):
            parts = [map_tiles_vjp(network, x_t[part], v[part], self.tile, self.overlap) for part in self._chunks(x_t)]
            return x_hat, torch.cat(parts)
        with torch.enable_grad():  # the padding is linear: its transpose folds the padded rows back
            x = x_t.detach().requires_grad_(True)
            padded = pad_to_multiple(x, self.grid)
        rows, cols = padded.shape[-2] - x_t.shape[-2], padded.shape[-1] - x_t.shape[-1]
        v_padded = torch.nn.functional.pad(v, (0, cols, 0, rows))
        side = self._side(*padded.shape[-2:])
        product = map_tiles_vjp(
            network, padded.detach(), v_padded, side, self.overlap, cut=cut, batch_pixels=self.batch_pixels
        )
        if rows or cols:
            (product,) = torch.autograd.grad(padded, x, product)
        return x_hat, product
