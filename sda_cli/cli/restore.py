"""``sda degrade`` and ``sda restore``: observe images through an operator, and recover them with the model as prior."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sda_cli.cli.app import app
from sda_cli.cli.common import (
    DEFAULT_MAX_PIXELS,
    Bits,
    Device,
    Force,
    MaxPixels,
    Output,
    Precision,
    Quiet,
    Seed,
    UsageError,
    Verbose,
    device_from,
    generator_for,
    model_from,
    parse_sigma,
    usage,
)
from sda_cli.cli.denoise import Clipped, Inflation, Samples, Std, Steps, Tile
from sda_cli.cli.methods import method_help, method_options, with_method_options
from sda_cli.cli.noise import observe_files
from sda_cli.cli.runner import pairs, run, side_outputs, stacked, with_spread
from sda_cli.guidance import METHODS
from sda_cli.observe import operator_source
from sda_cli.operators import BOUNDARIES
from sda_cli.restore import check_request, pixels_per_batch, random_stream, restore

__all__ = ["degrade_command", "restore_command"]

Blur = Annotated[float | None, typer.Option(help="Gaussian blur of this standard deviation in pixels.")]
KernelFile = Annotated[
    Path | None, typer.Option("--kernel", help="Convolve with this 2-D kernel (.npy, odd sides, centred), as given.")
]
Scale = Annotated[
    int | None, typer.Option(min=1, max=64, help="Average each KxK block: the observation is K times smaller.")
]
Decimation = Annotated[
    int | None,
    typer.Option("--decimate", min=1, max=64, help="Keep every K-th pixel, after --blur or --kernel: K times smaller."),
]
Boundary = Annotated[
    str,
    typer.Option(help="How --blur and --kernel extend the image past its edges: reflect (mirror) or circular (wrap)."),
]
MaskFile = Annotated[
    Path | None,
    typer.Option(
        "--mask",
        help="Observe pixels where this image is white (>= 0.5), at the observation's size; or a folder of one mask "
        "per input, with the input's file name.",
    ),
]
ObservationSigma = Annotated[
    str, typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.01 or 3/255); 0: noise-free.")
]


def _operators(
    blur: float | None,
    kernel: Path | None,
    scale: int | None,
    decimate: int | None,
    mask: Path | None,
    boundary: str,
    max_pixels: int,
) -> Any:
    if boundary not in BOUNDARIES:
        raise UsageError(f"--boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")
    try:
        return operator_source(
            blur=blur, kernel=kernel, scale=scale, decimate=decimate, mask=mask, boundary=boundary,
            max_pixels=max_pixels,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(f"--{error}") from None


@app.command("degrade")
def degrade_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Output,
    blur: Blur = None,
    kernel: KernelFile = None,
    scale: Scale = None,
    decimate: Decimation = None,
    mask: MaskFile = None,
    boundary: Boundary = "reflect",
    sigma: ObservationSigma = "0",
    seed: Seed = None,
    bits: Bits = None,
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Observe images as y = A x + sigma n: blur, kernel, block average, decimation and mask, in this order, then noise.

    The observation has its own size (--scale K: K times smaller) and its missing pixels are written as 0. 8-bit and
    16-bit outputs are clipped to [0, 1] and quantised; .npy outputs (float32, HWC) keep the exact unclipped values.
    `sda restore` with the same operator options recovers the images.
    """
    operator_for = _operators(blur, kernel, scale, decimate, mask, boundary, max_pixels)
    observe_files("degrade", inputs, output, parse_sigma(sigma, zero=True), operator_for, seed=seed, bits=bits,
                  force=force, max_pixels=max_pixels, verbose=verbose, quiet=quiet)  # fmt: skip


@app.command("restore")
@with_method_options
def restore_command(
    inputs: Annotated[list[Path], typer.Argument(help="Observation files (from `sda degrade`) or folders.")],
    output: Output,
    blur: Blur = None,
    kernel: KernelFile = None,
    scale: Scale = None,
    decimate: Decimation = None,
    mask: MaskFile = None,
    boundary: Boundary = "reflect",
    sigma: ObservationSigma = "0",
    method: Annotated[str, typer.Option(help=method_help(METHODS.values(), "pnp"))] = "pnp",
    samples: Samples = None,
    std: Std = None,
    steps: Steps = None,
    model: Annotated[str | None, typer.Option(help="A shipped model's name or a model file (default: photo).")] = None,
    inflation: Inflation = "auto",
    tile: Tile = None,
    clipped: Clipped = "auto",
    seed: Seed = None,
    bits: Bits = None,
    device: Device = "auto",
    precision: Precision = "auto",
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
    **options: Any,
) -> None:
    """Recover full-size images from observations y = A x + sigma n with the model as prior: one plug-and-play estimate
    (pnp, the default), or the mean of --samples draws of p(x | y) with a sampling method such as mmps.

    Give the operator options that made the observation (see `sda degrade`); the missing pixels of a mask are
    ignored. 8- and 16-bit observations were clipped: their pixels at 0 and 1 (observed ones only, and only when
    sigma > 0) are replaced by their expected unclipped value first, as in `sda denoise`. With no operator option,
    restore is `sda denoise` through the chosen method, with the same random stream.
    """
    value = parse_sigma(sigma, zero=True)
    chosen = method_options(options)
    operator_for = _operators(blur, kernel, scale, decimate, mask, boundary, max_pixels)
    plain = blur is None and kernel is None and scale is None and decimate is None and mask is None
    try:
        _, draws = check_request(
            method,
            samples,
            steps,
            chosen,
            sigma=value,
            spread=std is not None,
            denoising=plain,
            clipped=clipped,
            inflation=inflation,
        )
    except ValueError as error:
        raise usage(error) from None
    torch_device = device_from(device)
    found = pairs(inputs, output, force)
    spreads = side_outputs(found, std, "--std", force)
    denoiser = model_from(model, torch_device, verbose, precision, "photo")
    generator = generator_for(seed, torch_device, verbose, random_stream(plain))

    settings = dict(method=method, samples=draws, steps=steps, clipped=clipped, tile=tile, inflation=inflation)
    work = with_spread(
        lambda batch, show_tiles: restore(
            denoiser,
            stacked(batch),
            value,
            operator_for(batch[0].source),
            bit_depth=batch[0].image.bit_depth,
            generator=generator,
            progress=show_tiles,
            **settings,
            **chosen,
        ),
        spreads,
    )
    own_masks = mask is not None and mask.is_dir()  # one operator per input: one image per call
    budget = 1 if own_masks else pixels_per_batch(draws, (scale or 1) * (decimate or 1))
    run("restore", found, work, budget=budget, bits=bits, max_pixels=max_pixels, quiet=quiet)
