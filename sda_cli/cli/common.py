"""What the commands share: the console, option types, sigma parsing, the device and the model, one-line errors."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from sda_cli.denoiser import PRECISIONS, Denoiser
from sda_cli.images import DEFAULT_MAX_PIXELS
from sda_cli.models import load_model, pick_device, resolve_model
from sda_cli.seeds import seeded_generator

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_SEED",
    "Bits",
    "Device",
    "Force",
    "MaxPixels",
    "Output",
    "Precision",
    "Quiet",
    "Seed",
    "UsageError",
    "Verbose",
    "console",
    "device_from",
    "generator_for",
    "model_from",
    "one_line",
    "parse_sigma",
    "say",
    "settings",
    "usage",
]

console = Console(stderr=True)
MAX_SEED = 2**63 - 1


class _Settings:
    debug = False
    """Set by :func:`sda_cli.cli.main` from ``--debug`` or ``SDA_DEBUG``: errors then show their traceback too."""


settings = _Settings()


class UsageError(ValueError):
    """A bad option value; the message says what is wrong and what to do (exit code 2)."""


Seed = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=MAX_SEED,
        help="Seed of every random draw (each command has its own stream); without it one is drawn (see --verbose).",
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Print the seed, device and model used.")]
Bits = Annotated[int | None, typer.Option(help="8 or 16 bits for PNG outputs (default: the input's).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Precision = Annotated[
    str, typer.Option(help="Network precision: auto (bf16 where the hardware runs it natively), bf16, fp16, fp32.")
]
Force = Annotated[bool, typer.Option(help="Allow an output to overwrite its input.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
MaxPixels = Annotated[
    int, typer.Option(min=1, help="Refuse images with more pixels (a guard against decompression bombs).")
]
Output = Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")]


def say(message: str) -> None:
    """One line to standard error, as it is (no markup)."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def one_line(text: str) -> str:
    return " ".join(text.split())


def usage(error: Exception) -> UsageError:
    """A library's ``ValueError`` about an option, as a usage error (exit code 2) with its message as it is."""
    return UsageError(one_line(str(error)))


def parse_sigma(text: str, *, zero: bool = False) -> float:
    """``--sigma`` in [0, 1] pixel units: a decimal (``0.2``) or a fraction (``25/255``); 0 only with ``zero``."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--sigma takes a number such as 0.2 or 25/255, not {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        what = "0 (noise-free) or a positive number" if zero else "a positive finite number"
        raise UsageError(f"--sigma must be {what} of [0, 1] pixel units, not {text!r}")
    if value > 10:
        raise UsageError(f"--sigma {text} is far beyond the [0, 1] pixel range; did you mean {text}/255?")
    return value


def device_from(name: str) -> torch.device:
    """``--device``: auto (CUDA when available), cpu, cuda or cuda:N."""
    try:
        return pick_device(name)
    except ValueError as error:
        raise usage(error) from None


def model_from(model: str | None, device: torch.device, verbose: bool, precision: str, default: str) -> Denoiser:
    """``--model`` (a shipped name or a path; none: the command's ``default``) on ``device`` at ``--precision``."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
    path = resolve_model(model, default)
    denoiser = load_model(path, device=device, precision=precision)
    if verbose:
        dtype = getattr(denoiser.backbone, "precision", None) or torch.float32
        say(f"model: {path}; device: {device}; precision: {dtype}")
    return denoiser


def generator_for(seed: int | None, device: torch.device, verbose: bool, command: str) -> torch.Generator:
    """``command``'s generator for ``--seed`` (:func:`sda_cli.seeds.seeded_generator`); ``verbose`` prints the seed
    so that a run can be repeated."""
    generator, used = seeded_generator(seed, command, device)
    if verbose:
        say(f"seed: {used} (the same command with --seed {used} repeats this run)")
    return generator
