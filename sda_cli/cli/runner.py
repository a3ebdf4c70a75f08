"""One runner for commands that turn many input files into output files: batches, progress, failures, writes.

A command names its inputs and outputs (:func:`pairs`), and gives :func:`run` the work to do on one batch of images of
one shape (a list of :class:`Item`); :func:`run` reads the images in order, groups them into batches of at most a
budget of pixels, shows the progress, writes each result atomically (:func:`sda_cli.images.write_image`: an existing
file is never half-written), reports a failure on one line per file and goes on with the others; the exit code says
whether any failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from sda_cli.cli.common import UsageError, console, one_line, say, settings
from sda_cli.images import ImageError, LoadedImage, image_files, output_path_for, read_image, write_image

__all__ = ["EXIT_FAILED", "Item", "pairs", "run", "side_outputs", "stacked", "with_spread"]

EXIT_FAILED = 1
TILES_WORTH_A_BAR = 50
"""Network evaluations of tiles (or small images) above which a bar of them is shown: a few seconds."""


@dataclass
class Item:
    """One input image, where its result goes, and what the work gives for it."""

    source: Path
    target: Path
    image: LoadedImage
    extra: dict[Path, Tensor] = field(default_factory=dict)
    """Further outputs of this input (a standard-deviation map): path → pixels."""


Work = Callable[[list[Item], Callable[[int, int], None]], list[Tensor]]
"""Turns a batch into one result per item; it may fill ``item.extra``; the callable it is given reports the network
evaluations done and in all."""


def with_spread(solve: Callable[[list[Item], Callable[[int, int], None]], tuple[Tensor, Tensor | None]],
                spreads: dict[Path, Path]) -> Work:  # fmt: skip
    """The work of a posterior command: ``solve`` gives the batch's estimates and, with draws, their spread maps; each
    estimate is the result, each spread map goes to its input's ``--std`` path (:func:`side_outputs`)."""

    def work(batch: list[Item], show_tiles: Callable[[int, int], None]) -> list[Tensor]:
        estimate, spread = solve(batch, show_tiles)
        for index, item in enumerate(batch):
            if spread is not None and item.source in spreads:
                item.extra[spreads[item.source]] = spread[index]
        return list(estimate)

    return work


def stacked(batch: list[Item]) -> Tensor:
    """The batch's pixels ``(B, C, H, W)``."""
    return torch.stack([item.image.pixels for item in batch])


def pairs(inputs: list[Path], output: Path, force: bool) -> list[tuple[Path, Path]]:
    """(input file, output file) for every input image; refuses to overwrite an input unless ``force``."""
    files = image_files(inputs)
    if not files:
        raise UsageError("no image files found in the inputs; pass image files or folders that hold some")
    many = len(files) > 1 or any(p.is_dir() for p in inputs)
    if not many and output.suffix == "" and not output.exists():
        many = True
    found = [(f, output_path_for(f, output, many)) for f in files]
    written: dict[Path, Path] = {}
    for source, target in found:
        if not force and target.exists() and target.resolve() == source.resolve():
            raise UsageError(f"{target} would overwrite its input; choose another -o or pass --force")
        first = written.setdefault(target.resolve(), source)
        if first != source:
            raise UsageError(
                f"{first} and {source} would both be written to {target}; pass inputs with distinct file names"
            )
    return found


def side_outputs(found: list[tuple[Path, Path]], path: Path | None, option: str, force: bool) -> dict[Path, Path]:
    """Where each input's second output goes (``--std``): the path itself, or a folder of files named as the
    inputs; never onto a main output, nor onto an input unless ``force``."""
    if path is None:
        return {}
    targets = {source: output_path_for(source, path, len(found) > 1) for source, _ in found}
    outputs = {target.resolve() for _, target in found}
    sources = {source.resolve() for source, _ in found}
    for target in targets.values():
        if target.resolve() in outputs:
            raise UsageError(f"{option} {target} is also the main output; choose another {option} path")
        if target.resolve() in sources and not force:
            raise UsageError(f"{option} {target} would overwrite an input; choose another path, or pass --force")
    return targets


class _Failures:
    """Counts per-file failures: each is reported on one line, the rest go on; the exit code says so."""

    def __init__(self, debug: bool) -> None:
        self.count, self.debug = 0, debug

    def report(self, error: Exception, message: str | None = None) -> None:
        self.count += 1
        if self.debug:
            import traceback

            traceback.print_exception(error)
        say(f"error: {one_line(message or str(error))}")

    def exit(self, total: int) -> None:
        if self.count:
            if total > 1:
                say(f"{self.count} of {total} files failed")
            raise typer.Exit(EXIT_FAILED)


def _batches(
    found: list[tuple[Path, Path]],
    max_pixels: int,
    budget: int,
    failures: _Failures,
    prepare: Callable[[Item], None] | None,
) -> Iterator[list[Item]]:
    """Read images in order (``prepare`` each; a ``ValueError`` of it leaves the image out, reported) and group those
    of one shape and bit depth into batches of at most ``budget`` pixels."""
    pending: dict[tuple[int, ...], list[Item]] = {}
    for source, target in found:
        try:
            item = Item(source, target, read_image(source, max_pixels=max_pixels))
            if prepare is not None:
                prepare(item)
        except ImageError as error:
            failures.report(error)
            continue
        except ValueError as error:
            failures.report(error, f"{source}: {error}")
            continue
        image = item.image
        key = (*image.pixels.shape, image.bit_depth)
        group = pending.setdefault(key, [])
        group.append(item)
        if len(group) * image.pixels[0].numel() >= budget:
            yield pending.pop(key)
    yield from pending.values()


def _model_failure(error: Exception) -> str:
    """What went wrong when the work ran on an image, and what to do."""
    text = one_line(str(error))
    if isinstance(error, ValueError):
        return text
    if "memory" in text.lower():
        return f"not enough memory ({text}); pass smaller images, or use another --device"
    return f"the model failed on this image ({text}); rerun with --debug for the traceback and report it"


def _write(path: Path, pixels: Tensor, image: LoadedImage, bits: int | None) -> None:
    """Write one result; PNG outputs of 16-bit inputs stay 16-bit unless ``bits`` says otherwise; the alpha is kept
    when the size is, and dropped when the result has another size."""
    alpha = image.alpha if image.pixels.shape[-2:] == pixels.shape[-2:] else None
    if bits is None:
        bits = 16 if image.bit_depth == 16 and path.suffix.lower() == ".png" else 8
    write_image(path, pixels.cpu(), alpha=alpha, bits=None if path.suffix.lower() == ".npy" else bits)


def run(
    name: str,
    found: list[tuple[Path, Path]],
    work: Work,
    *,
    budget: int = 1,
    bits: int | None = None,
    max_pixels: int,
    quiet: bool = False,
    prepare: Callable[[Item], None] | None = None,
) -> None:
    """Run ``work`` over the inputs in batches of at most ``budget`` pixels (1: an image at a time), write the
    results, and exit with code 1 if any file failed (module docstring); ``prepare`` runs on each image as it is
    read."""
    if bits not in (None, 8, 16):
        raise UsageError("--bits must be 8 or 16")
    failures = _Failures(settings.debug)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
    with progress:
        files = progress.add_task(name, total=len(found), visible=len(found) > 1)
        tiles = progress.add_task("tiles", total=None, visible=False)

        def show_tiles(done: int, total: int) -> None:
            """A bar of network evaluations done and time left, for an image in many tiles or many small images."""
            progress.update(tiles, completed=done, total=total, visible=total >= TILES_WORTH_A_BAR)

        for batch in _batches(found, max_pixels, budget, failures, prepare):
            progress.reset(tiles, total=None, visible=False)
            try:
                results = work(batch, show_tiles)
            except ImageError as error:  # a file the work needs for this batch (a mask) is missing
                failures.report(error)
                results = []
            except (ValueError, RuntimeError) as error:  # an image of the wrong size; too little memory
                for item in batch:
                    failures.report(error, f"{item.source}: {_model_failure(error)}")
                results = []
            for item, result in zip(batch, results, strict=False):
                try:
                    _write(item.target, result, item.image, bits)
                    for path, pixels in item.extra.items():
                        _write(path, pixels, item.image, bits)
                except ImageError as error:
                    failures.report(error)
            progress.advance(files, len(batch))
    failures.exit(len(found))
