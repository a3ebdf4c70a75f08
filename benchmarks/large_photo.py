"""One 12-megapixel photo through ``sda denoise``: wall time and peak memory of each model, at float32.

What. A 4000 × 3000 RGB photo (``--width`` × ``--height``), made by bicubic upscaling of a McMaster photo (the first
by name, 500 × 500, cropped to 4:3 first), with 8-bit noisy values from ``sda noise --sigma S --seed 0`` (default
25/255). Each ``--models NAME=PATH`` denoises it with ``sda denoise --method mmse --precision fp32`` at its default
tile, in a fresh process: one row per model with the wall seconds of the whole command (process start, model load,
reading and writing the 12 MP PNGs included), seconds per megapixel, the peak resident memory of that process, and
the target at 12 MP or more: under 120 s for the photo model (issue "Real photos: a photo prior": a 12 MP photo
denoises with mmse in under 2 minutes on 2 cores in float32). PSNR against the upscaled clean photo is shown for
reference only: an upscaled photo is smoother than a real 12 MP one.

How. ``benchmarks/photo_quality.py``'s ``run``: ``OMP_NUM_THREADS=--threads``, ``os.wait4`` for the peak RSS.
Run from the repository root on an otherwise idle machine (a training run beside it halves the speed):

    python benchmarks/large_photo.py --models photo=checkpoints/photo.safetensors --threads 2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, checkpoint_line, header, psnr, report, set_threads, table, work_folder
from photo_quality import PHOTOS, run, sda
from PIL import Image

TITLE = "A 12-megapixel photo through sda denoise"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

TARGET_SECONDS = 120.0
"""The photo model's target: a 12 MP photo in under 2 minutes."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[f"photo={ROOT / 'checkpoints' / 'photo.safetensors'}"],
        help="NAME=PATH of each model to time",
    )
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level in 0-255 units")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of each command")
    parser.add_argument("--work", type=Path, default=None, help="where the images go (default: a temp dir)")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.models = dict(item.split("=", 1) for item in args.models)
    return args


def large_photo(width: int, height: int, path: Path) -> None:
    """The first McMaster photo, cropped to the aspect ratio and upscaled (bicubic) to ``width`` × ``height``."""
    source = Image.open(sorted(PHOTOS.glob("*.tif"), key=lambda p: int(p.stem))[0]).convert("RGB")
    side = source.width
    crop_height = round(side * height / width)
    top = (source.height - crop_height) // 2
    source.crop((0, top, side, top + crop_height)).resize((width, height), Image.BICUBIC).save(path)


def read(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    rows = []
    with work_folder(args.work, "sda-large-") as work:
        clean, noisy = work / "clean.png", work / "noisy.png"
        large_photo(args.width, args.height, clean)
        made = run(sda("noise", str(clean), "--sigma", f"{args.sigma:g}/255", "--seed", "0", "-o", str(noisy), "-q"), 1)
        if made.error:
            raise SystemExit(f"sda noise failed: {made.error}")
        megapixels = args.width * args.height / 1e6
        truth = read(clean)[None]
        for name, path in args.models.items():
            out = work / f"{name}.png"
            level = f"{args.sigma:g}/255"
            command = sda("denoise", str(noisy), "--sigma", level, "--model", path, "--precision", "fp32")
            result = run([*command, "-o", str(out), "-q"], args.threads)
            if result.error:
                rows.append([name, result.error, "—", "—", "—", "—"])
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
            f"fp32` at each model's default tile, in a fresh process with OMP_NUM_THREADS={args.threads}. Seconds: "
            "wall time of the whole command (start, model load, PNG reading and writing included). PSNR against the "
            "upscaled clean photo, for reference only.",
            "",
            table(["model", "seconds", "s/MP", "peak RSS (MB)", "PSNR (dB)", "target"], rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
