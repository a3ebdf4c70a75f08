"""Denoising quality of a checkpoint through the real command line, against CBM3D, on CIFAR-10 test images.

The first ``--count`` CIFAR-10 test images are written as 8-bit PNGs; for each ``--sigma``, ``sda noise``
(seed 0; 8-bit output, so clipped and quantised) makes the noisy files and ``sda denoise`` (mmse) denoises them.
PSNR (peak 1 on [0, 1] pixels, per image then averaged) and SSIM (scikit-image, ``data_range=1``) are measured
against the clean images, for the noisy input, for sda and for CBM3D (``bm3d.bm3d_rgb(noisy, sigma_psd=sigma)``,
clipped to [0, 1]) on the same noisy files (the first ``--bm3d-count`` of them, beside sda's PSNR on those).
sda's seconds per image is the wall time of the ``sda denoise`` command (process start and model load included)
over the image count; CBM3D's is its compute time per image.
A row passes when sda's PSNR reaches the value required of the CIFAR-10 model (``cifar10.safetensors``); another
model (the photo model's CIFAR-10 figures) has no required value and its own section of ``benchmarks/RESULTS.md``.

Run from the repository root:

    python benchmarks/denoise_quality.py --model checkpoints/cifar10.safetensors --count 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    arguments,
    checkpoint_line,
    fmt,
    header,
    parse,
    psnr,
    read_folder,
    report,
    run_cli,
    ssim,
    table,
    work_folder,
    write_cifar_pngs,
)

TITLE = "Denoising quality: sda mmse against CBM3D"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

REQUIRED = {0.1: 28.7, 0.2: 25.0, 0.3: 22.4}
"""The PSNR (dB) the shipped CIFAR-10 model (``cifar10.safetensors``) must reach at each pixel sigma."""


def section_title(model: Path) -> str:
    """The table's heading: :data:`TITLE` for the CIFAR-10 model, with the file's stem for any other model (the photo
    model's CIFAR-10 figures), so that each model keeps its own section of ``benchmarks/RESULTS.md``."""
    return TITLE if model.stem == "cifar10" else f"{TITLE} ({model.stem} model)"


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, model="cifar10", count=1000, count_help="test images (the first ones)", data_dir=True,
                       work=True)  # fmt: skip
    parser.add_argument("--sigmas", default="0.1,0.2,0.3", help="pixel-unit noise levels")
    parser.add_argument("--bm3d", action=argparse.BooleanOptionalAction, default=True, help="also run CBM3D")
    parser.add_argument(
        "--bm3d-count", type=int, default=None, help="CBM3D on the first N noisy files only (default: all)"
    )
    return parse(parser)


def mean_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(psnr(torch.from_numpy(estimate), torch.from_numpy(truth)).mean())


def mean_ssim(estimate: np.ndarray, truth: np.ndarray) -> float | None:
    try:
        return float(np.mean(ssim(estimate, truth)))
    except ImportError:  # scikit-image is not installed
        return None


def cbm3d(noisy: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
    """CBM3D estimates of every noisy image, clipped to [0, 1], and the seconds per image."""
    import bm3d

    started = time.perf_counter()
    out = np.stack([np.clip(bm3d.bm3d_rgb(image, sigma_psd=sigma), 0, 1) for image in noisy])
    return out, (time.perf_counter() - started) / len(noisy)


def measure(args: argparse.Namespace, model: Path, workdir: Path, with_bm3d: bool) -> list[list[str]]:
    """One table row per sigma (see the module docstring), printed as it comes."""
    clean_dir = workdir / "clean"
    clean = write_cifar_pngs(args.data_dir, args.count, clean_dir)
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        noisy_dir, out_dir = workdir / f"noisy_{sigma:g}", workdir / f"sda_{sigma:g}"
        noise = ["noise", str(clean_dir), "--sigma", str(sigma), "--seed", "0", "-o", str(noisy_dir), "-q"]
        run_cli(*noise, threads=1, check=True)
        command = ["denoise", str(noisy_dir), "--sigma", str(sigma), "-o", str(out_dir), "--model", str(model), "-q"]
        seconds = run_cli(*command, threads=args.threads, check=True).seconds
        noisy, denoised = read_folder(noisy_dir), read_folder(out_dir)
        sda_psnr = mean_psnr(denoised, clean)
        row = [f"{sigma:g}", fmt(mean_psnr(noisy, clean)), fmt(sda_psnr), fmt(mean_ssim(denoised, clean), 4)]
        row.append(f"{seconds / len(clean):.4f}")
        if with_bm3d:
            k = min(args.bm3d_count or len(clean), len(clean))
            estimate, per_image = cbm3d(noisy[:k], sigma)
            row += [fmt(mean_psnr(denoised[:k], clean[:k]))]
            row += [fmt(mean_psnr(estimate, clean[:k])), fmt(mean_ssim(estimate, clean[:k]), 4), f"{per_image:.3f}"]
        else:
            row += ["skipped"] * 4
        required = REQUIRED.get(round(sigma, 6)) if model.stem == "cifar10" else None
        row += [fmt(required), "—" if required is None else ("pass" if sda_psnr >= required else "FAIL")]
        rows.append(row)
        print(" | ".join(row), flush=True)
    return rows


def main() -> None:
    args = parse_args()
    model = args.model.resolve()
    checkpoint = checkpoint_line(model)
    bm3d_reason = None if args.bm3d else "--no-bm3d"
    if args.bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError as error:
            bm3d_reason = f"bm3d is not installed ({error}); pip install bm3d"
    if bm3d_reason:
        print(f"CBM3D columns skipped: {bm3d_reason}")
    try:
        import skimage  # noqa: F401
    except ImportError as error:
        print(f"SSIM columns skipped: scikit-image is not installed ({error}); pip install scikit-image")

    with work_folder(args.work, "sda-quality-") as workdir:
        rows = measure(args, model, workdir, bm3d_reason is None)

    k = min(args.bm3d_count or args.count, args.count)
    columns = ["σ", "noisy PSNR", "sda PSNR", "sda SSIM", "sda s/img", f"sda PSNR (first {k})"]
    columns += [f"CBM3D PSNR (first {k})", "CBM3D SSIM", "CBM3D s/img"]
    parts = [
        header(section_title(model), checkpoint),
        f"First {args.count} CIFAR-10 test images, 8-bit PNG noisy inputs (clipped, quantised) from "
        f"`sda noise --seed 0`; outputs are 8-bit PNGs. PSNR in dB.\n",
        table([*columns, "required PSNR", "sda pass"], rows),
    ]
    if bm3d_reason:
        parts.append(f"\nCBM3D skipped: {bm3d_reason}")
    text = "\n".join(parts)
    report(section_title(model), text, args.record)


if __name__ == "__main__":
    main()
