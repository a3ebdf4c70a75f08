"""The README's pictures of ``sda restore``: one PNG per operator, on one exact CIFAR-10 test image.

What. Each figure is a row of five panels, each enlarged ``ZOOM`` = 4 times (nearest neighbour) with a short label
above it, and a title line naming the task, the methods, K, the noise and the image:

* ``truth``: the CIFAR-10 test image (``sda_cli.data.cifar10``, ``test_batch``, index ``--image``);
* ``observed``: ``y = A x + 0.01 n`` in pixel units, made by ``observe`` of ``benchmarks/restore_quality.py``
  (its operators, noise level ``SIGMA`` = 0.01 and seeds; the noise field and random mask are those that benchmark
  gives its first image, as ``observe`` gets one image here), shown at the image's full size: the ×2 and ×4 block
  averages repeated over their blocks (nearest neighbour), missing pixels as a grey checkerboard, values clipped to
  [0, 1] for display;
* ``pnp (default)``: ``sda_cli.restore.restore(model, y, 0.01, A, seed=...)`` at ``restore``'s default method (read
  from its signature, so that the figures follow the code), what ``sda restore`` writes; its label gives its PSNR
  against the truth (dB, peak 1, clipped to [0, 1], as ``restore_quality.py`` measures it);
* ``SAMPLER, mean of K``: ``restore(..., method=--sampler, samples=K)``, the mean of K draws of ``p(x | y)`` (what
  ``sda restore --method SAMPLER --samples K`` writes), with its PSNR;
* ``std``: the draws' per-pixel standard deviation (``restore``'s second value, the ``--std`` map, one per channel),
  in pixel units, as one grey level per pixel: the root mean square over the three channels, ``s``, shown as
  ``min(1, STD_SCALE · s)`` with ``STD_SCALE`` = 4 for every figure: white is a standard deviation of 0.25 or more,
  black is 0.

The five tasks (``TASKS`` of ``restore_quality.py``): ``sr2`` and ``sr4``, the mean of each 2×2 or 4×4 block;
``random75``, 75% of the pixels missing at random (all three channels of 768 pixels); ``box``, the
centre 16×16 pixels missing; ``blur``, a Gaussian blur of S = 1 pixel. The random75 mask is passed to ``restore`` as
``make_operator(mask=...)``, the operator ``sda restore --mask`` builds. The model runs in float32
(``sda_cli.load_model(..., precision="fp32")``), so the pictures do not depend on the CPU's bf16 support.

Files: ``OUT/restore_TASK.png``, written atomically (a temporary file, then a rename). One line per figure is
printed with its PSNR, the mean of ``s`` and the seconds it took (model loading excluded). Run from the repository
root; the README's pictures were made, on one core at 1 thread, with

    taskset -c 0 python benchmarks/restore_figures.py --sampler diffpir --samples 8

``--sampler`` defaults to ``mmps`` (exact on Gaussian data, about six times slower than ``diffpir``), ``--tasks``
to all five.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, arguments, parse, psnr, restore_methods
from PIL import Image, ImageDraw, ImageFont
from restore_quality import SIGMA, TASKS, ImageMasks, missing_of, observe
from torch import Tensor

from sda_cli import load_model
from sda_cli.atomic import atomic_path
from sda_cli.data import cifar10
from sda_cli.operators import LinearOperator, make_operator
from sda_cli.restore import restore

DEFAULT_METHOD = inspect.signature(restore).parameters["method"].default
"""``restore``'s own default method, so that the figures follow the code."""

DEFAULT_IMAGE = 6
"""A white car on a red ground: sharp edges, flat areas and fine detail (the wheels) in one 32×32 image."""

ZOOM = 4
"""Each 32×32 panel is drawn 4 times larger, nearest neighbour."""

STD_SCALE = 4.0
"""The std map is shown as ``min(1, STD_SCALE · std)``: white is a standard deviation of 1 / STD_SCALE or more."""

GAP, MARGIN = 8, 8
CHECKER = 2
"""Side in output pixels of the squares of the checkerboard that marks missing pixels."""
CHECKER_GREYS = (0.45, 0.7)

OBSERVED = {
    "sr2": "2x2 block means",
    "sr4": "4x4 block means",
    "random75": "75% of pixels missing",
    "box": "16x16 box missing",
    "blur": "Gaussian blur S = 1",
}
"""The second line of the observation's label (ASCII: PIL's default font has no ×, ≥ or σ)."""

TITLES = {
    "sr2": "x2 super-resolution",
    "sr4": "x4 super-resolution",
    "random75": "inpainting, random 75% missing",
    "box": "inpainting, centre box",
    "blur": "deblurring",
}


def enlarge(pixels: Tensor, factor: int) -> Tensor:
    """``(C, h, w)`` repeated ``factor`` times along both sides (nearest neighbour)."""
    return pixels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def to_image(pixels: Tensor) -> Image.Image:
    """``(C, H, W)`` pixels in [0, 1] (clipped here) as an 8-bit RGB image, enlarged ``ZOOM`` times."""
    array = (enlarge(pixels.detach().double().cpu().clamp(0, 1), ZOOM) * 255).round().to(torch.uint8)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), "RGB")


def observation_panel(y: Tensor, operator: LinearOperator, size: tuple[int, int]) -> Image.Image:
    """The observation ``(C, h, w)`` at the image's size ``(H, W)``: each value repeated over the block it averages
    (nearest neighbour), missing pixels as a grey checkerboard."""
    factor = size[0] // y.shape[-2]
    missing = torch.from_numpy(missing_of(operator, (1, *y.shape)))[0]  # (h, w), True where missing
    missing = enlarge(missing[None], factor * ZOOM)[0].numpy()
    shown = np.asarray(to_image(enlarge(y, factor))).copy()
    rows, cols = np.indices(missing.shape)
    checker = np.where((rows // CHECKER + cols // CHECKER) % 2 == 0, *CHECKER_GREYS)
    shown[missing] = np.round(checker[missing] * 255).astype(np.uint8)[:, None]
    return Image.fromarray(shown, "RGB")


def figure(title: str, panels: list[tuple[tuple[str, str], Image.Image]]) -> Image.Image:
    """Panels side by side with a gap, a two-line label above each and a title line above all."""
    font = ImageFont.load_default()
    line = max(font.getbbox("Ag%")[3], 10) + 3
    side = panels[0][1].width
    width = 2 * MARGIN + len(panels) * side + (len(panels) - 1) * GAP
    title_width = int(font.getlength(title))
    width = max(width, title_width + 2 * MARGIN)
    top = MARGIN + line + 6 + 2 * line
    sheet = Image.new("RGB", (width, top + side + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    left = (width - (len(panels) * side + (len(panels) - 1) * GAP)) // 2
    for k, ((first, second), image) in enumerate(panels):
        x = left + k * (side + GAP)
        draw.text((x, top - 2 * line - 2), first, fill="black", font=font)
        draw.text((x, top - line - 2), second, fill=(70, 70, 70), font=font)
        sheet.paste(image, (x, top))
    return sheet


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", threads=1, data_dir=True, record=False,
        seed="seed of the observation's noise and mask, and the draws",
    )  # fmt: skip
    samplers = restore_methods(sampling=True)
    parser.add_argument("--sampler", default="mmps", choices=samplers, help="the method of the K draws")
    parser.add_argument("--samples", type=int, default=8, help="K, the draws whose mean and std are shown (≥ 2)")
    parser.add_argument("--image", type=int, default=DEFAULT_IMAGE, help="index of the CIFAR-10 test image")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures", help="folder of the PNGs")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    args = parse(parser)
    args.tasks = [t for t in args.tasks.split(",") if t]
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r}; expected some of {', '.join(TASKS)}")
    if args.samples < 2:
        parser.error("--samples must be at least 2: the std map needs two draws")
    return args


def main() -> None:
    args = parse_args()
    model = load_model(args.model, device="cpu", precision="fp32")
    images = cifar10(args.data_dir, train=False).images
    if not 0 <= args.image < len(images):
        raise SystemExit(f"--image must be in [0, {len(images) - 1}]")
    x = images[args.image : args.image + 1].double() / 255
    k = args.samples
    for task in args.tasks:
        start = time.perf_counter()
        y, operator = observe(task, x, args.seed)
        if isinstance(operator, ImageMasks):  # one image: its mask as the operator sda restore --mask builds
            operator = make_operator(mask=operator.mask[0])
        pixels = y[0].float()
        estimate, _ = restore(model, pixels, SIGMA, operator, method=DEFAULT_METHOD, seed=args.seed)
        mean, std = restore(model, pixels, SIGMA, operator, method=args.sampler, samples=k, seed=args.seed)
        assert std is not None
        estimate, mean = estimate.double().cpu().clamp(0, 1), mean.double().cpu().clamp(0, 1)
        quality = float(psnr(estimate[None], x)[0])
        grey = std.double().cpu().square().mean(0, keepdim=True).sqrt()  # (1, H, W): RMS over the channels
        title = f"{TITLES[task]}: {DEFAULT_METHOD}; {args.sampler} K = {k}; sigma = {SIGMA}; CIFAR-10 test {args.image}"
        panels = [
            (("truth", "32x32"), to_image(x[0])),
            (("observed", OBSERVED[task]), observation_panel(y[0], operator, tuple(x.shape[-2:]))),
            ((f"{DEFAULT_METHOD} (default)", f"PSNR {quality:.2f} dB"), to_image(estimate)),
            ((f"{args.sampler}, mean of {k}", f"PSNR {float(psnr(mean[None], x)[0]):.2f} dB"), to_image(mean)),
            ((f"std of the {k} draws", f"x{STD_SCALE:g}, white >= {1 / STD_SCALE:g}"), to_image(STD_SCALE * grey)),
        ]
        path = args.out / f"restore_{task}.png"
        with atomic_path(path) as temporary:
            figure(title, panels).save(temporary, format="PNG")
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        seconds = time.perf_counter() - start
        print(f"wrote {shown}: PSNR {quality:.2f} dB, mean std {float(grey.mean()):.3f}, {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
