"""The ``sda`` command line: parse, validate, call the core, report. No mathematics here."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from sda_cli.checkpoint import FORMAT_VERSION, CheckpointError, check_config, parameter_count, read_metadata
from sda_cli.denoiser import PARAMETRISATIONS, PRECISIONS, Denoiser
from sda_cli.generate import DEFAULT_SAMPLER, sample
from sda_cli.guidance import DPS, MMPS, SDA, AnnealedLangevin, DiffPIR, GuidedReverse, PnP
from sda_cli.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    LoadedImage,
    image_files,
    make_grid,
    output_path_for,
    read_image,
    write_image,
)
from sda_cli.models import CHECKPOINTS, SHIPPED, flops_per_pixel, load_model, pick_device, resolve_model
from sda_cli.noise_level import estimate_sigma
from sda_cli.operators import Kernel, LinearOperator, make_operator
from sda_cli.restore import (
    DEFAULT_SAMPLES,
    LOCAL_TILE,
    METHOD_OPTIONS,
    METHODS,
    PIXELS_PER_CALL,
    RESTORE_METHODS,
    SAMPLING_METHODS,
    TILE,
    check_sigma,
    default_steps,
    denoise,
    restore,
)
from sda_cli.sampler import DEFAULT_STEPS, SAMPLERS, make_sampler
from sda_cli.seeds import command_seed, seeded_generator

# sda_cli.train and sda_cli.data import torchvision (about a second): they are imported where they are used.

__all__ = ["app", "command_seed", "main"]

app = typer.Typer(
    name="sda",
    help="Score-based diffusion on images: train a U-Net score model, add noise, denoise, sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)


class UsageError(ValueError):
    """A bad option value; the message says what is wrong and what to do."""


MAX_SEED = 2**63 - 1
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
DOWNLOAD_TIMEOUT = 60.0
TILES_WORTH_A_BAR = 50
"""Network evaluations of tiles (or small images) above which ``denoise`` shows a bar of them: a few seconds."""
"""Seconds without an answer before a CIFAR-10 download gives up."""

_debug = False
"""Set by :func:`main` from ``--debug`` or ``SDA_DEBUG``: per-file errors then show their traceback too."""

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


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} takes comma-separated whole numbers such as 64,128,192, not {text!r}") from None
    return values


def parse_sigma(text: str) -> float:
    """``--sigma`` in [0, 1] pixel units: a decimal (``0.2``) or a fraction (``25/255``)."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--sigma takes a number such as 0.2 or 25/255, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--sigma must be a positive finite number of [0, 1] pixel units, not {text!r}")
    if value > 10:
        raise UsageError(f"--sigma {text} is far beyond the [0, 1] pixel range; did you mean {text}/255?")
    return value


def _load_model(model: str | None, device: torch.device, verbose: bool, precision: str, default: str) -> Denoiser:
    """``--model`` (a shipped name or a path; none: the command's ``default``) on ``device`` at ``--precision``."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
    path = resolve_model(model, default)
    denoiser = load_model(path, device=device, precision=precision)
    if verbose:
        dtype = getattr(denoiser.backbone, "precision", None) or torch.float32
        _say(f"model: {path}; device: {device}; precision: {dtype}")
    return denoiser


def _device(name: str) -> torch.device:
    """``--device``: auto (CUDA when available), cpu, cuda or cuda:N."""
    try:
        return pick_device(name)
    except ValueError as error:
        if "CUDA" in str(error):
            raise UsageError(
                "--device cuda was asked for but no CUDA device is available; use --device cpu or auto"
            ) from None
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def _pairs(inputs: list[Path], output: Path, force: bool) -> list[tuple[Path, Path]]:
    """(input file, output file) for every input image; refuses to overwrite an input unless ``force``."""
    files = image_files(inputs)
    if not files:
        raise UsageError("no image files found in the inputs; pass image files or folders that hold some")
    many = len(files) > 1 or any(p.is_dir() for p in inputs)
    if not many and output.suffix == "" and not output.exists():
        many = True
    pairs = [(f, output_path_for(f, output, many)) for f in files]
    written: dict[Path, Path] = {}
    for source, target in pairs:
        if not force and target.exists() and target.resolve() == source.resolve():
            raise UsageError(f"{target} would overwrite its input; choose another -o or pass --force")
        first = written.setdefault(target.resolve(), source)
        if first != source:
            raise UsageError(
                f"{first} and {source} would both be written to {target}; pass inputs with distinct file names"
            )
    return pairs


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )


class _Failures:
    """Counts per-file failures: each is reported on one line, the rest go on; the exit code says so."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, error: Exception, message: str | None = None) -> None:
        self.count += 1
        _traceback(error)
        _say(f"error: {_one_line(message or str(error))}")

    def exit(self, total: int) -> None:
        if self.count:
            if total > 1:
                _say(f"{self.count} of {total} files failed")
            raise typer.Exit(EXIT_FAILED)


def _write_result(path: Path, pixels: torch.Tensor, image: LoadedImage, bits: int | None) -> None:
    """Write one result; PNG outputs of 16-bit inputs stay 16-bit unless ``bits`` says otherwise."""
    if bits is None:
        bits = 16 if image.bit_depth == 16 and path.suffix.lower() == ".png" else 8
    write_image(path, pixels.cpu(), alpha=image.alpha, bits=None if path.suffix.lower() == ".npy" else bits)


def _generator(seed: int | None, device: torch.device, verbose: bool, command: str) -> torch.Generator:
    """``command``'s generator for ``--seed`` (:func:`sda_cli.seeds.seeded_generator`); ``verbose`` prints the seed
    so that a run can be repeated."""
    generator, used = seeded_generator(seed, command, device)
    if verbose:
        _say(f"seed: {used} (the same command with --seed {used} repeats this run)")
    return generator


def _batches(
    pairs: list[tuple[Path, Path]], max_pixels: int, budget: int, failures: _Failures
) -> Iterator[list[tuple[Path, Path, LoadedImage]]]:
    """Read images in order and group those of one shape and bit depth into batches of at most ``budget`` pixels."""
    pending: dict[tuple[int, ...], list[tuple[Path, Path, LoadedImage]]] = {}
    for source, target in pairs:
        try:
            image = read_image(source, max_pixels=max_pixels)
        except ImageError as error:
            failures.report(error)
            continue
        key = (*image.pixels.shape, image.bit_depth)
        group = pending.setdefault(key, [])
        group.append((source, target, image))
        if len(group) * image.pixels[0].numel() >= budget:
            yield pending.pop(key)
    yield from pending.values()


@app.command("train")
def train_command(
    dataset: Annotated[str, typer.Option(help="'cifar10' or a folder of images (searched recursively).")] = "cifar10",
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder holding cifar-10-batches-py/ (a local copy is accepted).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.safetensors).")] = Path(
        "model.safetensors"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Total optimisation steps (a resumed run counts on).")] = 100_000,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1 << 16, help="Images per step (per process under torchrun).")
    ] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate after warm-up.")] = 4e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Linear learning-rate warm-up steps.")] = 500,
    decay: Annotated[
        int, typer.Option(min=0, help="Linear learning-rate decay to zero over the last N of --steps (0: none).")
    ] = 0,
    ema_decay: Annotated[float, typer.Option(min=0.0, max=1.0, help="EMA decay of the shipped weights.")] = 0.999,
    image_size: Annotated[int, typer.Option(min=8, help="Side of the (square) training images.")] = 32,
    channels: Annotated[int, typer.Option(min=1, max=3, help="1 (grey) or 3 (RGB).")] = 3,
    widths: Annotated[str, typer.Option(help="U-Net widths per level, comma-separated.")] = "64,128,192",
    blocks: Annotated[
        str, typer.Option(help="Residual blocks per level: one count (2) or one per level (2,2,1,1).")
    ] = "2",
    attention: Annotated[
        str, typer.Option(help="Levels with self-attention (0 = the stem's resolution), or none.")
    ] = "2",
    patch: Annotated[
        int, typer.Option(min=1, max=16, help="Space-to-depth factor of the stem: 2 runs the network at half size.")
    ] = 1,
    norm: Annotated[str, typer.Option(help="group (adaptive group norm) or none (a local network, for photos).")] = (
        "group"
    ),
    crop: Annotated[
        int | None,
        typer.Option(min=8, help="Train on random crops of this side of full-size photos (flips, 90° turns)."),
    ] = None,
    half_scale: Annotated[
        bool,
        typer.Option(
            help="With --crop, also crop the photos downscaled by 2 (half the crops): scale augmentation, and "
            "full-resolution colour from JPEGs that store it at half resolution (4:2:0)."
        ),
    ] = False,
    mix_cifar: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.95,
            help="With --crop, this share of the images are mosaics of CIFAR-10 (from --data-dir), whose colour is "
            "at full resolution.",
        ),
    ] = 0.0,
    noise_mean: Annotated[float, typer.Option(help="Mean of log(sigma_t/alpha_t) of the training noise levels.")] = (
        -1.2
    ),
    noise_std: Annotated[
        float, typer.Option(min=0.01, help="Standard deviation of log(sigma_t/alpha_t) of the training noise levels.")
    ] = 1.2,
    parametrisation: Annotated[str, typer.Option(help="edm, v or eps.")] = "edm",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write the checkpoint every N steps.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's training state, or from OUT's weights.")] = False,
    device: Device = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 autocast where the hardware runs it natively), bf16, fp16 or fp32.")
    ] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the U-Net.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of every random draw.")] = 0,
    no_download: Annotated[
        bool,
        typer.Option(
            "--no-download",
            envvar="SDA_NO_DOWNLOAD",
            help="Never download CIFAR-10: fail when no local copy is found (or set SDA_NO_DOWNLOAD=1).",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train a score model by denoising score matching; writes OUT and OUT's training state.

    A checkpoint is written every --checkpoint-every steps, at the end, on Ctrl-C (exit code 130) and on SIGTERM
    (exit code 143); continue with --resume.
    """
    if channels not in (1, 3):
        raise UsageError("--channels must be 1 or 3")
    if parametrisation not in PARAMETRISATIONS:
        raise UsageError(f"--parametrisation must be one of {', '.join(PARAMETRISATIONS)}")
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise UsageError("--precision must be auto, bf16, fp16 or fp32")
    if norm not in ("group", "none"):
        raise UsageError("--norm must be group or none")
    width_list = _ints(widths, "--widths")
    levels = () if attention.strip().lower() == "none" else _ints(attention, "--attention")
    if not 1 <= len(width_list) <= 8 or any(w < 1 or w > 4096 for w in width_list):
        raise UsageError("--widths needs 1 to 8 widths between 1 and 4096, such as 64,128,192")
    block_list = _ints(blocks, "--blocks")
    if len(block_list) not in (1, len(width_list)) or any(n < 1 or n > 16 for n in block_list):
        raise UsageError(f"--blocks needs one count, or one per level ({len(width_list)}), each from 1 to 16")
    factor = patch * 2 ** (len(width_list) - 1)
    side_name, side = ("--crop", crop) if crop is not None else ("--image-size", image_size)
    if side % factor:
        raise UsageError(f"{side_name} must be a multiple of {factor} for {len(width_list)} levels and --patch {patch}")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, not {out.name!r}")
    if (half_scale or mix_cifar) and crop is None:
        raise UsageError("--half-scale and --mix-cifar need --crop: they add images to the random crops")
    model_config = {
        "model": {
            "channels": channels,
            "widths": list(width_list),
            "blocks": block_list[0] if len(block_list) == 1 else list(block_list),
            "attention_levels": list(levels),
            "patch": patch,
            "norm": norm,
        },
        "denoiser": {"parametrisation": parametrisation, "p_mean": noise_mean, "p_std": noise_std},
        "schedule": {"name": "cosine"},
    }
    if not resume:
        try:
            check_config({"format": FORMAT_VERSION, **model_config})
        except CheckpointError as error:
            raise UsageError(f"{error}; change --widths, --blocks or --attention") from None
    torch_device = _device(device)
    _check_writable(out)
    from sda_cli.data import load_dataset
    from sda_cli.train import StepReport, TrainConfig, train

    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        decay=decay,
        ema_decay=ema_decay,
        checkpoint_every=checkpoint_every,
        seed=seed,
        precision=precision,
        compile=compile,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # torchvision's download sets none: it could wait for ever
    try:
        data = load_dataset(dataset, data_dir, image_size, channels, crop, half_scale, mix_cifar, not no_download)
    finally:
        socket.setdefaulttimeout(timeout)
    if main_process:
        skipped = f" ({data.skipped} unreadable files skipped)" if data.skipped else ""
        _say(f"data: {data.name}, {len(data.images)} images{skipped}; device: {torch_device}")

    progress = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not main_process,
    )
    task = progress.add_task("train", total=steps, loss=float("nan"), rate=0.0)

    def on_step(report: StepReport) -> None:
        progress.update(task, completed=report.step, loss=report.loss, rate=report.images_per_second)

    with progress:
        final, _ = train(
            model_config,
            config,
            data,
            out,
            resume=resume,
            device=torch_device,
            on_step=on_step,
            log=_say if main_process else None,
        )
    if main_process:
        _say(f"wrote {out} at step {final}")
    if final < steps:  # stopped by SIGTERM; the checkpoint is written
        raise typer.Exit(EXIT_TERMINATED)


def _check_writable(out: Path) -> None:
    """Fail now, not at the first checkpoint, when the output folder cannot be created or written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(out)) from None


@app.command("noise")
def noise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
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
    value = parse_sigma(sigma)
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    pairs = _pairs(inputs, output, force)
    generator = _generator(seed, torch.device("cpu"), verbose, "noise")
    failures = _Failures()
    with _progress(quiet or len(pairs) < 2) as progress:
        task = progress.add_task("noise", total=len(pairs))
        for source, target in pairs:
            try:
                image = read_image(source, max_pixels=max_pixels)
                noisy = image.pixels + value * torch.randn(image.pixels.shape, generator=generator)
                _write_result(target, noisy, image, bits)
            except ImageError as error:
                failures.report(error)
            progress.advance(task)
    failures.exit(len(pairs))


def _sampling(*names: str, help: str, **limits: Any) -> Any:
    """An option of the sampling methods, shown in their own panel of ``--help``."""
    return typer.Option(
        *names, help=help, rich_help_panel="Posterior sampling (posterior, mean, sda, langevin, guided)", **limits
    )


@app.command("denoise")
def denoise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Noisy image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
    sigma: Annotated[
        str,
        typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.1 or 25/255), or auto to estimate it."),
    ],
    model: Annotated[str | None, typer.Option(help="A shipped model's name or a model file (default: photo).")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="mmse (posterior mean, one evaluation, best PSNR), posterior (one sample), mean (of --samples "
            "samples), sda (likelihood score, from pure noise), langevin or guided (baselines)."
        ),
    ] = "mmse",
    samples: Annotated[
        int | None,
        _sampling(min=1, max=1024, help="Draws per image: mean averages them, --std measures their spread."),
    ] = None,
    std: Annotated[
        Path | None,
        _sampling(help="Also write the per-pixel posterior standard deviation of the draws (needs --samples >= 2)."),
    ] = None,
    sampler_name: Annotated[
        str, _sampling("--sampler", help="Sampler of posterior and mean (ancestral: the reverse SDE, the only one).")
    ] = "ancestral",
    steps: Annotated[
        int | None,
        _sampling(
            min=1,
            max=10_000,
            help=f"Sampler steps (posterior, mean: {default_steps('posterior')}; guided: "
            f"{default_steps('guided')}; sda: {default_steps('sda')}); langevin: steps per level "
            f"({default_steps('langevin')}).",
        ),
    ] = None,
    levels: Annotated[
        int | None, _sampling(min=1, max=1000, help=f"langevin: noise levels ({AnnealedLangevin.LEVELS}).")
    ] = None,
    step_size: Annotated[
        float | None, _sampling(help=f"langevin: step size tau in (0, 2) ({AnnealedLangevin.STEP_SIZE}).")
    ] = None,
    t_start: Annotated[float | None, _sampling(help=f"guided: start time in (0, 1] ({GuidedReverse.T_START}).")] = None,
    strength: Annotated[
        float | None,
        _sampling(min=0.0, max=1.0, help=f"guided: the lambda of lambda (y - x_t) ({GuidedReverse.STRENGTH})."),
    ] = None,
    gamma: Annotated[
        float | None, _sampling(min=0.0, max=100.0, help=f"sda: gamma of the likelihood's variance ({SDA.GAMMA}).")
    ] = None,
    corrections: Annotated[
        int | None, _sampling(min=0, max=100, help=f"sda: Langevin corrections per step ({SDA.CORRECTIONS}).")
    ] = None,
    tau: Annotated[float | None, _sampling(help=f"sda: corrector step size in (0, 10] ({SDA.TAU}).")] = None,
    inflation: Annotated[
        str,
        _sampling(
            help="posterior, mean: move the draws away from the posterior mean by this factor so that their spread "
            "matches their error: auto (the model's calibrated factor) or a number (1: raw draws)."
        ),
    ] = "auto",
    tile: Annotated[
        int | None,
        typer.Option(
            min=32,
            max=4096,
            help=f"Larger images are denoised in overlapping tiles of this side [default: {LOCAL_TILE} for a "
            f"local network (no norm, no attention), else {TILE}].",
        ),
    ] = None,
    clipped: Annotated[
        str,
        typer.Option(
            help="Pixels at 0 or 1 were clipped by the file: auto (yes for 8- and 16-bit files, no for float files), "
            "on or off. Clipped pixels are replaced by their expected unclipped value first (no network evaluation)."
        ),
    ] = "auto",
    seed: Seed = None,
    bits: Bits = None,
    device: Device = "auto",
    precision: Precision = "auto",
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Denoise images with additive white Gaussian noise of known (or estimated) sigma.

    The observation y = x + sigma n matches the diffusion time t* with sigma_t*/alpha_t* = 2 sigma (model
    units), so p(x | y) = p(x | x_t* = alpha_t* y): mmse returns the posterior mean E(x | y) in one network evaluation;
    posterior returns one sample of p(x | y) by the reverse-time SDE started at t*; mean averages --samples
    of them. sda samples from pure noise with the SDA likelihood score; langevin and guided are baselines.
    """
    auto = sigma.strip().lower() == "auto"
    value = None if auto else parse_sigma(sigma)
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}")
    if sampler_name != "ancestral":
        raise UsageError("--sampler must be ancestral for posterior samples (the others do not sample p(x | y))")
    draws = samples or DEFAULT_SAMPLES.get(method, 1)
    if method == "mmse" and (samples or 0) > 1:
        raise UsageError("--samples needs a sampling method: mmse is one estimate; use --method mean or posterior")
    if std is not None and (method == "mmse" or draws < 2):
        raise UsageError(
            "--std needs at least 2 draws of a sampling method: add --method mean (or posterior) and --samples 8"
        )
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    if clipped not in ("auto", "on", "off"):
        raise UsageError("--clipped must be auto, on or off")
    options = {
        "levels": levels,
        "step_size": step_size,
        "t_start": t_start,
        "strength": strength,
        "gamma": gamma,
        "corrections": corrections,
        "tau": tau,
    }
    _check_method_options(method, steps, options)
    factor = _inflation(inflation)
    torch_device = _device(device)
    pairs = _pairs(inputs, output, force)
    std_targets = _std_targets(pairs, std, output, force)
    denoiser = _load_model(model, torch_device, verbose, precision, "photo")
    if value is not None:
        _check_sigma(denoiser, sigma, value)
    generator = _generator(seed, torch_device, verbose, "denoise")
    failures = _Failures()
    budget = max(1, PIXELS_PER_CALL // draws)

    with _progress(quiet) as progress:
        task = progress.add_task("denoise", total=len(pairs), visible=len(pairs) > 1)
        tiles = progress.add_task("tiles", total=None, visible=False)

        def show_tiles(done: int, total: int) -> None:
            """A bar of tiles done and time left, for an image in many tiles or many small images at once."""
            progress.update(tiles, completed=done, total=total, visible=total >= TILES_WORTH_A_BAR)

        for batch in _batches(pairs, max_pixels, budget, failures):
            group = list(_with_sigma(batch, value, denoiser, failures))
            progress.reset(tiles, total=None, visible=False)
            if group:
                try:
                    estimate, spread = denoise(
                        denoiser,
                        torch.stack([image.pixels for _, _, image, _ in group]),
                        [level for *_, level in group],
                        method=method,
                        samples=draws,
                        steps=steps,
                        bit_depth=group[0][2].bit_depth,
                        clipped=clipped,
                        tile=tile,
                        inflation=factor,
                        generator=generator,
                        progress=show_tiles,
                        **options,
                    )
                except (ValueError, RuntimeError) as error:  # an RGB image on a grey model; too little memory
                    for source, *_ in group:
                        failures.report(error, f"{source}: {_model_failure(error)}")
                    group = []
                for index, (source, target, image, _) in enumerate(group):
                    try:
                        _write_result(target, estimate[index], image, bits)
                        if std is not None and spread is not None:
                            _write_result(std_targets[source], spread[index], image, bits)
                    except ImageError as error:
                        failures.report(error)
            progress.advance(task, len(batch))
    failures.exit(len(pairs))


def _inflation(text: str) -> float | str:
    """``--inflation``: auto or a number in (0, 10)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 10:
        raise UsageError(f"--inflation takes auto or a number in (0, 10) such as 1, not {text!r}")
    return value


def _check_method_options(method: str, steps: int | None, options: dict[str, float | None]) -> None:
    """Refuse options that ``method`` does not take, and values outside their ranges."""
    given = [name for name, value in options.items() if value is not None]
    unused = [name for name in given if name not in METHOD_OPTIONS[method]]
    if unused or (steps is not None and method == "mmse"):
        names = ", ".join("--" + name.replace("_", "-") for name in unused or ["steps"])
        raise UsageError(f"{names}: not an option of --method {method}; see `sda denoise --help`")
    for name, low, high, closed in (("step_size", 0, 2, False), ("t_start", 0, 1, True), ("tau", 0, 10, True)):
        number = options[name]
        if number is not None and not (low < number < high or (closed and number == high)):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must lie in ({low}, {high}{']' if closed else ')'}, not {number}")


def _std_targets(pairs: list[tuple[Path, Path]], std: Path | None, output: Path, force: bool) -> dict[Path, Path]:
    """Where each input's standard-deviation image goes: ``--std`` itself, or a folder of files named as the inputs."""
    if std is None:
        return {}
    many = len(pairs) > 1
    targets = {source: output_path_for(source, std, many) for source, _ in pairs}
    outputs = {target.resolve() for _, target in pairs}
    sources = {source.resolve() for source, _ in pairs}
    for target in targets.values():
        if target.resolve() in outputs:
            raise UsageError(f"--std {target} is also the denoised output; choose another --std path")
        if target.resolve() in sources and not force:
            raise UsageError(f"--std {target} would overwrite an input; choose another --std path, or pass --force")
    return targets


def _with_sigma(
    batch: list[tuple[Path, Path, LoadedImage]], value: float | None, denoiser: Denoiser, failures: _Failures
) -> Iterator[tuple[Path, Path, LoadedImage, float]]:
    """Each image of the batch with its noise level in pixel units: ``--sigma``, or for ``auto`` its own estimate
    (an image whose level cannot be estimated is reported and left out)."""
    for source, target, image in batch:
        if value is not None:
            yield source, target, image, value
            continue
        try:
            estimate = estimate_sigma(image.pixels)
            _check_sigma(denoiser, f"auto (estimated {estimate:.4g})", estimate)
        except (ValueError, UsageError) as error:
            failures.report(error, f"{source}: cannot estimate the noise level ({_one_line(str(error))}); pass --sigma")
            continue
        _say(f"{source}: estimated sigma {estimate:.4f} ({255 * estimate:.1f}/255)")
        yield source, target, image, estimate


def _check_sigma(denoiser: Denoiser, text: str, sigma: float) -> None:
    """Refuse a --sigma (pixel units) outside the model's range of noise levels, saying the range."""
    try:
        check_sigma(denoiser, sigma)
    except ValueError as error:
        message = (
            str(error).replace(f"sigma {sigma:.4g}", f"--sigma {text}", 1).replace("pass a sigma", "pass a --sigma")
        )
        raise UsageError(message) from None


def _model_failure(error: Exception) -> str:
    """What went wrong when the model ran on an image, and what to do."""
    text = _one_line(str(error))
    if isinstance(error, ValueError):
        return text
    if "memory" in text.lower():
        return f"not enough memory ({text}); pass smaller images, or use another --device"
    return f"the model failed on this image ({text}); rerun with --debug for the traceback and report it"


def _observation_sigma(text: str) -> float:
    """``--sigma`` of ``degrade`` and ``restore``: as for ``denoise``, or 0 for a noise-free observation."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    try:
        return parse_sigma(text)
    except UsageError as error:
        message = str(error).replace("a positive finite number", "0 (noise-free) or a positive number")
        raise UsageError(message) from None


def _read_kernel(path: Path) -> Tensor:
    """``--kernel K.npy``: a finite 2-D array with odd sides that does not sum to 0."""
    try:
        kernel = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float64))
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--kernel {path}: cannot read it as a NumPy array ({_one_line(str(error))}); save one with numpy.save"
        ) from None
    try:
        Kernel(kernel)
    except ValueError as error:
        raise UsageError(f"--kernel {path}: {error}") from None
    if abs(float(kernel.sum())) <= 1e-6 * float(kernel.abs().sum()):
        raise UsageError(
            f"--kernel {path}: the kernel sums to 0, so the observation loses the image's mean brightness and "
            "cannot be stored as pixels; give a kernel that sums to 1 (kernel / kernel.sum())"
        )
    return kernel


def _read_mask(path: Path, max_pixels: int) -> Tensor:
    """A mask file: 1 (observed) where it is white, at least 0.5, 0 elsewhere; one channel when all are equal."""
    mask = (read_image(path, max_pixels=max_pixels).pixels >= 0.5).double()
    return mask[:1] if bool((mask == mask[:1]).all()) else mask


def _operators(
    blur: float | None, kernel: Path | None, scale: int | None, mask: Path | None, max_pixels: int
) -> Callable[[Path], LinearOperator]:
    """The observation operator of each input, from the operator options; a bad kernel or mask file is refused
    now, a folder of masks is looked up per input (its mask has the input's file name, or its stem)."""
    if blur is not None and not 0 < blur <= 100:
        raise UsageError(f"--blur must be a positive number of pixels up to 100, such as 1.5, not {blur}")
    weights = None if kernel is None else _read_kernel(kernel)
    shared = None
    if mask is not None and not mask.is_dir():
        try:
            shared = _read_mask(mask, max_pixels)
        except ImageError as error:
            raise UsageError(f"--mask {error}") from None

    def operator_for(source: Path) -> LinearOperator:
        chosen = shared
        if mask is not None and shared is None:
            names = [mask / source.name, *sorted(mask.glob(f"{source.stem}.*"))]
            found = [path for path in names if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise ImageError(f"{source}: no mask named {source.name} in {mask}; add one, or pass one --mask file")
            chosen = _read_mask(found[0], max_pixels)
        return make_operator(blur=blur, kernel=weights, scale=scale, mask=chosen)

    return operator_for


def _same_size(image: LoadedImage, pixels: Tensor) -> LoadedImage:
    """``image`` for writing ``pixels``: its alpha is kept when the size is, and dropped when --scale changes it."""
    return image if image.pixels.shape[-2:] == pixels.shape[-2:] else replace(image, alpha=None)


BlurOption = Annotated[float | None, typer.Option(help="Gaussian blur of this standard deviation in pixels.")]
KernelOption = Annotated[
    Path | None, typer.Option(help="Convolve with this 2-D kernel (.npy, odd sides, centred), applied as given.")
]
ScaleOption = Annotated[
    int | None, typer.Option(min=1, max=64, help="Average each KxK block: the observation is K times smaller.")
]
MaskOption = Annotated[
    Path | None,
    typer.Option(
        help="Observe pixels where this image is white (>= 0.5), at the observation's size; or a folder of one mask "
        "per input, with the input's file name."
    ),
]
ObservationSigma = Annotated[
    str, typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.01 or 3/255); 0: noise-free.")
]


@app.command("degrade")
def degrade_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
    blur: BlurOption = None,
    kernel: KernelOption = None,
    scale: ScaleOption = None,
    mask: MaskOption = None,
    sigma: ObservationSigma = "0",
    seed: Seed = None,
    bits: Bits = None,
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Observe images as y = A x + sigma n: blur, kernel, block average and mask, in this order, then noise.

    The observation has its own size (--scale K: K times smaller) and its missing pixels are written as 0. 8-bit and
    16-bit outputs are clipped to [0, 1] and quantised; .npy outputs (float32, HWC) keep the exact unclipped values.
    `sda restore` with the same operator options recovers the images.
    """
    value = _observation_sigma(sigma)
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    operator_for = _operators(blur, kernel, scale, mask, max_pixels)
    pairs = _pairs(inputs, output, force)
    generator = _generator(seed, torch.device("cpu"), verbose, "degrade")
    failures = _Failures()
    with _progress(quiet or len(pairs) < 2) as progress:
        task = progress.add_task("degrade", total=len(pairs))
        for source, target in pairs:
            try:
                image = read_image(source, max_pixels=max_pixels)
                operator = operator_for(source)
                x = image.pixels[None]
                noise = value * torch.randn(operator.out_shape(x.shape), generator=generator)
                observation = operator.observed(operator(x) + noise)[0]
                _write_result(target, observation, _same_size(image, observation), bits)
            except ImageError as error:
                failures.report(error)
            except ValueError as error:  # an image or mask of the wrong size
                failures.report(error, f"{source}: {error}")
            progress.advance(task)
    failures.exit(len(pairs))


@app.command("restore")
def restore_command(
    inputs: Annotated[list[Path], typer.Argument(help="Observation files (from `sda degrade`) or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
    blur: BlurOption = None,
    kernel: KernelOption = None,
    scale: ScaleOption = None,
    mask: MaskOption = None,
    sigma: ObservationSigma = "0",
    method: Annotated[
        str,
        typer.Option(
            help="pnp (one estimate, the best PSNR and the fastest; no draws), or a sampler of p(x | y): mmps "
            "(exact for a Gaussian prior: use it with --samples and --std), dps, diffpir "
            "(no backward pass through the network) or sda (needs --sigma > 0)."
        ),
    ] = "pnp",
    samples: Annotated[
        int | None, typer.Option(min=1, max=1024, help="Draws per image: the output is their mean (default 1).")
    ] = None,
    std: Annotated[
        Path | None, typer.Option(help="Also write the per-pixel standard deviation of the draws (--samples >= 2).")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10_000,
            help=f"Steps of the method (default: pnp {PnP.STEPS}; mmps {MMPS.STEPS}, Heun; dps {DPS.STEPS}; "
            f"diffpir {DiffPIR.STEPS}; sda {SDA.STEPS}).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="A shipped model's name or a model file (default: cifar10).")
    ] = None,
    tile: Annotated[
        int | None, typer.Option(min=32, max=4096, help="Evaluate the network in overlapping tiles of this side.")
    ] = None,
    seed: Seed = None,
    bits: Bits = None,
    device: Device = "auto",
    precision: Precision = "auto",
    force: Force = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Recover full-size images from observations y = A x + sigma n with the model as prior: one plug-and-play estimate
    (pnp, the default), or the mean of --samples draws of p(x | y) with a sampling method such as mmps.

    Give the operator options that made the observation (see `sda degrade`); the missing pixels of a mask are
    ignored. 8- and 16-bit observations were clipped: their pixels at 0 and 1 (observed ones only, and only when
    sigma > 0) are replaced by their expected unclipped value first, as in `sda denoise`. With no operator option,
    restore is `sda denoise` through the chosen method, with the same random stream.
    """
    value = _observation_sigma(sigma)
    if method not in RESTORE_METHODS:
        raise UsageError(f"--method must be one of {', '.join(RESTORE_METHODS)}")
    if method == "sda" and value == 0:
        raise UsageError("--method sda cannot take --sigma 0 (a noise-free observation); use --method mmps or diffpir")
    draws = samples or 1
    if method not in SAMPLING_METHODS and (draws > 1 or std is not None):
        raise UsageError(f"--samples and --std need a sampling method: {method} is one estimate; add --method mmps")
    if std is not None and draws < 2:
        raise UsageError("--std needs at least 2 draws: add --samples 8")
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    operator_for = _operators(blur, kernel, scale, mask, max_pixels)
    torch_device = _device(device)
    pairs = _pairs(inputs, output, force)
    std_targets = _std_targets(pairs, std, output, force)
    denoiser = _load_model(model, torch_device, verbose, precision, "cifar10")
    plain = blur is None and kernel is None and scale is None and mask is None
    generator = _generator(seed, torch_device, verbose, "denoise" if plain else "restore")
    failures = _Failures()
    own_masks = mask is not None and mask.is_dir()  # one operator per input: one image per call
    budget = 1 if own_masks else max(1, PIXELS_PER_CALL // (draws * (scale or 1) ** 2))

    with _progress(quiet) as progress:
        task = progress.add_task("restore", total=len(pairs), visible=len(pairs) > 1)
        tiles = progress.add_task("tiles", total=None, visible=False)

        def show_tiles(done: int, total: int) -> None:
            progress.update(tiles, completed=done, total=total, visible=total >= TILES_WORTH_A_BAR)

        for batch in _batches(pairs, max_pixels, budget, failures):
            progress.reset(tiles, total=None, visible=False)
            progress.advance(task, len(batch))
            try:
                estimate, spread = restore(
                    denoiser,
                    torch.stack([image.pixels for *_, image in batch]),
                    value,
                    operator_for(batch[0][0]),
                    method=method,
                    samples=draws,
                    steps=steps,
                    bit_depth=batch[0][2].bit_depth,
                    tile=tile,
                    generator=generator,
                    progress=show_tiles,
                )
            except ImageError as error:  # no mask for this input
                failures.report(error)
                batch = []
            except (ValueError, RuntimeError) as error:  # a mask of the wrong size; too little memory
                for source, *_ in batch:
                    failures.report(error, f"{source}: {_model_failure(error)}")
                batch = []
            for index, (source, target, image) in enumerate(batch):
                try:
                    _write_result(target, estimate[index], _same_size(image, estimate[index]), bits)
                    if std is not None and spread is not None:
                        _write_result(std_targets[source], spread[index], _same_size(image, spread[index]), bits)
                except ImageError as error:
                    failures.report(error)
    failures.exit(len(pairs))


@app.command("sample")
def sample_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image file, or a folder: one file each.")],
    n: Annotated[int, typer.Option("-n", min=1, max=100_000, help="Number of samples.")] = 16,
    model: Annotated[
        str | None, typer.Option(help="A shipped model's name or a model file (default: cifar10).")
    ] = None,
    sampler_name: Annotated[str, typer.Option("--sampler", help="ancestral, ddim, heun or pc.")] = DEFAULT_SAMPLER,
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
    if sampler_name not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    is_folder = output.suffix == "" or output.is_dir()
    if not is_folder and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"):
        raise UsageError(f"-o {output}: name a .png (or other image) file for a grid, or a folder")
    torch_device = _device(device)
    denoiser = _load_model(model, torch_device, verbose, precision, "cifar10")
    step_count = steps or DEFAULT_STEPS[sampler_name]
    generator = _generator(seed, torch_device, verbose, "sample")
    evaluations = make_sampler(sampler_name, denoiser).nfe(step_count)
    console.print(f"{sampler_name}, {step_count} steps: {evaluations} network evaluations per sample")
    with _progress(quiet) as progress:
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
    _say(f"wrote {n} samples to {output}")


@app.command("info")
def info_command(
    model: Annotated[
        str | None, typer.Argument(help="A shipped model's name or a checkpoint file; none: list the shipped models.")
    ] = None,
) -> None:
    """Print a checkpoint's config (the JSON in its metadata), or list the shipped models."""
    if model is not None:
        typer.echo(json.dumps(read_metadata(resolve_model(model)), indent=2))
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


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (or set SDA_DEBUG=1).")
    ] = False,
) -> None:
    """Score-based diffusion on images: train a U-Net score model, add noise, denoise, sample."""


# Typer raises click's exceptions (its own copy of click in recent versions): found from a public one.
_CLICK_ERROR = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "ClickException")
_NO_ARGS_IS_HELP = getattr(sys.modules[_CLICK_ERROR.__module__], "NoArgsIsHelpError", ())


def main() -> None:
    """Entry point: one-line errors and an exit code (see README); ``--debug`` or ``SDA_DEBUG=1`` shows tracebacks.

    Exit codes: 0 success; 1 a file, checkpoint or data set could not be used; 2 a bad option value or usage;
    130 interrupted (Ctrl-C); 143 training stopped by SIGTERM (its checkpoint written).
    """
    global _debug
    args = sys.argv[1:]
    _debug = "--debug" in args or os.environ.get("SDA_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    try:
        code = app(args=args, prog_name="sda", standalone_mode=False)
    except _NO_ARGS_IS_HELP as error:
        typer.echo(error.ctx.get_help() if error.ctx else str(error))
        code = EXIT_USAGE
    except _CLICK_ERROR as error:  # a bad option value, a missing argument, an unknown option
        _traceback(error)
        command = error.ctx.command_path if getattr(error, "ctx", None) else "sda"
        _say(f"error: {_one_line(error.format_message()).rstrip('.')}; see `{command} --help`")
        code = EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except Exception as error:
        _traceback(error)
        _say(f"error: {_describe(error)}")
        code = EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED
    if code == EXIT_INTERRUPTED:
        _say("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _traceback(error: BaseException) -> None:
    if _debug:
        traceback.print_exception(error)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(error: Exception) -> str:
    """A one-line message for an error that ends a command: what is wrong and what to do."""
    text = _one_line(str(error))
    known: list[type[Exception]] = [UsageError, CheckpointError, ImageError]
    for module, name in (("sda_cli.data", "DataError"), ("sda_cli.train", "TrainingError")):
        if module in sys.modules:  # not imported: cannot have raised (and importing torchvision takes a second)
            known.append(getattr(sys.modules[module], name))
    if isinstance(error, tuple(known)):
        return text or type(error).__name__
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or text
        advice = "check the path, its permissions and the free disk space"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "free some disk space or write elsewhere; earlier files are kept"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = "choose a folder you can write to, or fix its permissions"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason, advice = "a parent of the path is a file, not a folder", "choose another path"
        elif error.errno == errno.ENOENT:
            advice = "check the path"
        return f"{where}{reason}; {advice}"
    if isinstance(error, MemoryError) or "memory" in text.lower():
        return f"not enough memory ({text or 'MemoryError'}); use a smaller --batch-size, smaller images or -n"
    if isinstance(error, ValueError) and text:
        return text
    return f"unexpected {type(error).__name__}: {text}; rerun with --debug for the traceback and report it"
