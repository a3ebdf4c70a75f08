"""Figures of the model card: the training loss curve, a grid of 64 samples, and before/after crops of a photo.

The loss log is the ``OUT.log.csv`` that ``sda train`` appends at every checkpoint (step, mean loss since
the previous checkpoint, wall seconds). The curve is drawn with Pillow (log-scaled loss, linear steps).
The samples come from the real CLI (``sda sample``, ``_common.run_cli``), so the grid shows what a user gets.

Run from the repository root:

    python benchmarks/model_card.py --log checkpoints/cifar10.log.csv --model checkpoints/cifar10.safetensors
    python benchmarks/model_card.py --log checkpoints/photo.log.csv --loss-name photo_loss.png --no-samples \
        --crops cifar10=checkpoints/cifar10.safetensors photo=checkpoints/photo.safetensors

``--crops`` draws ``photo_crops.png``: a 160 × 160 crop of the first McMaster photo, clean, with 8-bit noise of
sigma 25/255 (clipped, quantised, seed 0), and as each model's ``mmse`` estimate (``sda_cli.denoise``, float32) of
that noisy crop, with each crop's PSNR under it (``_common.psnr``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from _common import MCMASTER, arguments, pairs, parse, psnr, run_cli
from PIL import Image, ImageDraw

from sda_cli import denoise, load_model

WIDTH, HEIGHT, MARGIN = 640, 360, 60
PHOTO = MCMASTER / "1.tif"
CROP, SIGMA = (170, 170, 330, 330), 25 / 255


def read_log(path: Path) -> list[tuple[int, float]]:
    rows = []
    for line in path.read_text().splitlines():
        step, loss, _ = line.split(",")
        if math.isfinite(float(loss)):
            rows.append((int(step), float(loss)))
    return sorted(dict(rows).items())


def draw_curve(points: list[tuple[int, float]], out: Path) -> None:
    """A log-scale loss curve with labelled axes."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    steps, losses = [s for s, _ in points], [math.log10(v) for _, v in points]
    low, high = min(losses), max(losses)
    span_y, span_x = max(high - low, 1e-6), max(steps[-1], 1)

    def xy(step: int, log_loss: float) -> tuple[float, float]:
        x = MARGIN + (WIDTH - 2 * MARGIN) * step / span_x
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (log_loss - low) / span_y
        return x, y

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    draw.line([xy(s, v) for s, v in zip(steps, losses, strict=True)], fill=(31, 119, 180), width=2)
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * span_y
        y = xy(0, value)[1]
        draw.text((4, y - 6), f"{10**value:.3f}", fill="black")
        step = int(fraction * span_x)
        draw.text((xy(step, low)[0] - 12, HEIGHT - MARGIN + 6), f"{step}", fill="black")
    draw.text((WIDTH // 2 - 40, HEIGHT - 22), "training step", fill="black")
    draw.text((MARGIN, 20), "denoising score-matching loss (mean per checkpoint interval, log scale)", fill="black")
    image.save(out)


def main() -> None:
    parser = arguments(__doc__, model="cifar10", seed="seed of the samples", record=False)
    parser.add_argument("--log", type=Path, default=Path("checkpoints/cifar10.log.csv"))
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--loss-name", default="loss.png", help="file name of the loss curve in --out-dir")
    parser.add_argument("--crops", nargs="*", default=[], help="NAME=PATH of models for photo_crops.png")
    args = parse(parser)
    if args.crops:
        draw_crops(pairs(args.crops, parser, "--crops"), args.out_dir / "photo_crops.png")
        print(f"wrote {args.out_dir / 'photo_crops.png'}")
    draw_curve(read_log(args.log), args.out_dir / args.loss_name)
    print(f"wrote {args.out_dir / args.loss_name}")
    if not args.no_samples:
        out = (args.out_dir / "samples.png").resolve()  # the command runs from the repository root
        command = ["sample", "-n", str(args.samples), "--seed", str(args.seed), "--model", str(args.model)]
        command += ["-o", str(out), "-q"]
        print(" ".join(["sda_cli", *command]))
        run_cli(*command, threads=args.threads, check=True)


def draw_crops(models: dict[str, str], out: Path) -> None:
    """Clean, noisy and each model's estimate of one photo crop, side by side, each with its PSNR."""
    clean = torch.from_numpy(np.asarray(Image.open(PHOTO).convert("RGB").crop(CROP), dtype=np.float32) / 255)
    clean = clean.permute(2, 0, 1)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = ((clean + SIGMA * noise).clamp(0, 1) * 255).round() / 255
    panels = [("clean", clean), (f"noisy, {SIGMA * 255:g}/255", noisy)]
    for name, path in models.items():
        estimate, _ = denoise(load_model(path, precision="fp32"), noisy, SIGMA, bit_depth=8)
        panels.append((name, ((estimate.clamp(0, 1) * 255).round() / 255).cpu()))
    side, caption = clean.shape[-1], 34
    sheet = Image.new("RGB", (len(panels) * (side + 8) + 8, side + caption + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, pixels) in enumerate(panels):
        left = 8 + k * (side + 8)
        image = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        sheet.paste(Image.fromarray(image), (left, 8))
        quality = "" if name == "clean" else f"{float(psnr(pixels[None], clean[None])[0]):.2f} dB"
        draw.text((left, side + 12), name, fill="black")
        draw.text((left, side + 24), quality, fill="black")
    sheet.save(out)


if __name__ == "__main__":
    main()
