"""``sda calibrate``: fit a model's inflation of posterior draws on clean images, through
:func:`sda_cli.calibration.calibrate`, and write a calibrated copy of its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sda_cli.calibration import STEPS, Calibration, calibrate, check_calibration, write_calibrated
from sda_cli.cli.app import app
from sda_cli.cli.common import (
    DEFAULT_MAX_PIXELS,
    Device,
    MaxPixels,
    Precision,
    Quiet,
    Seed,
    UsageError,
    Verbose,
    console,
    device_from,
    model_from,
    parse_sigma,
    say,
    usage,
)
from sda_cli.images import image_files, read_image
from sda_cli.models import resolve_model

__all__ = ["calibrate_command"]

SIGMAS = "0.05,0.1,0.2,0.3"


def parse_sigmas(text: str) -> list[float]:
    """``--sigmas``: noise levels in [0, 1] pixel units separated by commas (``0.05,0.1`` or ``13/255,25/255``),
    sorted, each once."""
    try:
        levels = sorted({parse_sigma(piece) for piece in text.split(",")})
    except UsageError as error:
        raise UsageError(
            f"--sigmas takes noise levels in [0, 1] pixel units separated by commas, such as {SIGMAS} or 25/255 "
            f"({str(error).removeprefix('--sigma ')})"
        ) from None
    return levels


@app.command("calibrate")
def calibrate_command(
    inputs: Annotated[list[Path], typer.Argument(help="Clean image files or folders, not used to train the model.")],
    model: Annotated[str, typer.Option(help="The model to calibrate: a shipped model's name or a model file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The calibrated copy of the model (.safetensors).")],
    sigmas: Annotated[str, typer.Option(help="Noise levels to fit at, in [0, 1] pixel units.")] = SIGMAS,
    samples: Annotated[int, typer.Option(min=2, max=64, help="Raw posterior draws per image (K).")] = 2,
    steps: Annotated[int, typer.Option(help="Sampler steps: those the calibrated draws are made at.")] = STEPS,
    count: Annotated[int | None, typer.Option(min=1, help="Use the first N images found (default: all).")] = None,
    seed: Seed = None,
    device: Device = "auto",
    precision: Precision = "auto",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Fit the inflation of posterior draws (--inflation auto of posterior and mean) on clean images.

    Each image gets float white Gaussian noise at each --sigmas level (unclipped); the model's MMSE estimate and
    --samples raw draws give the factor by which the draws' spread about the MMSE estimate must grow to match its
    error. Writes a copy of the model with the factors in its config (calibration.inflation; the input is kept unless
    -o names it) and prints, per level, the draw ratio E|x - draw|^2 / E|x - mmse|^2 (2 for exact draws) and the std
    ratio E|x - mean|^2 / ((1 + 1/K) E(std^2)) (1 for an honest --std map), before and after. Images may have any
    sizes (they are processed size by size); grey images on an RGB model are used as RGB; alpha is ignored.
    """
    levels = parse_sigmas(sigmas)
    if output.suffix.lower() != ".safetensors" or output.is_dir():
        raise UsageError(f"-o {output}: name the calibrated model file to write, ending in .safetensors")
    files = image_files(inputs)[:count]
    if not files:
        raise UsageError("no image files found in the inputs; pass clean image files or folders that hold some")
    source = resolve_model(model)
    if source.is_dir():
        raise UsageError(
            f"--model {model} is a diffusers model; sda calibrate writes a calibrated copy of an sda checkpoint "
            "(.safetensors), so pass one of those"
        )
    denoiser = model_from(str(source), device_from(device), verbose, precision, "cifar10")
    try:
        check_calibration(denoiser, levels, samples, steps)
    except ValueError as error:
        raise usage(error) from None
    images = [read_image(path, max_pixels).pixels for path in files]
    with _progress(quiet) as bar:
        task = bar.add_task("calibrate", total=len(images) * len(levels))
        fitted = calibrate(denoiser, images, levels, samples=samples, steps=steps, seed=seed,
                           progress=lambda done, _: bar.update(task, completed=done))  # fmt: skip
    if verbose:
        say(f"seed: {fitted.seed} (the same command with --seed {fitted.seed} repeats this run)")
    write_calibrated(source, output, fitted, fitted_on=f"{len(images)} clean images given to sda calibrate")
    report(fitted)
    say(f"wrote {output}: calibration.inflation at {len(levels)} noise levels, {len(images)} images, K = {samples}, "
        f"{steps} steps")  # fmt: skip


def _progress(quiet: bool) -> Progress:
    """A bar of the images done over all noise levels, on standard error; none with ``--quiet``."""
    counts = TextColumn("{task.completed}/{task.total} images")
    return Progress(
        TextColumn("calibrate"), BarColumn(), counts, TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=quiet, transient=True,
    )  # fmt: skip


def report(fitted: Calibration) -> None:
    """The table of factors and ratios, raw → inflated, one line per level, on standard output."""
    typer.echo(f"{'sigma':>17}  {'factor':>6}  {'draw ratio (2)':>15}  {'std ratio (1)':>15}")
    typer.echo(f"{'':>17}  {'':>6}  {'raw → inflated':>15}  {'raw → inflated':>15}")
    for level in fitted.levels:
        raw, inflated = level.raw, level.inflated
        typer.echo(
            f"{level.sigma:>6.4g} ({255 * level.sigma:4.1f}/255)  {level.factor:6.4f}  "
            f"{raw.draw:6.3f} → {inflated.draw:6.3f}  {raw.std:6.3f} → {inflated.std:6.3f}"
        )
