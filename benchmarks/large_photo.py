"""One 12-megapixel photo through ``sda denoise``: wall time and peak memory of each model, at float32.

What. A 4000 × 3000 RGB photo (``--width`` × ``--height``), made by bicubic upscaling of a McMaster photo (the first
by name, 500 × 500, cropped to 4:3 first), with 8-bit noisy values from ``sda noise --sigma S --seed 0`` (default
25/255). Each ``--models NAME=PATH`` denoises it with ``sda denoise --method mmse --precision fp32`` at its default
tile, in a fresh process: one row per model with the wall seconds of the whole command (process start, model load,
reading and writing the 12 MP PNGs included), seconds per megapixel, the peak resident memory of that process, and
the target at 12 MP or more: under 120 s for the photo model (issue "Real photos: a photo prior": a 12 MP photo
denoises with mmse in under 2 minutes on 2 cores in float32). PSNR against the upscaled clean photo is shown for
reference only: an upscaled photo is smoother than a real 12 MP one.

How. ``_common.run_cli``: ``OMP_NUM_THREADS=--threads``, the peak RSS of the command alone.
Run from the repository root on an otherwise idle machine (a training run beside it halves the speed):

    python benchmarks/large_photo.py --models photo=checkpoints/photo.safetensors --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import (
    MCMASTER,
    MEASURED,
    ROOT,
    arguments,
    checkpoint_line,
    header,
    parse,
    psnr,
    read_pixels,
    report,
    run_cli,
    table,
    work_folder,
)
from PIL import Image

TITLE = "A 12-megapixel photo through sda denoise"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

TARGET_SECONDS = 120.0
"""The photo model's target: a 12 MP photo in under 2 minutes."""


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, models=[f"photo={ROOT / 'checkpoints' / 'photo.safetensors'}"], work=True)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level in 0-255 units")
    return parse(parser)


def large_photo(width: int, height: int, path: Path) -> None:
    """The first McMaster photo, cropped to the aspect ratio and upscaled (bicubic) to ``width`` × ``height``."""
    source = Image.open(sorted(MCMASTER.glob("*.tif"), key=lambda p: int(p.stem))[0]).convert("RGB")
    side = source.width
    crop_height = round(side * height / width)
    top = (source.height - crop_height) // 2
    source.crop((0, top, side, top + crop_height)).resize((width, height), Image.BICUBIC).save(path)


def read(path: Path) -> torch.Tensor:
    """An image file as float32 ``(3, H, W)`` pixels in [0, 1]."""
    return torch.from_numpy(read_pixels(path)).float().permute(2, 0, 1)


def main() -> None:
    args = parse_args()
    rows = []
    with work_folder(args.work, "sda-large-") as work:
        clean, noisy = work / "clean.png", work / "noisy.png"
        large_photo(args.width, args.height, clean)
        level = f"{args.sigma:g}/255"
        run_cli("noise", str(clean), "--sigma", level, "--seed", "0", "-o", str(noisy), "-q", threads=1, check=True)
        megapixels = args.width * args.height / 1e6
        truth = read(clean)[None]
        for name, path in args.models.items():
            out = work / f"{name}.png"
            command = ["denoise", str(noisy), "--sigma", level, "--model", path, "--precision", "fp32"]
            result = run_cli(*command, "-o", str(out), "-q", threads=args.threads)
            if result.error:
                rows.append([name, f"n/a ({result.error})", "—", "—", "—", "—"])
                continue
            quality = float(psnr(read(out)[None], truth)[0])
            target = f"< {TARGET_SECONDS:g} s: {'PASS' if result.seconds < TARGET_SECONDS else 'FAIL'}"
            rows.append(
                [
                    name,
                    f"{result.seconds:.1f}",
                    f"{result.seconds / megapixels:.2f}",
                    f"{result.memory:.0f}",
                    f"{quality:.2f}",
                    target if name == "photo" and megapixels >= 12 else "—",
                ]
            )
    checkpoints = "; ".join(f"{name}: {checkpoint_line(Path(path))}" for name, path in args.models.items())
    text = "\n".join(
        [
            header(TITLE, checkpoints),
            f"One {args.width}×{args.height} RGB photo (the first McMaster photo upscaled, bicubic), 8-bit noisy PNG "
            f"at σ = {args.sigma:g}/255 from `sda noise --seed 0`, denoised by `sda denoise --method mmse --precision "
            f"fp32` at each model's default tile, in a fresh process with OMP_NUM_THREADS={args.threads}: "
            f"{MEASURED}. PSNR against the upscaled clean photo, for reference only.",
            "",
            table(["model", "seconds", "s/MP", "peak RSS (MB)", "PSNR (dB)", "target"], rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
