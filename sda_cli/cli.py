"""The ``sda`` command line: parse, validate, call the core, report. No mathematics here."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sda_cli import posterior, sampler
from sda_cli.checkpoint import CheckpointError, load_model, read_metadata
from sda_cli.data import DataError, load_dataset
from sda_cli.denoiser import PARAMETRISATIONS, Denoiser
from sda_cli.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    LoadedImage,
    image_files,
    make_grid,
    output_path_for,
    read_image,
    to_model,
    to_pixels,
    write_image,
)
from sda_cli.train import StepReport, TrainConfig, TrainingError, pick_device, train

__all__ = ["app", "main"]

app = typer.Typer(
    name="sda",
    help="Score-based diffusion on images: train a U-Net score model, add noise, denoise, sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "cifar10.safetensors"


class UsageError(ValueError):
    """A bad option value; the message says what is wrong and what to do."""


DEFAULT_STEPS = {"ancestral": 128, "ddim": 64, "heun": 32, "pc": 64}
"""Default step counts per sampler (``--steps`` overrides)."""


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


def _load_model(path: Path | None, device: torch.device) -> Denoiser:
    path = path or DEFAULT_MODEL
    if not path.is_file():
        hint = "train one with `sda train` or pass --model FILE" if path == DEFAULT_MODEL else "check the path"
        raise CheckpointError(f"no model at {path}; {hint}")
    denoiser, _ = load_model(path, device)
    return denoiser


def _pairs(inputs: list[Path], output: Path, force: bool) -> list[tuple[Path, Path]]:
    """(input file, output file) for every input image; refuses to overwrite an input unless ``force``."""
    files = image_files(inputs)
    if not files:
        raise UsageError("no image files found in the inputs; pass image files or folders that hold some")
    many = len(files) > 1 or any(p.is_dir() for p in inputs)
    if not many and output.suffix == "" and not output.exists():
        many = True
    pairs = [(f, output_path_for(f, output, many)) for f in files]
    if not force:
        for source, target in pairs:
            if target.exists() and target.resolve() == source.resolve():
                raise UsageError(f"{target} would overwrite its input; choose another -o or pass --force")
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

    def report(self, error: Exception) -> None:
        self.count += 1
        console.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)

    def exit(self, total: int) -> None:
        if self.count:
            console.print(f"{self.count} of {total} files failed", highlight=False)
            raise typer.Exit(1)


def _write(path: Path, pixels: torch.Tensor, image: LoadedImage, bits: int | None) -> None:
    """Write one result; PNG outputs of 16-bit inputs stay 16-bit unless ``bits`` says otherwise."""
    if bits is None:
        bits = 16 if image.bit_depth == 16 and path.suffix.lower() == ".png" else 8
    write_image(path, pixels.cpu(), alpha=image.alpha, bits=None if path.suffix.lower() == ".npy" else bits)


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _batches(
    pairs: list[tuple[Path, Path]], max_pixels: int, budget: int, failures: _Failures
) -> Iterator[list[tuple[Path, Path, LoadedImage]]]:
    """Read images in order and group those of one shape into batches of at most ``budget`` pixels."""
    pending: dict[tuple[int, ...], list[tuple[Path, Path, LoadedImage]]] = {}
    for source, target in pairs:
        try:
            image = read_image(source, max_pixels=max_pixels)
        except ImageError as error:
            failures.report(error)
            continue
        key = tuple(image.pixels.shape)
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
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step (per process under torchrun).")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate after warm-up.")] = 4e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Linear learning-rate warm-up steps.")] = 500,
    ema_decay: Annotated[float, typer.Option(min=0.0, max=1.0, help="EMA decay of the shipped weights.")] = 0.999,
    image_size: Annotated[int, typer.Option(min=8, help="Side of the (square) training images.")] = 32,
    channels: Annotated[int, typer.Option(min=1, max=3, help="1 (grey) or 3 (RGB).")] = 3,
    widths: Annotated[str, typer.Option(help="U-Net widths per level, comma-separated.")] = "64,128,192",
    blocks: Annotated[int, typer.Option(min=1, max=16, help="Residual blocks per level.")] = 2,
    attention: Annotated[str, typer.Option(help="Levels with self-attention (0 = full resolution).")] = "2",
    parametrisation: Annotated[str, typer.Option(help="edm, v or eps.")] = "edm",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write the checkpoint every N steps.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's training state, or from OUT's weights.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast), bf16, fp16 or fp32.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the U-Net.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a score model by denoising score matching; writes OUT and OUT's training state."""
    if channels not in (1, 3):
        raise UsageError("--channels must be 1 or 3")
    if parametrisation not in PARAMETRISATIONS:
        raise UsageError(f"--parametrisation must be one of {', '.join(PARAMETRISATIONS)}")
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise UsageError("--precision must be auto, bf16, fp16 or fp32")
    width_list = _ints(widths, "--widths")
    levels = _ints(attention, "--attention")
    if not width_list or any(w < 1 or w > 4096 for w in width_list):
        raise UsageError("--widths needs 1 to 8 widths between 1 and 4096, such as 64,128,192")
    if image_size % 2 ** (len(width_list) - 1):
        raise UsageError(
            f"--image-size must be a multiple of {2 ** (len(width_list) - 1)} for {len(width_list)} levels"
        )
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, not {out.name!r}")
    model_config = {
        "model": {"channels": channels, "widths": list(width_list), "blocks": blocks, "attention_levels": list(levels)},
        "denoiser": {"parametrisation": parametrisation},
        "schedule": {"name": "cosine"},
    }
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        ema_decay=ema_decay,
        checkpoint_every=checkpoint_every,
        seed=seed,
        precision=precision,
        compile=compile,
    )
    torch_device = pick_device(device)
    main_process = int(os.environ.get("RANK", "0")) == 0
    data = load_dataset(dataset, data_dir, image_size, channels)
    if main_process:
        skipped = f" ({data.skipped} unreadable files skipped)" if data.skipped else ""
        console.print(f"data: {data.name}, {len(data.images)} images{skipped}; device: {torch_device}")

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
            log=console.print if main_process else None,
        )
    if main_process:
        console.print(f"wrote {out} at step {final}")


@app.command("noise")
def noise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
    sigma: Annotated[str, typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.1 or 25/255).")],
    seed: Annotated[int | None, typer.Option(help="Seed of the noise; the same seed gives the same files.")] = None,
    bits: Annotated[int | None, typer.Option(help="8 or 16 bits for PNG outputs (default: the input's).")] = None,
    force: Annotated[bool, typer.Option(help="Allow an output to overwrite its input.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = (
        DEFAULT_MAX_PIXELS
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Add white Gaussian noise: y = x + sigma * n, n ~ N(0, I) per pixel and channel.

    8-bit and 16-bit outputs are clipped to [0, 1] and quantised; .npy outputs (float32, HWC) keep the exact
    unclipped values.
    """
    value = parse_sigma(sigma)
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    pairs = _pairs(inputs, output, force)
    generator = _generator(seed, torch.device("cpu"))
    failures = _Failures()
    with _progress(quiet or len(pairs) < 2) as progress:
        task = progress.add_task("noise", total=len(pairs))
        for source, target in pairs:
            try:
                image = read_image(source, max_pixels=max_pixels)
                noisy = image.pixels + value * torch.randn(image.pixels.shape, generator=generator)
                _write(target, noisy, image, bits)
            except ImageError as error:
                failures.report(error)
            progress.advance(task)
    failures.exit(len(pairs))


def _match_channels(
    y: torch.Tensor, sigma_y: float, channels: int, generator: torch.Generator
) -> tuple[torch.Tensor, float, Callable[[torch.Tensor], torch.Tensor]]:
    """Fit an observation's channels to the model's; returns y, its noise level, and the way back.

    A grey image on an RGB model: with u = (1,1,1)/sqrt(3), the grey observation y = x + sigma n gives
    y·1 = x·1 + sqrt(3) sigma n u, white noise of level sqrt(3) sigma along u and none across it. Adding
    independent noise of level sqrt(3) sigma across u makes the noise white in RGB, so the exact matched-time
    identity holds with sigma' = sqrt(3) sigma; the result is averaged back to grey.
    """
    if y.shape[1] == channels:
        return y, sigma_y, lambda x: x
    if y.shape[1] == 1 and channels == 3:
        level = math.sqrt(3) * sigma_y
        extra = level * torch.randn(y.expand(-1, 3, -1, -1).shape, generator=generator, device=generator.device)
        extra = extra - extra.mean(dim=1, keepdim=True)  # the part across u
        return y.expand(-1, 3, -1, -1) + extra.to(y.device), level, lambda x: x.mean(dim=1, keepdim=True)
    raise UsageError(
        "the model is grey (1 channel) but the image is RGB; convert the image to grey or use an RGB model"
    )


@app.command("denoise")
def denoise_command(
    inputs: Annotated[list[Path], typer.Argument(help="Noisy image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file, or folder for several inputs.")],
    sigma: Annotated[str, typer.Option(help="Noise standard deviation in [0, 1] pixel units (0.1 or 25/255).")],
    model: Annotated[Path | None, typer.Option(help="Model file (default: the shipped CIFAR-10 model).")] = None,
    method: Annotated[str, typer.Option(help="mmse (posterior mean, best PSNR) or posterior (one sample).")] = "mmse",
    sampler_name: Annotated[
        str, typer.Option("--sampler", help="Sampler of the posterior method (ancestral: the reverse SDE).")
    ] = "ancestral",
    steps: Annotated[int | None, typer.Option(min=1, max=10_000, help="Sampler steps (posterior).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw.")] = None,
    bits: Annotated[int | None, typer.Option(help="8 or 16 bits for PNG outputs (default: the input's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Annotated[bool, typer.Option(help="Allow an output to overwrite its input.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = (
        DEFAULT_MAX_PIXELS
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Denoise images with additive white Gaussian noise of known sigma.

    The observation y = x + sigma n matches the diffusion time t* with sigma_t*/alpha_t* = 2 sigma (model
    units), so p(x | y) = p(x | x_t* = alpha_t* y): mmse returns E[x | y] in one network evaluation;
    posterior returns one sample of p(x | y) by a reverse-time sampler started at t*.
    """
    value = parse_sigma(sigma)
    if method not in ("mmse", "posterior"):
        raise UsageError("--method must be mmse or posterior")
    if sampler_name not in posterior.POSTERIOR_SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(posterior.POSTERIOR_SAMPLERS)} for posterior samples")
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    torch_device = pick_device(device)
    pairs = _pairs(inputs, output, force)
    denoiser = _load_model(model, torch_device)
    sigma_y = 2 * value
    posterior.matched_time(denoiser.schedule, sigma_y)  # refuses a sigma outside the model's range
    channels = denoiser.backbone.config.channels
    generator = _generator(seed, torch_device)
    step_count = steps or DEFAULT_STEPS[sampler_name]
    failures = _Failures()
    with _progress(quiet or len(pairs) < 2) as progress:
        task = progress.add_task("denoise", total=len(pairs))
        for batch in _batches(pairs, max_pixels, 1 << 17, failures):
            y = to_model(torch.stack([image.pixels for _, _, image in batch])).to(torch_device)
            y, level, back = _match_channels(y, sigma_y, channels, generator)
            if method == "mmse":
                x = posterior.mmse(denoiser, y, level)
            else:
                x = posterior.posterior_sample(
                    denoiser, y, level, sampler=sampler_name, steps=step_count, generator=generator
                )[0]
            for (_, target, image), result in zip(batch, to_pixels(back(x)), strict=True):
                try:
                    _write(target, result, image, bits)
                except ImageError as error:
                    failures.report(error)
            progress.advance(task, len(batch))
    failures.exit(len(pairs))


@app.command("sample")
def sample_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image file, or a folder: one file each.")],
    n: Annotated[int, typer.Option("-n", min=1, max=100_000, help="Number of samples.")] = 16,
    model: Annotated[Path | None, typer.Option(help="Model file (default: the shipped CIFAR-10 model).")] = None,
    sampler_name: Annotated[str, typer.Option("--sampler", help="ancestral, ddim, heun or pc.")] = "heun",
    steps: Annotated[int | None, typer.Option(min=1, max=10_000, help="Sampler steps (default per sampler).")] = None,
    size: Annotated[int | None, typer.Option(min=8, max=4096, help="Image side (default: the training size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples drawn at once.")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Sample new images by solving the reverse-time SDE or ODE from pure noise."""
    if sampler_name not in sampler.SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(sampler.SAMPLERS)}")
    is_folder = output.suffix == "" or output.is_dir()
    if not is_folder and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"):
        raise UsageError(f"-o {output}: name a .png (or other image) file for a grid, or a folder")
    torch_device = pick_device(device)
    denoiser = _load_model(model, torch_device)
    config = read_metadata(model or DEFAULT_MODEL)
    side = size or int(config.get("image_size", 32))
    channels = denoiser.backbone.config.channels
    step_count = steps or DEFAULT_STEPS[sampler_name]
    generator = _generator(seed, torch_device)
    console.print(
        f"{sampler_name}, {step_count} steps: {sampler.nfe(sampler_name, step_count)} network evaluations per sample"
    )
    chunks = []
    with _progress(quiet) as progress:
        task = progress.add_task("sample", total=n)
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            x = sampler.prior_noise(
                denoiser.schedule, (count, channels, side, side), generator=generator, device=torch_device
            )
            x = sampler.sample(denoiser, x, 1.0, 0.0, step_count, sampler_name, generator=generator)
            chunks.append(to_pixels(x).clamp(0, 1).cpu())
            progress.advance(task, count)
    images = torch.cat(chunks)
    if is_folder:
        width = len(str(n - 1))
        for i, image in enumerate(images):
            write_image(output / f"sample_{i:0{width}d}.png", image)
        write_image(output / "grid.png", make_grid(images))
    else:
        write_image(output, make_grid(images))
    console.print(f"wrote {n} samples to {output}", highlight=False)


@app.command("info")
def info_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint written by sda train.")],
) -> None:
    """Print a checkpoint's config (the JSON in its metadata)."""
    typer.echo(json.dumps(read_metadata(model), indent=2))


ERRORS = (UsageError, CheckpointError, DataError, ImageError, TrainingError, ValueError, OSError)


def main() -> None:
    """Entry point: one-line errors and a non-zero exit code; ``--debug`` or ``SDA_DEBUG=1`` shows tracebacks."""
    debug = "--debug" in sys.argv or os.environ.get("SDA_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except ERRORS as error:
        if debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2 if isinstance(error, UsageError) else 1)
