"""Tiled application of image functions: exactness, seamless blending, bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import Tensor, nn

from sda_cli.denoiser import Denoiser
from sda_cli.schedule import CosineSchedule
from sda_cli.tiles import TiledDenoiser, default_tile, map_tiles, tile_starts, tile_weights
from sda_cli.unet import UNet, UNetConfig

SIZES = [(1, 1), (255, 257), (600, 300), (64, 65)]


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


def test_local_network_beyond_the_margin_is_close() -> None:
    """Receptive radius 6 with overlap 16 (margin 4): the pixels 4-5 from a cut take weight at most
    sin^2(pi/2 * 1.5/8) = 0.08 from a tile whose output there is off; the measured error is 3e-4 against outputs
    of order 0.3, and zero in the tiles' interiors."""
    x = images(255, 257)
    net = local_net(6)
    with torch.no_grad():
        full = net(x)
        tiled = map_tiles(net, x, 64, 16)
    error = (tiled - full).abs()
    assert float(error.max()) < 1e-2 * float(full.abs().max())
    assert float(error[..., 20:40, 20:40].max()) < 1e-6  # inside the first tile, far from every cut


def test_no_seams_for_functions_that_differ_between_tiles() -> None:
    """fn adds a random constant c_k to each tile (as a tile-wide normalisation would): the output minus the input is
    sum_k w_k c_k, a crossfade, so a step between neighbouring pixels is at most (max c - min c) times the largest
    step of a normalised weight, about pi / 2R for the ramp of R pixels (R = 16 here). Hard cuts (overlap 0) step by
    the full difference of two constants."""

    def shift(t: Tensor) -> Tensor:
        return t + torch.rand(t.shape[0], generator=generator)[:, None, None, None]

    def largest_step(out: Tensor) -> float:
        return max(float(out.diff(dim=-1).abs().max()), float(out.diff(dim=-2).abs().max()))

    x = torch.zeros(1, 1, 300, 300)
    generator = torch.Generator().manual_seed(5)
    blended = map_tiles(shift, x, 64, 32, batch_pixels=1)
    weight_step = max(float(w.diff().abs().max()) for w in tile_weights(300, 64, 32))
    assert weight_step <= 1.05 * torch.pi / (2 * 16)
    spread = float(blended.max() - blended.min())
    assert largest_step(blended) <= weight_step * spread + 1e-6
    generator = torch.Generator().manual_seed(5)
    hard = map_tiles(shift, x, 64, 0, batch_pixels=1)
    assert largest_step(hard) > 4 * largest_step(blended), (largest_step(hard), largest_step(blended))


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
    (512 and 32: blend margin 8, ramp 16) against one evaluation of the whole image, float32, on image sizes whose
    tile starts are multiples of the network's factor 4 (rows 0, 48 / cols 0, 88; and 0, 480, 488 / 0, 480, 520):

    * at every pixel farther than the receptive radius R (61 pixels, measured by autograd) from every cut the two
      agree to float32 rounding, 1e-6 (measured 1.2e-7: each tile computes the same numbers there, and the
      normalised weights sum to one up to an ulp);
    * within R of a cut they do not, and cannot: a tile sees zero padding where the image goes on, and the margin
      of 8 pixels is much less than R. The crossfade keeps the difference below 1e-3 against outputs of order 2
      (measured 2.6e-4 and 3.8e-4); hard cuts (overlap 0, or a flat blend profile) give 0.16, an overlap of 8 0.027.

    So "a tile gives the output of the whole image away from its edges" holds beyond R; nearer, the output is a
    close approximation. It holds only when each tile starts on the network's grid: see the next test."""
    model = local_denoiser()
    radius = receptive_radius(model)
    tile, overlap, grid = default_tile(model)
    assert (tile, overlap, grid) == (512, 32, LOCAL_UNET.factor) and radius > overlap // 4
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x, 0.3)
        tiled = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20, grid=grid)(x, 0.3)
    error = (tiled - whole).abs().amax(dim=(0, 1))
    near = torch.minimum(
        distance_to_cuts(height, tile, overlap)[:, None], distance_to_cuts(width, tile, overlap)[None, :]
    )
    assert bool((near <= radius).any()) and bool((near > radius).any())
    assert float(error[near > radius].max()) < 1e-6, float(error[near > radius].max())
    assert float(error.max()) < 1e-3, float(error.max())


def test_local_unet_in_default_tiles_off_the_network_grid() -> None:
    """As above for a 560 x 602 image, whose last column of tiles would start at 602 - 512 = 90, not a multiple of
    the network's factor 4: a strided U-Net is shift-equivariant only for shifts by multiples of its factor, so such
    a tile computes other numbers than the whole image everywhere, not only near its cuts (measured before tiles
    were put on the grid: 0.18 beyond the receptive radius). ``TiledDenoiser`` with the grid pads the image to 604
    columns as the network does, cuts tiles on the grid (the last at 92) and crops: beyond the receptive radius of
    every cut it gives the whole image's numbers. Without the grid (``grid=1``) it must fail, which the second half
    checks, so that this test cannot pass for the wrong reason."""
    model = local_denoiser()
    radius = receptive_radius(model)
    tile, overlap, grid = default_tile(model)
    height, width = 560, 602
    padded_height, padded_width = (-(-side // grid) * grid for side in (height, width))
    assert tile_starts(width, tile, overlap)[-1] % grid != 0
    assert tile_starts(padded_width, tile, overlap)[-1] % grid == 0
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x, 0.3)
        tiled = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20, grid=grid)(x, 0.3)
        off_grid = TiledDenoiser(model, tile, overlap, batch_pixels=1 << 20)(x, 0.3)
    near = torch.minimum(
        distance_to_cuts(padded_height, tile, overlap)[:height, None],
        distance_to_cuts(padded_width, tile, overlap)[None, :width],
    )
    error = (tiled - whole).abs().amax(dim=(0, 1))
    assert float(error[near > radius].max()) < 1e-6, float(error[near > radius].max())
    assert float(error.max()) < 1e-3, float(error.max())
    assert float((off_grid - whole).abs().amax(dim=(0, 1))[near > radius].max()) > 1e-2


def test_tiled_products_on_the_grid_are_the_transposed_jacobian() -> None:
    """``mean_and_vjp`` of a tiled local network on an image off its grid (70 x 98 pixels, tiles of 32 on a grid of
    4: padded to 72 x 100, cropped back) is the transpose of the tiled map's own Jacobian: for random u and v,
    <J u, v> by central differences of the tiled forward map equals <u, J^T v> (float64; the padding's transpose folds
    the padded rows and columns back). Measured agreement 4e-6 relative; cropping instead of folding is 1e-2 off."""
    model = local_denoiser().double()
    side, overlap, grid = default_tile(model, tile=32)
    assert (side, overlap, grid) == (32, 4, 4)
    tiled = TiledDenoiser(model, side, overlap, batch_pixels=4 * side * side, grid=grid)
    generator = torch.Generator().manual_seed(2)
    x, u, v = (torch.randn(1, 3, 70, 98, generator=generator, dtype=torch.float64) for _ in range(3))
    step = 1e-3  # the network's output is rounded to float32 (Denoiser casts it): a smaller step is noise
    directional = ((tiled(x + step * u, 0.3) - tiled(x - step * u, 0.3)) * v).sum() / (2 * step)
    _, product = tiled.mean_and_vjp(x, 0.3, lambda _: v)
    assert torch.isclose(directional, (u * product).sum(), rtol=1e-4), (float(directional), float((u * product).sum()))
