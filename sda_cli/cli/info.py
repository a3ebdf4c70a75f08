"""``sda info``: a checkpoint's config, a diffusers model's parts and schedule, or the shipped models."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sda_cli.checkpoint import parameter_count, read_metadata
from sda_cli.cli.app import app
from sda_cli.diffusers import describe
from sda_cli.models import CHECKPOINTS, SHIPPED, flops_per_pixel, resolve_model

__all__ = ["info_command"]


@app.command("info")
def info_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A shipped model's name, a checkpoint file, a diffusers folder or a cached Hub id; none: list the "
            "shipped models."
        ),
    ] = None,
) -> None:
    """Print a checkpoint's config (the JSON in its metadata) or a diffusers model's, or list the shipped models."""
    if model is not None:
        path = resolve_model(model)
        typer.echo(json.dumps(describe(path) if path.is_dir() else read_metadata(path), indent=2))
        return
    for name, what in SHIPPED.items():
        path = CHECKPOINTS / f"{name}.safetensors"
        if not path.is_file():
            continue
        config = read_metadata(path)
        side = int(config.get("image_size", 32))
        flops = flops_per_pixel(config["model"], side)
        count = parameter_count(config["model"])
        step, data = config.get("training", {}).get("step", "?"), config.get("dataset", "?")
        typer.echo(
            f"{name}: {what}\n  file {path.name}, {path.stat().st_size / 1e6:.1f} MB, {count / 1e6:.1f}M parameters, "
            f"{flops / 1e6:.2f} MFLOP per pixel (forward, {side}x{side} input), trained on {data} for {step} steps"
        )
