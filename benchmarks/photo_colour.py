"""Brightness against colour: where the photo model's denoising error lies, and the fine colour detail of its data.

What. Two tables. The first, of the data: for BSDS400 (the training photos, JPEG), the same downscaled by 2 (as
``sda train --half-scale`` adds them), McMaster18 (the test photos, TIFF) and the first 1,000 CIFAR-10 training
images, the share of each YCbCr channel's variance above a quarter of a cycle per pixel (the band that JPEG's 4:2:0
chroma subsampling cannot hold), and the count of JPEG files that subsample their chroma. The second, of the models:
each ``--models NAME=PATH`` (default: the cifar10 and photo models shipped) denoises the same ``--count`` fixed
crops of BSDS400 and of McMaster18 at each ``--sigmas`` level (``mmse``, float32), and the table gives the mean PSNR
and the mean squared error in each YCbCr channel, in (1/255)² units: a model that takes fine colour detail for noise
shows it as a larger Cb and Cr error on McMaster with no larger Y error.

How. YCbCr of JPEG (ITU-R BT.601, full range) from [0, 1] RGB. Band share: per image (cut to a multiple of 8
pixels), the 2-D power spectrum of each channel less its mean, the fraction at frequencies with max(|f_x|, |f_y|) >
1/4 cycle per pixel, averaged over images. Crops and noise as ``benchmarks/photo_fit.py`` makes them (the same crops
when ``--count`` and ``--crop`` are the same). Run from the repository root; on 1 thread of an AVX-512 EPYC beside a
training run, the photo model took about a minute and the cifar10 model about 4 minutes:

    python benchmarks/photo_colour.py --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_DATA, ROOT, arguments, checkpoint_line, header, parse, psnr, report, table
from photo_fit import SETS, crops, denoised, photo_files
from PIL import Image, JpegImagePlugin

from sda_cli import load_model
from sda_cli.data import cifar10, half_size

TITLE = "Brightness against colour: photo data and the denoising error per YCbCr channel"
"""The heading of this script's tables, and of its section of ``benchmarks/RESULTS.md``."""

YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
"""RGB to YCbCr of JPEG (BT.601, full range), without the offsets."""


def parse_args() -> argparse.Namespace:
    shipped = ROOT / "checkpoints"
    models = [f"cifar10={shipped / 'cifar10.safetensors'}", f"photo={shipped / 'photo.safetensors'}"]
    parser = arguments(__doc__, models=models, count=48, count_help="crops per set", threads=1)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[5.0, 15.0, 25.0], help="levels in /255")
    parser.add_argument("--crop", type=int, default=128, help="side of the crops in pixels")
    return parse(parser)


def ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB to YCbCr (:data:`YCBCR`)."""
    return torch.einsum("ij,...jhw->...ihw", YCBCR.to(rgb), rgb)


def high_band_share(image: torch.Tensor) -> torch.Tensor:
    """Per YCbCr channel of a uint8 ``(3, H, W)`` image, the share of its variance above 1/4 cycle per pixel."""
    height, width = image.shape[1] // 8 * 8, image.shape[2] // 8 * 8
    x = ycbcr(image[:, :height, :width].double() / 255)
    power = torch.fft.fft2(x - x.mean(dim=(1, 2), keepdim=True)).abs().square()
    fy, fx = torch.fft.fftfreq(height).abs()[:, None], torch.fft.fftfreq(width).abs()[None]
    high = torch.maximum(fy, fx) > 0.25
    return power[:, high].sum(1) / power.flatten(1).sum(1)


def photos(folder: Path) -> list[torch.Tensor]:
    return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in photo_files(folder)]


def subsampled(folder: Path) -> str:
    """How many of the folder's JPEG files store their colour at half resolution (4:2:0), of how many JPEGs."""
    jpegs = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")]
    count = 0
    for path in jpegs:
        with Image.open(path) as image:
            count += JpegImagePlugin.get_sampling(image) == 2
    return f"{count} of {len(jpegs)}" if jpegs else "no JPEG"


def data_rows() -> list[list[str]]:
    bsds, mcmaster = photos(SETS["BSDS400 (train)"]), photos(SETS["McMaster18"])
    sets = {
        "BSDS400 (train)": (bsds, subsampled(SETS["BSDS400 (train)"])),
        "BSDS400 downscaled by 2": ([half_size(image) for image in bsds], "—"),
        "McMaster18 (test)": (mcmaster, subsampled(SETS["McMaster18"])),
        "CIFAR-10 (first 1,000 train)": (list(cifar10(DEFAULT_DATA, download=False).images[:1000]), "—"),
    }
    rows = []
    for name, (images, jpeg) in sets.items():
        y, cb, cr = torch.stack([high_band_share(image) for image in images]).mean(0).tolist()
        shares = [f"{y:.4f}", f"{cb:.4f}", f"{cr:.4f}", f"{cb / y:.2f} / {cr / y:.2f}"]
        rows.append([name, str(len(images)), jpeg, *shares])
    return rows


def model_rows(models: dict[str, str], sigmas: list[float], count: int, side: int) -> list[list[str]]:
    rng = np.random.default_rng(0)
    data = {name: crops(folder, count, side, rng) for name, folder in SETS.items()}
    rows = []
    for name, path in models.items():
        model = load_model(path, precision="fp32")
        for set_name, clean in data.items():
            for level in sigmas:
                estimate = denoised(model, clean, level)
                error = ycbcr(estimate - clean).square().mean(dim=(0, 2, 3)) * 255**2
                quality = float(psnr(estimate, clean).mean())
                rows.append([name, set_name, f"{level:g}", f"{quality:.2f}", *(f"{e:.2f}" for e in error.tolist())])
                print(*rows[-1], flush=True)
    return rows


def main() -> None:
    args = parse_args()
    models = model_rows(args.models, args.sigmas, args.count, args.crop)
    checkpoints = "; ".join(f"{name}: {checkpoint_line(Path(path))}" for name, path in args.models.items())
    text = "\n".join(
        [
            header(TITLE, checkpoints),
            "Share of each YCbCr channel's variance above 1/4 cycle per pixel (mean over images; 4:2:0 chroma cannot "
            "hold that band):",
            "",
            table(["images", "count", "JPEG 4:2:0", "Y", "Cb", "Cr", "Cb / Y, Cr / Y"], data_rows()),
            "",
            f"Denoising error per YCbCr channel: {args.count} fixed {args.crop}×{args.crop} crops of each set, float "
            "Gaussian noise at σ (/255), `mmse` at float32; mean PSNR (dB) and mean squared error of each channel "
            "in (1/255)²:",
            "",
            table(["model", "crops", "σ", "PSNR", "Y", "Cb", "Cr"], models),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
