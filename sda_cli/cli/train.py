"""``sda train``: a score model by denoising score matching, through :func:`sda_cli.train.train`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sda_cli.checkpoint import model_config as build_model_config
from sda_cli.cli.app import app
from sda_cli.cli.common import MAX_SEED, Device, Quiet, UsageError, console, device_from, say, usage

# sda_cli.train and sda_cli.data import torchvision (about a second): they are imported where they are used.

__all__ = ["train_command"]

EXIT_TERMINATED = 143


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} takes comma-separated whole numbers such as 64,128,192, not {text!r}") from None
    return values


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
    parametrisation: Annotated[str, typer.Option(help="edm, v, eps or x.")] = "edm",
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
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, not {out.name!r}")
    from sda_cli.data import check_options, load_dataset
    from sda_cli.train import TrainConfig, train

    try:
        check_options(dataset, image_size, channels, crop, half_scale, mix_cifar)
        model_config = _model_config(widths, blocks, attention, channels=channels, patch=patch, norm=norm,
                                     parametrisation=parametrisation, noise_mean=noise_mean, noise_std=noise_std,
                                     image_size=image_size, crop=crop)  # fmt: skip
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, decay=decay,
                             ema_decay=ema_decay, checkpoint_every=checkpoint_every, seed=seed, precision=precision,
                             compile=compile)  # fmt: skip
    except ValueError as error:
        raise usage(error) from None
    torch_device = device_from(device)
    _check_writable(out)
    main_process = int(os.environ.get("RANK", "0")) == 0
    data = load_dataset(dataset, data_dir, image_size, channels, crop, half_scale, mix_cifar, not no_download)
    if main_process:
        skipped = f" ({data.skipped} unreadable files skipped)" if data.skipped else ""
        say(f"data: {data.name}, {len(data.images)} images{skipped}; device: {torch_device}")
    with _progress(steps, quiet or not main_process) as on_step:
        final, _ = train(model_config, config, data, out, resume=resume, device=torch_device, on_step=on_step,
                         log=say if main_process else None)  # fmt: skip
    if main_process:
        say(f"wrote {out} at step {final}")
    if final < steps:  # stopped by SIGTERM; the checkpoint is written
        raise typer.Exit(EXIT_TERMINATED)


def _model_config(widths: str, blocks: str, attention: str, **settings: Any) -> dict[str, Any]:
    """The model's config from the options (the comma lists parsed here), checked by
    :func:`sda_cli.checkpoint.model_config`."""
    block_list = _ints(blocks, "--blocks")
    return build_model_config(
        widths=_ints(widths, "--widths"),
        blocks=block_list[0] if len(block_list) == 1 else block_list,
        attention_levels=() if attention.strip().lower() == "none" else _ints(attention, "--attention"),
        **settings,
    )


@contextmanager
def _progress(steps: int, hidden: bool) -> Iterator[Callable[[Any], None]]:
    """A bar of the steps, the loss and the images per second; yields the callback of each step."""
    progress = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=hidden,
    )
    task = progress.add_task("train", total=steps, loss=float("nan"), rate=0.0)
    with progress:
        yield lambda report: progress.update(
            task, completed=report.step, loss=report.loss, rate=report.images_per_second
        )


def _check_writable(out: Path) -> None:
    """Fail now, not at the first checkpoint, when the output folder cannot be created or written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(out)) from None
