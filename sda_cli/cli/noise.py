"""``sda noise``: add white Gaussian noise, :func:`sda_cli.observe.observe` with the identity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from sda_cli.cli.app import app
from sda_cli.cli.common import (
    DEFAULT_MAX_PIXELS,
    Bits,
    Force,
    MaxPixels,
    Output,
    Quiet,
    Seed,
    Verbose,
    generator_for,
    parse_sigma,
)
from sda_cli.cli.runner import Item, pairs, run
from sda_cli.observe import observe
from sda_cli.operators import Identity, LinearOperator

__all__ = ["noise_command", "observe_files"]


@app.command("noise")
def noise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Output,
    sigma: Annotated[str, typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.1 or 25/255).")],
    seed: Seed = None,
    bits: Bits = None,
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Add white Gaussian noise: y = x + sigma * n, n ~ N(0, I) per pixel and channel.

    8-bit and 16-bit outputs are clipped to [0, 1] and quantised; .npy outputs (float32, HWC) keep the exact
    unclipped values.
    """
    observe_files("noise", inputs, output, parse_sigma(sigma), lambda _: Identity(), seed=seed, bits=bits,
                  force=force, max_pixels=max_pixels, verbose=verbose, quiet=quiet)  # fmt: skip


def observe_files(
    command: str,
    inputs: list[Path],
    output: Path,
    sigma: float,
    operator_for: Callable[[Path], LinearOperator],
    *,
    seed: int | None,
    bits: int | None,
    force: bool,
    max_pixels: int,
    verbose: bool,
    quiet: bool,
) -> None:
    """Write the observation y = A p + sigma n of each input (``operator_for`` its A), from ``command``'s stream."""
    found = pairs(inputs, output, force)
    generator = generator_for(seed, torch.device("cpu"), verbose, command)

    def work(batch: list[Item], _: Any) -> list[torch.Tensor]:
        operator = operator_for(batch[0].source)
        return list(observe(batch[0].image.pixels[None], sigma, operator, generator=generator))

    run(command, found, work, bits=bits, max_pixels=max_pixels, quiet=quiet)
