"""Tiled application of image functions: each pixel from one tile, cuts that move between evaluations, exactness for
local functions, the spread of a global function's outputs kept in the overlaps, bounded memory."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from itertools import pairwise

import pytest
import torch
from scipy.stats import norm
from torch import Tensor, nn

from sda_cli.denoiser import Denoiser
from sda_cli.schedule import CosineSchedule
from sda_cli.tiles import (
    TiledDenoiser,
    default_tile,
    fitted_tile,
    is_local,
    map_tiles,
    map_tiles_vjp,
    moving_cut,
    tile_spans,
    tile_starts,
    tile_weights,
)
from sda_cli.unet import UNet, UNetConfig

SIZES = [(1, 1), (255, 257), (600, 300), (64, 65)]
Z = float(norm.isf(1e-4 / 2))
"""Two-sided bound of the statistical tests, in standard errors: a false alarm once in 10,000 runs."""


def images(height: int, width: int, batch: int = 2, channels: int = 3, seed: int = 0) -> Tensor:
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


class Recorder:
    """Wraps a function and records the shape of every batch passed to it."""

    def __init__(self, fn: object) -> None:
        self.fn, self.shapes = fn, []  # type: ignore[var-annotated]

    def __call__(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.fn(x)  # type: ignore[operator]


def local_net(radius: int, channels: int = 3, seed: int = 0) -> nn.Module:
    """``radius`` 3x3 convolutions with zero padding and nonlinearities: receptive radius ``radius``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(radius):
        layers += [nn.Conv2d(channels if k == 0 else 8, 8 if k < radius - 1 else channels, 3, padding=1)]
        if k < radius - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (128, 32), (64, 32), (64, 0)])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_identity_and_pointwise_functions_are_exact(height: int, width: int, tile: int, overlap: int) -> None:
    x = images(height, width)
    torch.testing.assert_close(map_tiles(lambda t: t, x, tile, overlap), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(map_tiles(lambda t: 2 * t + 1, x, tile, overlap), 2 * x + 1, rtol=1e-6, atol=1e-6)


def test_the_weights_are_a_partition_of_unity() -> None:
    for size, tile, overlap in ((600, 128, 32), (257, 64, 16), (129, 128, 64), (100, 128, 32), (1000, 64, 1)):
        starts, weights = tile_starts(size, tile, overlap), tile_weights(size, tile, overlap)
        total = torch.zeros(size, dtype=torch.float64)
        for start, weight in zip(starts, weights, strict=True):
            assert bool((weight >= 0).all())
            total[start : start + len(weight)] += weight
        torch.testing.assert_close(total, torch.ones(size, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert tile_starts(600, 128, 32) == [0, 96, 192, 288, 384, 472]


def test_small_images_go_through_in_one_call() -> None:
    recorder = Recorder(lambda t: t + 1)
    x = images(100, 128)
    torch.testing.assert_close(map_tiles(recorder, x, 128, 32), x + 1)
    assert recorder.shapes == [(2, 3, 100, 128)]


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(255, 257, 64, 16), (300, 200, 128, 32)])
def test_local_network_is_exact_within_the_margin(height: int, width: int, tile: int, overlap: int) -> None:
    """Receptive radius overlap // 4: every pixel's output comes from tiles where its receptive field is whole."""
    x = images(height, width)
    net = local_net(overlap // 4)
    with torch.no_grad():
        full = net(x)
        tiled = map_tiles(net, x, tile, overlap, batch_pixels=3 * tile * tile)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)


def test_local_network_beyond_the_margin_is_exact_at_central_cuts_and_close_at_the_extremes() -> None:
    """Receptive radius 6 with overlap 16 (margin 4, ramp 8): a cut at u in [1/4, 3/4] keeps every pixel at least 6
    pixels from the edges of the tile that gives it, so the result is exact; at u = 0 or 1 the pixels 4-5 from a cut
    edge come from a tile whose output there is off (measured 8.6e-3 and 4.9e-3 against outputs up to 0.15), and
    the tiles' interiors stay exact."""
    x = images(255, 257)
    net = local_net(6)
    with torch.no_grad():
        full = net(x)
        for u in (0.25, 0.5, 0.75):
            torch.testing.assert_close(map_tiles(net, x, 64, 16, cut=(u, u)), full, rtol=1e-5, atol=1e-5)
        for u in (0.0, 1.0):
            error = (map_tiles(net, x, 64, 16, cut=(u, u)) - full).abs()
            assert 1e-4 < float(error.max()) < 0.1 * float(full.abs().max()), (u, float(error.max()))
            assert float(error[..., 20:40, 20:40].max()) < 1e-6  # inside the first tile, far from every cut


class TileShift:
    """A denoiser that adds to each tile its own mean (as a tile-wide normalisation would shift it)."""

    schedule = CosineSchedule()

    def __call__(self, x: Tensor, t: float, /) -> Tensor:
        return x + x.mean(dim=(1, 2, 3), keepdim=True)


def test_moving_cuts_average_to_a_linear_crossfade() -> None:
    """``TileShift`` on a smooth image, whose tiles have different means: one evaluation takes each pixel from one
    tile, so the output steps by the full difference of two tiles' shifts at each cut. The cut moves from one
    evaluation to the next, so the mean of K evaluations is the crossfade by the fraction of the K cuts on either side
    of each pixel, which falls linearly across the ramp of R = overlap - 2 (overlap // 4) pixels (16 here) as K
    grows: a step between neighbouring pixels is at most the spread of the shifts times the largest fraction of the
    K cut positions in an interval of length 1/R of [0, 1), and the low-discrepancy sequence puts at most 1.5 K / R
    there (6 of 64)."""

    def largest_step(out: Tensor) -> float:
        return max(float(out.diff(dim=-1).abs().max()), float(out.diff(dim=-2).abs().max()))

    rows, cols = torch.meshgrid(torch.arange(300.0), torch.arange(300.0), indexing="ij")
    x = (torch.sin(rows / 23) + torch.cos(cols / 31))[None, None]
    tile, overlap, count = 64, 32, 64
    ramp = overlap - 2 * (overlap // 4)
    tiled = TiledDenoiser(TileShift(), tile, overlap, batch_pixels=tile * tile)
    shifts = [tiled(x, 0.5) - x for _ in range(count)]
    one, mean = shifts[0], sum(shifts) / count
    fraction = 0.0
    for axis in (0, 1):
        u = torch.tensor([moving_cut(k)[axis] for k in range(count)], dtype=torch.float64)
        for i in range(-1, ramp):
            fraction = max(fraction, float(((u >= (i + 0.5) / ramp) & (u < (i + 1.5) / ramp)).double().mean()))
    assert fraction <= 1.5 / ramp
    spread = float(one.max() - one.min())
    assert largest_step(mean) <= fraction * spread + 1e-5, (largest_step(mean), fraction * spread)
    assert largest_step(one) > 4 * largest_step(mean), (largest_step(one), largest_step(mean))


@pytest.mark.parametrize("grid", [1, 4, 16])
def test_fitted_tile_is_the_least_side_with_as_many_tiles(grid: int) -> None:
    """``fitted_tile`` against a search over every side: for image sizes from one tile to eight, the fitted side is a
    multiple of the grid between twice the overlap and the tile, gives each axis as many tiles as the full tile does
    (so no more network calls), and no smaller multiple of the grid does; for 1600 x 1200 with 512 and 32 on the grid
    of 16 it is 432, 2.2 megapixels in 12 tiles against 3.1 at 512."""
    tile, overlap = 128, 16
    for height, width in [(130, 128), (200, 700), (256, 256), (241, 1000), (1024, 96), (640, 512)]:
        height, width = (-(-side // grid) * grid for side in (height, width))
        side = fitted_tile(height, width, tile, overlap, grid)
        assert side % grid == 0 and 2 * overlap <= side <= tile
        counts = [len(tile_starts(size, tile, overlap)) for size in (height, width)]
        assert [len(tile_starts(size, side, overlap)) for size in (height, width)] == counts
        for smaller in range(2 * overlap, side, grid):
            assert [len(tile_starts(size, smaller, overlap)) for size in (height, width)] != counts
    assert fitted_tile(1200, 1600, 512, 32, 16) == 432


def test_tiles_are_batched_within_the_pixel_budget() -> None:
    """A 2048x2048 image in 256 tiles: no call gets more than batch_pixels pixels, and the result does not depend
    on the grouping."""
    x = torch.rand(1, 3, 2048, 2048, generator=torch.Generator().manual_seed(1))
    budget = 4 * 256 * 256
    recorder = Recorder(lambda t: t * 0.5)
    out = map_tiles(recorder, x, 256, 32, batch_pixels=budget)
    assert max(n * h * w for n, _, h, w in recorder.shapes) <= budget
    assert all((h, w) == (256, 256) for _, _, h, w in recorder.shapes)
    assert sum(n for n, _, _, _ in recorder.shapes) == len(tile_starts(2048, 256, 32)) ** 2 == 81
    torch.testing.assert_close(out, 0.5 * x)
    net = local_net(2, seed=3)
    small = images(300, 280, batch=3, seed=4)
    with torch.no_grad():
        one = map_tiles(net, small, 64, 16, batch_pixels=1)
        many = map_tiles(net, small, 64, 16, batch_pixels=1 << 20)
    torch.testing.assert_close(one, many, rtol=1e-6, atol=1e-6)


def test_peak_memory_is_a_few_image_buffers() -> None:
    """A 4096x4096 RGB float32 image (201 MB): running a function through map_tiles raises the peak resident
    memory by the output buffer and one batch of tiles, well under two more image buffers."""
    script = textwrap.dedent(
        """
        import resource, torch
        from sda_cli.tiles import map_tiles
        torch.set_num_threads(1)
        torch.manual_seed(0)
        x = torch.rand(1, 3, 4096, 4096)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = map_tiles(lambda t: t * 2.0, x, 256, 32)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.equal(y[0, :, :100, :100], 2 * x[0, :, :100, :100])
        print((after - before) * 1024, x.numel() * 4)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    increase, buffer = (int(v) for v in result.stdout.split())
    assert increase < 1.5 * buffer, (increase / 2**20, buffer / 2**20)


def test_bad_arguments() -> None:
    x = images(100, 100)
    with pytest.raises(ValueError, match="B, C, H, W"):
        map_tiles(lambda t: t, x[0])
    with pytest.raises(ValueError, match="tile"):
        map_tiles(lambda t: t, x, 0)
    with pytest.raises(ValueError, match="overlap"):
        map_tiles(lambda t: t, x, 64, 33)
    with pytest.raises(ValueError, match="overlap"):
        map_tiles(lambda t: t, x, 64, -1)
    with pytest.raises(ValueError, match="batch_pixels"):
        map_tiles(lambda t: t, x, 64, 16, batch_pixels=0)
    with pytest.raises(ValueError, match="fn must map"):
        map_tiles(lambda t: t[..., 1:, :], x, 64, 16)
    for cut in ((0.5, 1.5), (-0.1, 0.5), (0.5,)):
        with pytest.raises(ValueError, match="cut"):
            map_tiles(lambda t: t, x, 64, 16, cut=cut)  # type: ignore[arg-type]


def test_each_pixel_comes_from_one_tile_away_from_its_edges() -> None:
    """For cuts across [0, 1] the weights are 0/1 masks, one tile per pixel, each tile's a run of pixels (its span);
    the tile that gives a pixel has it at least overlap // 4 pixels from each of its edges inside the image; and the
    cut between two tiles that overlap on [a, e) lies at c = a + m + u (e - a - 2m): the pixels p with p + 1/2 < c
    come from the first."""
    cases = ((600, 128, 32), (257, 64, 16), (129, 128, 64), (100, 128, 32), (1000, 64, 1), (300, 64, 0), (200, 64, 32))
    for size, tile, overlap in cases:
        starts = tile_starts(size, tile, overlap)
        length, margin = min(tile, size), overlap // 4
        for u in (0.0, 0.1, 0.5, 0.77, 1.0):
            weights, spans = tile_weights(size, tile, overlap, u), tile_spans(size, tile, overlap, u)
            total = torch.zeros(size, dtype=torch.float64)
            for start, weight, (lo, hi) in zip(starts, weights, spans, strict=True):
                assert set(weight.unique().tolist()) <= {0.0, 1.0}
                assert (weight.nonzero().flatten() + start).tolist() == list(range(lo, hi)) and lo < hi
                assert start == 0 or lo - start >= margin
                assert start + length == size or start + length - hi >= margin
                total[start : start + length] += weight
            assert torch.equal(total, torch.ones(size, dtype=torch.float64))
            for (before, after), (_, boundary) in zip(pairwise(starts), spans, strict=False):
                a, e = after, before + length
                c = a + margin + u * (e - a - 2 * margin)
                assert boundary - 0.5 < c <= boundary + 0.5, (size, tile, overlap, u, boundary, c)


@pytest.mark.parametrize("cut", [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), moving_cut(7)])
@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(255, 257, 64, 16), (300, 200, 128, 32)])
def test_local_network_is_exact_within_the_margin_at_every_cut(
    height: int, width: int, tile: int, overlap: int, cut: tuple[float, float]
) -> None:
    """Receptive radius overlap // 4: wherever the cut lies, even at an end of its ramp, every pixel comes from a tile
    in which its receptive field is whole."""
    x = images(height, width)
    net = local_net(overlap // 4)
    with torch.no_grad():
        tiled = map_tiles(net, x, tile, overlap, cut=cut, batch_pixels=3 * tile * tile)
        torch.testing.assert_close(tiled, net(x), rtol=1e-5, atol=1e-5)


class TileMean(nn.Module):
    """A global denoiser: x_hat = x / 2 + sqrt(h w) * (the tile's mean, per channel). Its output at a pixel depends on
    the whole tile, so two tiles give different outputs in their overlap; for white noise in, every pixel of every
    h x w tile has the same variance 1/4 + 1 + 1/sqrt(h w)."""

    schedule = CosineSchedule()

    def forward(self, x: Tensor, t: float) -> Tensor:
        return 0.5 * x + x.mean(dim=(-2, -1), keepdim=True) * math.sqrt(x.shape[-2] * x.shape[-1])


def ramps(size: int, tile: int, overlap: int) -> Tensor:
    """The pixels along an axis where a cut may lie: [a + m, e - m) for each overlap [a, e), m = overlap // 4."""
    band = torch.zeros(size, dtype=torch.bool)
    margin, length = overlap // 4, min(tile, size)
    for before, after in pairwise(tile_starts(size, tile, overlap)):
        band[after + margin : before + length - margin] = True
    return band


def test_a_global_function_keeps_its_spread_in_the_overlaps() -> None:
    """``TileMean`` tiled (16-pixel tiles, overlap 8) on 24 x 30 images of white noise, 4000 of them in four
    evaluations (four cuts): the mean square of the output (its variance: the output's mean is 0) over the pixels
    where cuts lie (rows or columns in a ramp, the last column tile overlapping its neighbour by 10) equals that over
    the other pixels. Each sample gives d = (mean square in the band) - (mean square elsewhere), independent across
    samples: |mean d| must be within Z standard errors of it (two-sided, level 1e-4). A blend of two tiles' outputs
    there has the variance of a mean of two correlated estimates, less than either's: the raised-cosine crossfade
    gave mean d = -0.135, 37 standard errors below 0 (band / elsewhere 0.896)."""
    tile, overlap, height, width, count = 16, 8, 24, 30, 4000
    tiled = TiledDenoiser(TileMean(), tile, overlap, batch_pixels=1 << 16)
    band = ramps(height, tile, overlap)[:, None] | ramps(width, tile, overlap)[None, :]
    assert tile_starts(width, tile, overlap) == [0, 8, 14] and 0 < int(band.sum()) < band.numel() / 2
    generator = torch.Generator().manual_seed(0)
    out = torch.cat([tiled(torch.randn(count // 4, 3, height, width, generator=generator), 0.5) for _ in range(4)])
    square = out.double().square()
    d = square[..., band].mean(dim=(1, 2)) - square[..., ~band].mean(dim=(1, 2))
    error = Z * float(d.std()) / math.sqrt(count)
    assert abs(float(d.mean())) < error, (float(d.mean()), error)
    expected = 0.25 + 1 + 1 / tile
    assert abs(float(square.mean()) / expected - 1) < 0.05, float(square.mean())
    assert tiled.evaluations == 4


def test_the_cut_moves_between_evaluations_and_is_reproducible() -> None:
    """The cuts u_k = frac(1/2 + k g) of rows and columns start at the middle of the ramp and spread evenly over
    [0, 1) (no gap over 2.5 / n among the first n = 256); each evaluation of a ``TiledDenoiser`` is ``map_tiles`` at
    the cut of its count, so its outputs differ from one evaluation to the next only where a cut may lie, and a new
    ``TiledDenoiser`` repeats them to the bit."""
    cuts = [moving_cut(k) for k in range(256)]
    assert cuts[0] == (0.5, 0.5)
    for axis in (0, 1):
        u = sorted(cut[axis] for cut in cuts)
        assert 0 <= u[0] and u[-1] < 1
        assert max(b - a for a, b in pairwise([*u, u[0] + 1])) < 2.5 / len(u)
    net = TileMean()
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(6))
    runs = []
    for _ in range(2):
        tiled = TiledDenoiser(net, 16, 8, batch_pixels=5 * 16 * 16)
        runs.append([tiled(x, 0.5) for _ in range(4)])
    band = ramps(40, 16, 8)[:, None] | ramps(36, 16, 8)[None, :]
    for out, following in pairwise(runs[0]):
        assert not torch.equal(out[..., band], following[..., band])
        assert torch.equal(out[..., ~band], following[..., ~band])
    for k, (out, again) in enumerate(zip(*runs, strict=True)):
        assert torch.equal(out, again)
        assert torch.equal(out, map_tiles(lambda z: net(z, 0.5), x, 16, 8, cut=moving_cut(k)))


class TinyGlobal(nn.Module):
    """A small network that sees its whole input, as the CIFAR-10 model does: x + conv(tanh(group norm(conv(x))))
    with one group (the norm's statistics are those of the whole tile)."""

    schedule = CosineSchedule()

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.inner = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.outer = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: Tensor, t: float) -> Tensor:
        return x + self.outer(torch.tanh(self.norm(self.inner(x))))


def test_forward_and_products_share_the_cut_of_their_evaluation() -> None:
    """A global network tiled on 2 x 3 x 24 x 30 images (tiles of 16, overlap 8, three tiles per call), float64:
    ``mean_and_vjp`` at evaluation k gives x_hat and J^T v of ``map_tiles`` at ``moving_cut(k)`` (autograd through
    it), for k = 0..3, and x_hat is what a call at that count gives; ``linearise`` counts one evaluation, and its
    products, however many, are those of its own cut, not the next one's (the two differ). At one cut, <J u, v> by
    central differences of ``map_tiles`` equals <u, ``map_tiles_vjp``>."""
    net = TinyGlobal().double()
    tiled = TiledDenoiser(net, 16, 8, batch_pixels=3 * 16 * 16)
    generator = torch.Generator().manual_seed(3)
    x, u, v, w = (torch.randn(2, 3, 24, 30, generator=generator, dtype=torch.float64) for _ in range(4))

    def through(cut: tuple[float, float], cotangent: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = x.clone().requires_grad_(True)
            out = map_tiles(lambda z: net(z, 0.5), leaf, 16, 8, cut=cut, batch_pixels=3 * 16 * 16)
            (gradient,) = torch.autograd.grad(out, leaf, cotangent)
        return out.detach(), gradient

    for k in range(4):
        assert tiled.evaluations == k
        x_hat, product = tiled.mean_and_vjp(x, 0.5, lambda _: v)
        expected_hat, expected = through(moving_cut(k), v)
        torch.testing.assert_close(x_hat, expected_hat, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(product, expected, rtol=1e-12, atol=1e-12)
        tiled.evaluations = k
        torch.testing.assert_close(tiled(x, 0.5), x_hat, rtol=0, atol=0)
    x_hat, vjp = tiled.linearise(x, 0.5)
    assert tiled.evaluations == 5
    products = [vjp(v), vjp(w), vjp(v)]
    assert tiled.evaluations == 5
    torch.testing.assert_close(x_hat, through(moving_cut(4), v)[0], rtol=1e-12, atol=1e-12)
    for cotangent, product in zip((v, w, v), products, strict=True):
        torch.testing.assert_close(product, through(moving_cut(4), cotangent)[1], rtol=1e-12, atol=1e-12)
    assert float((through(moving_cut(5), v)[1] - products[0]).abs().max()) > 1e-3
    cut, step = moving_cut(2), 1e-5
    with torch.no_grad():
        plus, minus = (map_tiles(lambda z: net(z, 0.5), x + sign * step * u, 16, 8, cut=cut) for sign in (1, -1))
    directional = float(((plus - minus) * v).sum()) / (2 * step)
    product = map_tiles_vjp(lambda z: net(z, 0.5), x, v, 16, 8, cut=cut)
    assert math.isclose(directional, float((u * product).sum()), rel_tol=1e-7), (directional, (u * product).sum())


# ---------------------------------------------------------------------------------------------------------------
# The photo model's kind of network (local: no norm, no attention) in its default tiles

LOCAL_UNET = UNetConfig(channels=3, widths=(8, 16), blocks=1, attention_levels=(), patch=2, norm="none")
"""The shipped photo model's architecture in miniature: pixel-unshuffle stem (patch 2), no group norm, no attention,
two levels, so its downsampling factor is 4 (the photo model's is 16)."""


def local_denoiser() -> Denoiser:
    """A ``Denoiser`` on a random local U-Net; the layers that start at zero (each residual block's second
    convolution, the head) are drawn too, so that every path carries signal and the output is of order 1."""
    torch.manual_seed(0)
    network = UNet(LOCAL_UNET).eval()
    for parameter in network.parameters():
        if not bool(parameter.any()):
            nn.init.normal_(parameter, std=0.1)
    return Denoiser(network, CosineSchedule()).eval()


def test_only_local_networks_get_fitted_tiles() -> None:
    """``restore`` shrinks tiles only for a local network (``is_local``): a network with group norm or attention keeps
    the context of its full tile. Through ``TiledDenoiser``: 12 fitted tiles of 432² against 12 of 512² for the same
    1600 x 1200 image."""
    local = local_denoiser()
    grouped = Denoiser(UNet(UNetConfig(channels=3, widths=(8, 16), blocks=1, attention_levels=())), CosineSchedule())
    assert is_local(local) and not is_local(grouped)
    fitted = TiledDenoiser(local, 512, 32, batch_pixels=1 << 16, grid=16, fit=True)
    kept = TiledDenoiser(local, 512, 32, batch_pixels=1 << 16, grid=16)
    assert fitted.tiles_per_image(1200, 1600) == kept.tiles_per_image(1200, 1600) == 12
    assert (fitted._side(1200, 1600), kept._side(1200, 1600)) == (432, 512)


def test_restore_fits_tiles_to_the_image_only_for_a_local_network() -> None:
    """``sda_cli.restore.restore`` wires ``is_local`` to the tiler: the sides of the tiles its network is called on
    (a forward pre-hook on the backbone) are :func:`fitted_tile`'s for a local network, below the default side, and
    the default side itself for a network with group norm."""
    from sda_cli.restore import restore

    grouped = Denoiser(UNet(UNetConfig(channels=3, widths=(8, 16), blocks=1, attention_levels=())), CosineSchedule())
    shapes: list[tuple[int, ...]] = []
    for model, (height, width) in ((local_denoiser(), (560, 600)), (grouped.eval(), (70, 72))):
        side, overlap, grid = default_tile(model)
        expected = fitted_tile(height, width, side, overlap, grid) if is_local(model) else side
        assert is_local(model) == (expected < side)
        shapes.clear()
        hook = model.backbone.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[-2:])))
        try:
            restore(model, torch.rand(3, height, width), 0.05, method="pnp", steps=1, seed=0)
        finally:
            hook.remove()
        assert shapes and set(shapes) == {(expected, expected)}


def receptive_radius(model: Denoiser) -> int:
    """How far an output pixel sees: the largest offset, along rows or columns, of an input pixel with a non-zero
    gradient for the centre pixel of a 160 x 160 image (by autograd)."""
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2), requires_grad=True)
    model(x, 0.3)[0, :, 80, 80].sum().backward()
    assert x.grad is not None
    seen = (x.grad[0].abs().sum(0) > 0).nonzero() - 80
    assert int(seen.abs().max()) < 79, "the receptive field reaches the test image's edge: use a larger one"
    return int(seen.abs().max())


def distance_to_cuts(size: int, tile: int, overlap: int) -> Tensor:
    """For each pixel along an axis, its distance to the nearest tile edge inside the image (a cut)."""
    distance = torch.full((size,), size)
    index = torch.arange(size)
    for start in tile_starts(size, tile, overlap):
        for edge in (start - 0.5, start + tile - 0.5):  # the boundary between two pixels
            if 0 < edge < size - 1:
                distance = torch.minimum(distance, (index - edge).abs().floor().long())
    return distance


@pytest.mark.parametrize(("height", "width"), [(560, 600), (1000, 1032)])
def test_local_unet_in_default_tiles_is_the_whole_image_beyond_its_receptive_field(height: int, width: int) -> None:
    """A random local U-Net through ``TiledDenoiser`` with ``default_tile``'s tile and overlap for a local network
    (512 and 32: blend margin 8, ramp 16; the tiles shrunk to :func:`fitted_tile`'s 316 and 368) against one
    evaluation of the whole image, float32, on image sizes whose tile starts are multiples of the network's factor 4
    (rows 0, 244 / cols 0, 284; and 0, 336, 632 / 0, 336, 664):

    * at every pixel farther than the receptive radius R (61 pixels, measured by autograd) from every tile edge inside
      the image the two agree to float32 rounding, 1e-6 (measured 1.2e-7: each tile computes the same numbers
      there), in each of four evaluations, whose cuts differ;
    * within R of a tile edge they do not, and cannot: a tile sees zero padding where the image goes on, and the
      margin of 8 pixels is much less than R. Taking each pixel at least 8 pixels from the edges of its tile keeps
      the difference below 5e-3 against outputs of order 2 (measured up to 3.3e-3 over the first eight cuts at
      1000 x 1032, 1.2e-3 at 560 x 600; 3.0e-4 and 1.2e-7 at the first cut, the middle of the ramp); pixels at a tile
      edge (overlap 0) give 0.16.

    So "a tile gives the output of the whole image away from its edges" holds beyond R; nearer, the output is a
    close approximation. It holds only when each tile starts on the network's grid: see the next test."""
    model = local_denoiser()
    radius = receptive_radius(model)
    tile, overlap, grid = default_tile(model)
    assert (tile, overlap, grid) == (512, 32, LOCAL_UNET.factor) and radius > overlap // 4
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    side = fitted_tile(height, width, tile, overlap, grid)
    assert side == {560: 316, 1000: 368}[height]
    near = torch.minimum(
        distance_to_cuts(height, side, overlap)[:, None], distance_to_cuts(width, side, overlap)[None, :]
    )
    assert bool((near <= radius).any()) and bool((near > radius).any())
    tiled = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20, grid=grid, fit=True)
    with torch.no_grad():
        whole = model(x, 0.3)
        for _ in range(4):
            error = (tiled(x, 0.3) - whole).abs().amax(dim=(0, 1))
            assert float(error[near > radius].max()) < 1e-6, float(error[near > radius].max())
            assert float(error.max()) < 5e-3, float(error.max())


def test_local_unet_in_default_tiles_off_the_network_grid() -> None:
    """As above for a 560 x 602 image, whose last column of tiles (fitted side 317) would start at 602 - 317 = 285,
    not a multiple of the network's factor 4: a strided U-Net is shift-equivariant only for shifts by multiples of its
    factor, so such a tile computes other numbers than the whole image everywhere, not only near its cuts (measured
    before tiles were put on the grid: 0.18 beyond the receptive radius). ``TiledDenoiser`` with the grid pads the
    image to 604 columns as the network does, cuts tiles of 320 on the grid (the last at 284) and crops: beyond the
    receptive radius of
    every cut it gives the whole image's numbers. Without the grid (``grid=1``) it must fail, which the second half
    checks, so that this test cannot pass for the wrong reason."""
    model = local_denoiser()
    radius = receptive_radius(model)
    tile, overlap, grid = default_tile(model)
    height, width = 560, 602
    padded_height, padded_width = (-(-side // grid) * grid for side in (height, width))
    side = fitted_tile(padded_height, padded_width, tile, overlap, grid)
    off_grid_side = fitted_tile(height, width, tile, overlap)
    assert tile_starts(width, off_grid_side, overlap)[-1] % grid != 0
    assert tile_starts(padded_width, side, overlap)[-1] % grid == 0
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x, 0.3)
        tiled = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20, grid=grid, fit=True)(x, 0.3)
        off_grid = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20, fit=True)(x, 0.3)
    near = torch.minimum(
        distance_to_cuts(padded_height, side, overlap)[:height, None],
        distance_to_cuts(padded_width, side, overlap)[None, :width],
    )
    error = (tiled - whole).abs().amax(dim=(0, 1))
    assert float(error[near > radius].max()) < 1e-6, float(error[near > radius].max())
    assert float(error.max()) < 1e-3, float(error.max())
    assert float((off_grid - whole).abs().amax(dim=(0, 1))[near > radius].max()) > 1e-2


def test_tiled_products_on_the_grid_are_the_transposed_jacobian() -> None:
    """``mean_and_vjp`` of a tiled local network on an image off its grid (70 x 98 pixels, tiles of 32 on a grid of
    4: padded to 72 x 100, cropped back) is the transpose of the tiled map's own Jacobian: for random u and v,
    <J u, v> by central differences of the tiled forward map equals <u, J^T v> (float64; the padding's transpose folds
    the padded rows and columns back; the three passes through the cut of one evaluation, as the cut moves from one
    evaluation to the next). Measured agreement 4e-6 relative; cropping instead of folding is 1e-2 off."""
    model = local_denoiser().double()
    side, overlap, grid = default_tile(model, tile=32)
    assert (side, overlap, grid) == (32, 4, 4)
    tiled = TiledDenoiser(model, side, overlap, batch_pixels=4 * side * side, grid=grid)
    generator = torch.Generator().manual_seed(2)
    x, u, v = (torch.randn(1, 3, 70, 98, generator=generator, dtype=torch.float64) for _ in range(3))
    step = 1e-3  # the network's output is rounded to float32 (Denoiser casts it): a smaller step is noise

    def shifted(by: float) -> Tensor:
        tiled.evaluations = 3  # every pass through the cut of one evaluation, off the middle of the ramp
        return tiled(x + by * u, 0.3)

    directional = ((shifted(step) - shifted(-step)) * v).sum() / (2 * step)
    tiled.evaluations = 3
    _, product = tiled.mean_and_vjp(x, 0.3, lambda _: v)
    assert torch.isclose(directional, (u * product).sum(), rtol=1e-4), (float(directional), float((u * product).sum()))
