"""``sda sample``: new images from pure noise, through :func:`sda_cli.generate.sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sda_cli.cli.app import app
from sda_cli.cli.common import (
    Device,
    Precision,
    Quiet,
    Seed,
    UsageError,
    Verbose,
    console,
    device_from,
    generator_for,
    model_from,
    say,
    usage,
)
from sda_cli.generate import DEFAULT_SAMPLER, sample
from sda_cli.images import WRITE_EXTENSIONS, make_grid, write_image
from sda_cli.sampler import DEFAULT_STEPS, SAMPLERS, make_sampler

__all__ = ["sample_command"]


@app.command("sample")
def sample_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image file, or a folder: one file each.")],
    n: Annotated[int, typer.Option("-n", min=1, max=100_000, help="Number of samples.")] = 16,
    model: Annotated[
        str | None, typer.Option(help="A shipped model's name or a model file (default: cifar10).")
    ] = None,
    sampler_name: Annotated[
        str, typer.Option("--sampler", help=f"{', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER}).")
    ] = DEFAULT_SAMPLER,
    steps: Annotated[int | None, typer.Option(min=1, max=10_000, help="Sampler steps (default per sampler).")] = None,
    size: Annotated[int | None, typer.Option(min=8, max=4096, help="Image side (default: the training size).")] = None,
    seed: Seed = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples drawn at once.")] = 64,
    device: Device = "auto",
    precision: Precision = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Sample new images by solving the reverse-time SDE or ODE from pure noise."""
    is_folder = output.suffix == "" or output.is_dir()
    if not is_folder and output.suffix.lower() not in WRITE_EXTENSIONS:
        raise UsageError(f"-o {output}: name an image file ({', '.join(WRITE_EXTENSIONS)}) for a grid, or a folder")
    torch_device = device_from(device)
    denoiser = model_from(model, torch_device, verbose, precision, "cifar10")
    try:
        step_count = steps or DEFAULT_STEPS[sampler_name]
        evaluations = make_sampler(sampler_name, denoiser).nfe(step_count)
    except (KeyError, ValueError):
        raise usage(ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}")) from None
    generator = generator_for(seed, torch_device, verbose, "sample")
    console.print(f"{sampler_name}, {step_count} steps: {evaluations} network evaluations per sample")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("sample"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, disable=quiet, transient=True) as progress:
        task = progress.add_task("sample", total=n)
        images = sample(
            denoiser,
            n,
            size=size,
            sampler=sampler_name,
            steps=step_count,
            batch_size=batch_size,
            generator=generator,
            progress=lambda done: progress.update(task, completed=done),
        ).cpu()
    if is_folder:
        digits = len(str(n - 1))
        for i, image in enumerate(images):
            write_image(output / f"sample_{i:0{digits}d}.png", image)
        write_image(output / "grid.png", make_grid(images))
    else:
        write_image(output, make_grid(images))
    say(f"wrote {n} samples to {output}")
