"""``sda denoise``: the posterior of images with white Gaussian noise, through :func:`sda_cli.restore.denoise`."""

from __future__ import annotations

from functools import partial
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
    one_line,
    parse_sigma,
    say,
    usage,
)
from sda_cli.cli.methods import method_help, method_options, steps_help, with_method_options
from sda_cli.cli.runner import Item, pairs, run, side_outputs, stacked, with_spread
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import METHODS
from sda_cli.noise_level import estimate_sigma
from sda_cli.restore import (
    check_request,
    check_sigma,
    denoise,
    parse_inflation,
    pixels_per_batch,
    resolved_inflation,
)
from sda_cli.tiles import LOCAL_TILE, TILE

__all__ = ["Samples", "Std", "Tile", "denoise_command"]

Samples = Annotated[
    int | None,
    typer.Option(min=1, max=1024, help="Draws per image: the output is their mean; --std writes their spread."),
]
Std = Annotated[
    Path | None, typer.Option(help="Also write the per-pixel standard deviation of the draws (needs 2 or more).")
]
Steps = Annotated[int | None, typer.Option(help=steps_help(METHODS.values()))]
Tile = Annotated[
    int | None,
    typer.Option(
        min=32,
        max=4096,
        help=f"Evaluate the network in overlapping tiles of this side (default: {LOCAL_TILE} for a local network, no "
        f"norm and no attention; else {TILE}).",
    ),
]
Clipped = Annotated[
    str,
    typer.Option(
        help="Pixels at 0 or 1 were clipped by the file: auto (yes for 8- and 16-bit files, no for float files), on "
        "or off. Clipped pixels are replaced by their expected unclipped value first (no network evaluation)."
    ),
]
Inflation = Annotated[
    str,
    typer.Option(
        help="posterior, mean: move the draws away from the posterior mean by this factor so that their spread "
        "matches their error: auto (the model's calibrated factor; for a model without one, sure when --sigma is a "
        "number), sure (each image's own, from Stein's unbiased risk estimate of its error; needs the exact sigma "
        "and --samples 2 or more) or a number (1: raw draws)."
    ),
]


@app.command("denoise")
@with_method_options
def denoise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Noisy image files or folders.")],
    output: Output,
    sigma: Annotated[
        str,
        typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.1 or 25/255), or auto to estimate it."),
    ],
    model: Annotated[str | None, typer.Option(help="A shipped model's name or a model file (default: photo).")] = None,
    method: Annotated[str, typer.Option(help=method_help(METHODS.values(), "mmse"))] = "mmse",
    samples: Samples = None,
    std: Std = None,
    steps: Steps = None,
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
    """Denoise images with additive white Gaussian noise of known (or estimated) sigma.

    The observation y = x + sigma n matches the diffusion time t* with sigma_t*/alpha_t* = 2 sigma (model
    units), so p(x | y) = p(x | x_t* = alpha_t* y): mmse returns the posterior mean E(x | y) in one network evaluation;
    posterior returns one sample of p(x | y) by the reverse-time SDE started at t*; mean averages --samples
    of them. Every method of `sda restore` works here too, with the identity operator.
    """
    value = None if sigma.strip().lower() == "auto" else parse_sigma(sigma)
    chosen = method_options(options)
    try:
        _, draws = check_request(
            method, samples, steps, chosen, spread=std is not None, clipped=clipped, inflation=inflation
        )
    except ValueError as error:
        raise usage(error) from None
    if value is None and inflation.strip().lower() == "sure":
        raise UsageError(
            "--inflation sure needs the exact noise level (its estimate of the error moves by n·Δσ²): give --sigma "
            "as a number, or use --inflation auto"
        )
    torch_device = device_from(device)
    found = pairs(inputs, output, force)
    spreads = side_outputs(found, std, "--std", force)
    denoiser = model_from(model, torch_device, verbose, precision, "photo")
    if value is None and inflation.strip().lower() == "auto" and not getattr(denoiser, "inflation", ()):
        inflation = "1"  # auto's SURE needs the exact sigma, not an estimate: raw draws for a model without a table
    if value is not None:
        try:
            check_sigma(denoiser, value)
        except ValueError as error:
            raise usage(error) from None
    generator = generator_for(seed, torch_device, verbose, "denoise")
    if verbose and METHODS[method].calibrated:
        say(f"inflation of the draws: {inflation_in_words(denoiser, method, draws, inflation)}")
    levels: dict[Path, float] = {}
    prepare = partial(_noise_level, levels, value, denoiser)

    settings = dict(method=method, samples=draws, steps=steps, clipped=clipped, tile=tile, inflation=inflation)
    work = with_spread(
        lambda batch, show_tiles: denoise(
            denoiser,
            stacked(batch),
            [levels[item.source] for item in batch],
            bit_depth=batch[0].image.bit_depth,
            generator=generator,
            progress=show_tiles,
            **settings,
            **chosen,
        ),
        spreads,
    )
    budget = pixels_per_batch(draws)
    run("denoise", found, work, budget=budget, bits=bits, max_pixels=max_pixels, quiet=quiet, prepare=prepare)


def inflation_in_words(model: Denoiser, method: str, draws: int, inflation: str) -> str:
    """What ``--inflation`` does to the draws of a calibrated method, for ``--verbose``."""
    resolved = resolved_inflation(model, METHODS[method], parse_inflation(inflation), draws)
    if resolved == "sure":
        return "each image's own factor, from SURE"
    if resolved == "auto":
        return "the model's calibrated table"
    return "none (raw draws)" if resolved == 1.0 else f"the factor {resolved:g}"


def _noise_level(levels: dict[Path, float], value: float | None, denoiser: Denoiser, item: Item) -> None:
    """Record the noise level of an image: ``--sigma``, or its own estimate for ``auto``
    (:func:`sda_cli.noise_level.estimate_sigma`), checked against the model's range."""
    if value is not None:
        levels[item.source] = value
        return
    estimate = estimate_sigma(item.image.pixels)
    try:
        check_sigma(denoiser, estimate)
    except ValueError as error:
        raise ValueError(f"estimated sigma {estimate:.4g}: {one_line(str(error))}; pass --sigma") from None
    say(f"{item.source}: estimated sigma {estimate:.4f} ({255 * estimate:.1f}/255)")
    levels[item.source] = estimate
