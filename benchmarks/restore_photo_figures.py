"""The README's pictures of ``sda restore`` on a photo: DPIR's tasks on one McMaster photo, and a std map.

What. One PNG per task of ``benchmarks/restore_photos.py`` (deblurring, ×2 and ×3 super-resolution with the kernel
of standard deviation ``--std``), each a row of four panels cut from the same ``--region`` of the photo, enlarged
``--zoom`` times (nearest neighbour): the observation (for super-resolution each value repeated over the pixels it
stands for), the classical restoration (Wiener, bicubic), ``sda restore`` at its defaults, and the truth. Each label
gives the PSNR of the whole photo (as the table measures it). The panels are read from the work folder of a
``restore_photos.py --work DIR`` run (its truth, observations and ``out-sda`` estimates), so the pictures show the
numbers of the table.

With ``--samples K`` one more PNG: the ``--crop``-pixel centre of the photo blurred with the same kernel (reflecting
boundaries) and noise 2.55/255, restored by ``sda restore --method mmps --samples K --std`` through the Python API
(``sda_cli.restore.restore``): observation, ``pnp``, the mean of the K draws, their standard deviation (the root
mean square over the channels, shown ×``STD_SCALE``) and the truth.

Run from the repository root after ``restore_photos.py``:

    python benchmarks/restore_photos.py --work runs/mcmaster --record
    python benchmarks/restore_photo_figures.py --work runs/mcmaster --samples 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, arguments, parse
from PIL import Image
from restore_figures import figure
from restore_photos import NOISE, TASK_NAMES, TASKS, bicubic, gaussian_kernel, photos, score, tune_balance, wiener

from sda_cli import load_model
from sda_cli.atomic import atomic_path
from sda_cli.operators import Kernel
from sda_cli.restore import restore

STD_SCALE = 8.0
"""The std map is shown as ``min(1, STD_SCALE · std)``: white is a standard deviation of 1 / STD_SCALE or more."""


def panel(pixels: np.ndarray, zoom: int) -> Image.Image:
    """HWC pixels (clipped to [0, 1]) as an 8-bit RGB image, enlarged ``zoom`` times."""
    array = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(array.repeat(zoom, 0).repeat(zoom, 1), "RGB")


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, model="photo", threads=2, record=False, seed="seed of the draws")
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of restore_photos.py")
    parser.add_argument("--photo", default="1", help="the McMaster photo's name (default: 1)")
    parser.add_argument("--std", type=float, default=1.6, help="the kernel's standard deviation")
    parser.add_argument("--region", type=int, nargs=3, default=[150, 200, 160], help="TOP LEFT SIDE of the panels")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--samples", type=int, default=0, help="K draws of mmps for the std figure (0: none)")
    parser.add_argument("--crop", type=int, default=96, help="the side of the photo's centre for the std figure")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures", help="folder of the PNGs")
    return parse(parser)


def save(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    print(f"wrote {path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path}", flush=True)


def task_figures(args: argparse.Namespace) -> None:
    top, left, side = args.region
    cut = (slice(top, top + side), slice(left, left + side))
    balance = tune_balance(args.std, 16, 128)
    kernel = gaussian_kernel(args.std)
    for task, scale in TASKS.items():
        cell = args.work / f"{task}-{args.std}-circular"
        if not (cell / "out-sda" / f"{args.photo}.npy").exists():
            print(f"skipped {task}: no estimate in {cell}", flush=True)
            continue
        truth = np.load(cell / "truth" / f"{args.photo}.npy").astype(np.float64)
        y = np.load(cell / "observed" / f"{args.photo}.npy").astype(np.float64)
        ours = np.load(cell / "out-sda" / f"{args.photo}.npy").astype(np.float64)
        classical = wiener(y, kernel, balance) if scale == 1 else bicubic(y, scale, truth.shape[:2])
        shown_y = y.repeat(scale, 0).repeat(scale, 1)
        border = 0 if scale == 1 else scale
        name = "Wiener" if scale == 1 else "bicubic"
        panels = [
            (("observed", f"{TASK_NAMES[task]}".replace("×", "x")), panel(shown_y[cut], args.zoom)),
            ((name, f"PSNR {score(classical, truth, border):.2f} dB"), panel(classical[cut], args.zoom)),
            (("sda restore (defaults)", f"PSNR {score(ours, truth, border):.2f} dB"), panel(ours[cut], args.zoom)),
            (("truth", f"McMaster {args.photo}"), panel(truth[cut], args.zoom)),
        ]
        title = (f"{TASK_NAMES[task]}: 25x25 Gaussian kernel, std {args.std}, noise 2.55/255; "
                 f"{side}x{side} of McMaster {args.photo}").replace("×", "x")  # fmt: skip
        save(figure(title, panels), args.out / f"photo_{task}.png")


def std_figure(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    (_, photo), *_ = [(n, p) for n, p in photos("mcmaster18", None, args.crop) if n == args.photo]
    x = torch.from_numpy(photo).permute(2, 0, 1).float()
    operator = Kernel(gaussian_kernel(args.std))
    generator = torch.Generator().manual_seed(args.seed)
    y = operator(x[None].double()).float()[0] + NOISE * torch.randn(x.shape, generator=generator)
    model = load_model(args.model)
    estimate, _ = restore(model, y, NOISE, operator)
    mean, std = restore(model, y, NOISE, operator, method="mmps", samples=args.samples, seed=args.seed)
    assert std is not None
    grey = std.double().square().mean(0, keepdim=True).sqrt().permute(1, 2, 0).numpy()
    as_hwc = lambda t: t.double().permute(1, 2, 0).numpy()  # noqa: E731
    truth = as_hwc(x)
    panels = [
        (("observed", "blurred, noisy"), panel(as_hwc(y), args.zoom * 2)),
        (("pnp (default)", f"PSNR {score(as_hwc(estimate), truth, 0):.2f} dB"), panel(as_hwc(estimate), args.zoom * 2)),
        ((f"mmps, mean of {args.samples}", f"PSNR {score(as_hwc(mean), truth, 0):.2f} dB"),
         panel(as_hwc(mean), args.zoom * 2)),
        ((f"std of the {args.samples} draws", f"x{STD_SCALE:g}, white >= {1 / STD_SCALE:g}"),
         panel(STD_SCALE * grey, args.zoom * 2)),
        (("truth", f"McMaster {args.photo}"), panel(truth, args.zoom * 2)),
    ]  # fmt: skip
    title = f"deblurring with draws: std {args.std}, noise 2.55/255, mmps K = {args.samples}; centre {args.crop}px"
    save(figure(title, panels), args.out / "photo_deblur_std.png")
    print(f"std figure: {time.perf_counter() - started:.0f} s, mean std {float(grey.mean()):.4f}", flush=True)


def main() -> None:
    args = parse_args()
    task_figures(args)
    if args.samples:
        std_figure(args)


if __name__ == "__main__":
    main()
