r"""Applying an image-to-image function to large images in overlapping tiles, blended without seams.

The image is covered by tiles of ``tile × tile`` pixels whose starts advance by ``tile - overlap`` (the last tile of
each row and column is moved back to end at the image's edge, so it may overlap its neighbour by more). Each tile's
output is weighted by a separable window :math:`w(i, j) = a(i)\, b(j)` and the weights are normalised so that they
sum to one at every pixel:

.. math:: f_\text{tiled}(x) = \sum_k \frac{w_k}{\sum_l w_l} \odot f(x|_{T_k}).

Along an axis, the profile at distance :math:`d` (in pixels) from a tile edge that lies *inside* the image is, with
the margin :math:`m = \lfloor \text{overlap} / 4 \rfloor` and the ramp :math:`R = \text{overlap} - 2m`,

.. math:: a(d) = 0 \ (d < m), \qquad a(d) = \sin^2\!\Big(\frac{\pi}{2} \frac{d - m + \tfrac12}{R}\Big)
          \ (m \leq d < m + R), \qquad a(d) = 1 \ \text{beyond},

and 1 at edges that are the image's own. Across an overlap of exactly ``overlap`` pixels the two profiles are
:math:`\sin^2` and :math:`\cos^2` of the same angle: they sum to one, and the blend is a raised-cosine crossfade
(a partition of unity, as in the overlap-add of Allen & Rabiner, 1977). Two consequences:

* **exactness for local functions**: a pixel takes no weight from a tile whose edge is nearer than :math:`m`, so for a
  function whose output at a pixel depends only on the inputs within :math:`m` pixels (a receptive radius
  :math:`\leq m`, zero padding at the image's border as in the full image), the tiled result equals the untiled one
  up to rounding;
* **no seams for the rest**: a function that sees the whole tile (normalisation, attention) gives slightly different
  outputs in neighbouring tiles; the crossfade spreads their difference smoothly over :math:`R` pixels instead of
  a step.

Memory: the output buffer (``(B, C_out, H, W)``, allocated after the first call, in the dtype of ``fn``'s output),
the input, and one batch of tiles of at most ``batch_pixels`` pixels (tiles × height × width; at least one tile)
in and out of ``fn``, whatever the image size. The weights are separable, so the normaliser is two vectors, not a
third image-sized buffer. Meant for inference: the accumulation is in place.

:class:`TiledDenoiser` evaluates a denoiser this way, at most :data:`PIXELS_PER_CALL` pixels per network call, and
gives the products with its Jacobian tile by tile too; :func:`default_tile` picks the tile for a network.

Reference:
    Allen & Rabiner, "A unified approach to short-time Fourier analysis and synthesis", Proc. IEEE 65(11), 1977.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sda_cli.denoiser import Denoiser, JacobianProducts
from sda_cli.sampler import DenoiserLike
from sda_cli.unet import pad_to_multiple

__all__ = [
    "BACKWARD_FACTOR",
    "LOCAL_TILE",
    "PIXELS_PER_CALL",
    "TILE",
    "TiledDenoiser",
    "default_tile",
    "map_tiles",
    "map_tiles_vjp",
    "tile_starts",
    "tile_weights",
]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """The start of each tile along an axis of ``size`` pixels: ``0, s, 2s, ...`` with ``s = tile - overlap``, the
    last one moved back to ``size - tile``; ``[0]`` when ``size <= tile``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    return [*range(0, size - tile, stride), size - tile]


def _profile(distance: Tensor, overlap: int) -> Tensor:
    """The weight at ``distance`` pixels from a tile edge inside the image (module docstring)."""
    if overlap == 0:
        return torch.ones_like(distance)
    margin = overlap // 4
    ramp = overlap - 2 * margin
    phase = ((distance - margin + 0.5) / ramp).clamp(0.0, 1.0)
    return torch.where(distance < margin, 0.0, torch.sin(0.5 * math.pi * phase) ** 2)


def tile_weights(size: int, tile: int, overlap: int, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """The normalised 1-D weights of each tile along an axis: ``weights[k][i]`` for pixel ``starts[k] + i``; at every
    pixel the weights of the tiles covering it sum to one."""
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size)
    index = torch.arange(length, dtype=torch.float64)
    raw = []
    for start in starts:
        weight = torch.ones(length, dtype=torch.float64)
        if start > 0:  # the left edge is a cut
            weight = weight * _profile(index, overlap)
        if start + length < size:  # the right edge is a cut
            weight = weight * _profile(length - 1 - index, overlap)
        raw.append(weight)
    total = torch.zeros(size, dtype=torch.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start : start + length] += weight
    if not bool((total > 0).all()):  # cannot happen when 2 * overlap <= tile
        raise AssertionError("a pixel is covered by no tile with positive weight")
    return [(weight / total[start : start + length]).to(dtype) for start, weight in zip(starts, raw, strict=True)]


def map_tiles(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: int = 256,
    overlap: int = 32,
    *,
    batch_pixels: int = 1 << 18,
) -> Tensor:
    r"""Apply ``fn`` to ``image`` ``(B, C, H, W)`` in overlapping ``tile × tile`` tiles, blended without seams.

    ``fn`` maps a batch of tiles ``(N, C, h, w)`` to ``(N, C_out, h, w)`` (a fully convolutional image-to-image
    function). An image no larger than one tile (``H, W <= tile``) goes through ``fn`` whole in one call.
    Otherwise the tiles of all the images in the batch are passed in groups of at most ``batch_pixels`` pixels
    (``N h w <= batch_pixels``, and at least one tile), and the outputs are blended by the normalised raised-cosine
    windows of :func:`tile_weights` (module docstring): exact, up to rounding, for pointwise functions and for
    local ones of receptive radius at most ``overlap // 4``. Needs ``0 <= 2 * overlap <= tile``.
    """
    if image.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(image.shape)}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= 2 * overlap <= tile:
        raise ValueError(f"overlap must be an integer with 0 <= 2 * overlap <= tile = {tile}, got {overlap!r}")
    if batch_pixels < 1:
        raise ValueError(f"batch_pixels must be positive, got {batch_pixels}")
    batch, _, height, width = image.shape
    if height <= tile and width <= tile:
        return fn(image)
    rows, cols = min(tile, height), min(tile, width)
    row_starts, col_starts = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights, col_weights = tile_weights(height, tile, overlap), tile_weights(width, tile, overlap)
    places = [(b, i, j) for b in range(batch) for i in range(len(row_starts)) for j in range(len(col_starts))]
    per_call = max(1, batch_pixels // (rows * cols))
    out: Tensor | None = None
    for first in range(0, len(places), per_call):
        group = places[first : first + per_call]
        tiles = torch.stack(
            [
                image[b, :, row_starts[i] : row_starts[i] + rows, col_starts[j] : col_starts[j] + cols]
                for b, i, j in group
            ]
        )
        result = fn(tiles)
        if result.ndim != 4 or result.shape[0] != len(group) or result.shape[2:] != tiles.shape[2:]:
            raise ValueError(
                f"fn must map tiles {tuple(tiles.shape)} to (N, C_out, {rows}, {cols}), got {tuple(result.shape)}"
            )
        if out is None:
            out = torch.zeros(batch, result.shape[1], height, width, dtype=result.dtype, device=result.device)
        for k, (b, i, j) in enumerate(group):
            weight = row_weights[i].to(result)[:, None] * col_weights[j].to(result)[None, :]
            r0, c0 = row_starts[i], col_starts[j]
            out[b, :, r0 : r0 + rows, c0 : c0 + cols] += result[k] * weight
    assert out is not None
    return out


def map_tiles_vjp(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    cotangent: Tensor,
    tile: int = 256,
    overlap: int = 32,
    *,
    batch_pixels: int = 1 << 18,
) -> Tensor:
    r"""The vector-Jacobian product :math:`J^\top v` of :func:`map_tiles` (``fn``, ``image``) with :math:`v` =
    ``cotangent`` (shaped like its output), tile by tile, so that only one batch of tiles holds activations.

    With :math:`f_\text{tiled}(x) = \sum_k P_k^\top (w_k \odot f(P_k x))` (:math:`P_k` the crop of tile :math:`k`),
    :math:`J^\top v = \sum_k P_k^\top J_f(P_k x)^\top (w_k \odot P_k v)`: each tile is evaluated again with autograd
    and its input gradient added in place. An image no larger than one tile is one call.
    """
    batch, _, height, width = image.shape
    if height <= tile and width <= tile:
        with torch.enable_grad():
            x = image.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(fn(x), x, cotangent)
        return gradient
    rows, cols = min(tile, height), min(tile, width)
    row_starts, col_starts = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights, col_weights = tile_weights(height, tile, overlap), tile_weights(width, tile, overlap)
    places = [(b, i, j) for b in range(batch) for i in range(len(row_starts)) for j in range(len(col_starts))]
    per_call = max(1, batch_pixels // (rows * cols))
    gradient = torch.zeros_like(image)
    for first in range(0, len(places), per_call):
        group = places[first : first + per_call]
        crops = [(b, row_starts[i], col_starts[j], i, j) for b, i, j in group]
        tiles = torch.stack([image[b, :, r : r + rows, c : c + cols] for b, r, c, _, _ in crops])
        weighted = torch.stack(
            [
                cotangent[b, :, r : r + rows, c : c + cols]
                * (row_weights[i].to(cotangent)[:, None] * col_weights[j].to(cotangent)[None, :])
                for b, r, c, i, j in crops
            ]
        )
        with torch.enable_grad():
            x = tiles.detach().requires_grad_(True)
            (tile_gradient,) = torch.autograd.grad(fn(x), x, weighted)
        for k, (b, r, c, _, _) in enumerate(crops):
            gradient[b, :, r : r + rows, c : c + cols] += tile_gradient[k]
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


def default_tile(model: Denoiser, tile: int | None = None) -> tuple[int, int, int]:
    """The tile side, overlap and grid: a given ``tile`` with 1/8 of it as overlap; with none, :data:`LOCAL_TILE` and
    1/16 of it for a local network, else :data:`TILE` and 1/8 of it. A local network's tiles start on its
    downsampling grid (the grid is its factor; side and overlap rounded up to multiples of it), so that each tile
    computes the whole image's numbers away from its edges; a global network's grid is 1."""
    config = model.backbone.config
    local = getattr(config, "norm", "group") == "none" and not getattr(config, "attention_levels", (0,))
    grid = int(getattr(config, "factor", 1)) if local else 1
    if tile is not None:
        side = -(-tile // grid) * grid
        return side, -(-(tile // 8) // grid) * grid, grid
    return (LOCAL_TILE, LOCAL_TILE // 16, grid) if local else (TILE, TILE // 8, grid)


class TiledDenoiser(JacobianProducts):
    r"""A denoiser whose network runs on at most ``batch_pixels`` pixels per call.

    Images larger than ``tile`` are evaluated in overlapping tiles blended by a raised-cosine crossfade
    (:func:`sda_cli.tiles.map_tiles`); batches of small images in chunks. The caller's state stays whole, so a
    sampler draws one noise field per image and its draws have no seams: only :math:`\hat{x}` is stitched. With a
    ``grid`` (a local network's downsampling factor; ``tile`` and ``overlap`` multiples of it) the image is first padded
    to a multiple of it as the network pads (:func:`sda_cli.unet.pad_to_multiple`), so that every tile starts on the
    network's grid, and the result is cropped back.
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        tile: int,
        overlap: int,
        batch_pixels: int,
        on_tiles: Callable[[int], None] | None = None,
        grid: int = 1,
    ) -> None:
        if tile % grid or overlap % grid:
            raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of the grid {grid}")
        self.denoiser, self.tile, self.overlap, self.batch_pixels = denoiser, tile, overlap, batch_pixels
        self.grid = grid
        self.schedule = denoiser.schedule
        self.on_tiles = on_tiles
        """Called after each network call with the number of tiles (or small images) it evaluated."""

    def tiles_per_image(self, height: int, width: int) -> int:
        """Tiles in one evaluation of an image of this size (1 when it is not tiled)."""
        height, width = (-(-side // self.grid) * self.grid for side in (height, width))
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
            padded = pad_to_multiple(x_t, self.grid)
            out = map_tiles(network, padded, self.tile, self.overlap, batch_pixels=self.batch_pixels)
            return out[..., : x_t.shape[-2], : x_t.shape[-1]]

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
        with torch.enable_grad():  # the padding is linear: its transpose folds the padded rows back
            x = x_t.detach().requires_grad_(True)
            padded = pad_to_multiple(x, self.grid)
        rows, cols = padded.shape[-2] - x_t.shape[-2], padded.shape[-1] - x_t.shape[-1]
        v_padded = torch.nn.functional.pad(v, (0, cols, 0, rows))
        product = map_tiles_vjp(
            network, padded.detach(), v_padded, self.tile, self.overlap, batch_pixels=self.batch_pixels
        )
        if rows or cols:
            (product,) = torch.autograd.grad(padded, x, product)
        return x_hat, product
