"""Figures of the model card: the training loss curve and a grid of 64 samples.

The loss log is the ``OUT.log.csv`` that ``sda train`` appends at every checkpoint (step, mean loss since
the previous checkpoint, wall seconds). The curve is drawn with Pillow (log-scaled loss, linear steps).
The samples come from the real CLI (``sda sample``), so the grid shows what a user gets.

Run from the repository root:

    python benchmarks/model_card.py --log checkpoints/cifar10.log.csv --model checkpoints/cifar10.safetensors
    python benchmarks/model_card.py --log checkpoints/photo.log.csv --loss-name photo_loss.png --no-samples
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 60


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, default=Path("checkpoints/cifar10.log.csv"))
    parser.add_argument("--model", type=Path, default=Path("checkpoints/cifar10.safetensors"))
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--loss-name", default="loss.png", help="file name of the loss curve in --out-dir")
    args = parser.parse_args()
    draw_curve(read_log(args.log), args.out_dir / args.loss_name)
    print(f"wrote {args.out_dir / args.loss_name}")
    if not args.no_samples:
        command = [
            sys.executable,
            "-m",
            "sda_cli",
            "sample",
            "-n",
            str(args.samples),
            "--seed",
            str(args.seed),
            "--model",
            str(args.model),
            "-o",
            str(args.out_dir / "samples.png"),
            "-q",
        ]
        print(" ".join(command[1:]))
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
