"""The Typer app every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    name="sda",
    help="Score-based diffusion on images: train a U-Net score model, add noise, denoise, sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (or set SDA_DEBUG=1).")
    ] = False,
) -> None:
    """Score-based diffusion on images: train a U-Net score model, add noise, denoise, sample."""
