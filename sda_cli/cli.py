"""The ``sda`` command line: parse, validate, call the core, report. No mathematics here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sda_cli.checkpoint import CheckpointError, read_metadata
from sda_cli.data import DataError, load_dataset
from sda_cli.denoiser import PARAMETRISATIONS
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
        final = train(
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


@app.command("info")
def info_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint written by sda train.")],
) -> None:
    """Print a checkpoint's config (the JSON in its metadata)."""
    typer.echo(json.dumps(read_metadata(model), indent=2))


ERRORS = (UsageError, CheckpointError, DataError, TrainingError, ValueError, OSError)


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
        console.print(f"error: {message}", highlight=False, markup=False)
        sys.exit(2 if isinstance(error, UsageError) else 1)
