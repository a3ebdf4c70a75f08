"""Figures of the model card: the training loss curve, a grid of 64 samples, and before/after crops of a photo.

The loss log is the ``OUT.log.csv`` that ``sda train`` appends at every checkpoint (step, mean loss since
the previous checkpoint, wall seconds). The curve is drawn with Pillow (log-scaled loss, linear steps).
The samples come from the real CLI (``sda sample``, ``_common.run_cli``), so the grid shows what a user gets.

Run from the repository root:

    python benchmarks/model_card.py --log checkpoints/cifar10.log.csv --model checkpoints/cifar10.safetensors
    python benchmarks/model_card.py --log checkpoints/photo.log.csv --loss-name photo_loss.png --no-samples \
        --crops cifar10=checkpoints/cifar10.safetensors photo=checkpoints/photo.safetensors

``--quality CSV`` (the ``--log`` of ``benchmarks/sample_quality.py``) draws ``kid.png``: KID-1k against images seen
(log-log), one point (± its standard error) per checkpoint, one colour per sampler setting and kind of weights (EMA
or raw, at a constant or a decayed rate), the target KID 0.03, and the power law :math:`\mathrm{KID} = a\, n^{-b}`
fitted to the longest series by least squares on the logarithms, extended to where it meets the target: an
extrapolation, printed with the images it predicts. Drawn are that series and those of ``sda sample``'s default
setting; the other settings, each measured at one checkpoint, are the table of ``sample_quality.py --from-log``.

``--crops`` draws ``photo_crops.png``: a 160 × 160 crop of the first McMaster photo, clean, with 8-bit noise of
sigma 25/255 (clipped, quantised, seed 0), and as each model's ``mmse`` estimate (``sda_cli.denoise``, float32) of
that noisy crop, with each crop's PSNR under it (``_common.psnr``).
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from _common import MCMASTER, arguments, pairs, parse, psnr, run_cli
from PIL import Image, ImageDraw

from sda_cli import denoise, load_model
from sda_cli.generate import DEFAULT_SAMPLER
from sda_cli.sampler import DEFAULT_STEPS, START_RATIO

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


def unbroken_runs(steps: list[int]) -> list[range]:
    """Index ranges of the log with no gap: a gap, more than twice the median interval between rows, is a stretch
    of the run whose rows were lost (a machine lost with its training folder); it is left blank, not bridged."""
    gaps = sorted(b - a for a, b in pairwise(steps))
    limit = 2 * gaps[len(gaps) // 2] if gaps else 0
    breaks = [k + 1 for k in range(len(steps) - 1) if steps[k + 1] - steps[k] > limit]
    bounds = [0, *breaks, len(steps)]
    return [range(a, b) for a, b in pairwise(bounds)]


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
    for run in unbroken_runs(steps):
        draw.line([xy(steps[k], losses[k]) for k in run], fill=(31, 119, 180), width=2)
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * span_y
        y = xy(0, value)[1]
        draw.text((4, y - 6), f"{10**value:.3f}", fill="black")
        step = int(fraction * span_x)
        draw.text((xy(step, low)[0] - 12, HEIGHT - MARGIN + 6), f"{step}", fill="black")
    draw.text((WIDTH // 2 - 40, HEIGHT - 22), "training step", fill="black")
    draw.text((MARGIN, 20), "denoising score-matching loss (mean per checkpoint interval, log scale)", fill="black")
    image.save(out)


TARGET_KID = 0.03


Series = dict[str, list[tuple[int, float, float]]]


def read_quality(path: Path) -> Series:
    """``(images seen, KID, its ±)`` of each checkpoint measured with 1,000 samples, one series per sampler setting
    (sampler, start and steps) and kind of weights (EMA or raw, at a constant or a decayed learning rate); the last
    measurement of a checkpoint counts; each series ordered by images seen."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    lines = path.read_text().splitlines()
    names = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(names, line.split(","), strict=True))
        if int(row["count"]) == 1000:
            name = f"{row['sampler']} {row['steps']} steps from {float(row['start_ratio']):g}"
            name += "" if row["weights"] == "ema" else f", {row['weights']}"
            series.setdefault(name, {})[int(row["images_seen"])] = (float(row["kid"]), float(row["kid_error"]))
    return {name: [(n, *v) for n, v in sorted(points.items())] for name, points in series.items()}


def power_law(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """``(a, b)`` of KID = a n^-b, least squares on log KID against log n."""
    x = np.log([seen for seen, _, _ in points])
    y = np.log([kid for _, kid, _ in points])
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.exp(intercept)), float(-slope)


COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (214, 39, 40),
    (140, 86, 75),
    (23, 190, 207),
    (188, 189, 34),
    (227, 119, 194),
)


def draw_kid(series: Series, out: Path) -> tuple[str, int | None]:
    """The KID curves (module docstring): the longest series with the power law fitted to it, and the series of the
    default sampler setting; returns the fitted series' name and the images seen at which its fit meets the target, if
    it falls."""
    fitted = max(series, key=lambda name: len(series[name]))
    default = f"{DEFAULT_SAMPLER} {DEFAULT_STEPS[DEFAULT_SAMPLER]} steps from {START_RATIO:g}"
    series = {name: values for name, values in series.items() if name == fitted or name.split(",")[0] == default}
    points = series[fitted]
    a, b = power_law(points) if len(points) >= 2 else (math.nan, math.nan)
    reach = int((a / TARGET_KID) ** (1 / b)) if b > 0 else None
    every = [point for values in series.values() for point in values]
    x_low = math.log10(min(seen for seen, _, _ in every)) - 0.1
    x_high = math.log10(max([reach or 0, *(seen for seen, _, _ in every)])) + 0.1
    y_low, y_high = math.log10(TARGET_KID) - 0.15, math.log10(max(kid + e for _, kid, e in every)) + 0.1
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)

    def xy(seen: float, kid: float) -> tuple[float, float]:
        x = MARGIN + (WIDTH - 2 * MARGIN) * (math.log10(seen) - x_low) / (x_high - x_low)
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (math.log10(kid) - y_low) / (y_high - y_low)
        return x, y

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    left, right = xy(10**x_low, TARGET_KID), xy(10**x_high, TARGET_KID)
    draw.line([left, right], fill=(200, 0, 0), width=1)
    draw.text((right[0] - 110, right[1] + 4), f"target KID {TARGET_KID:g}", fill=(200, 0, 0))
    if b > 0:
        seen = np.logspace(math.log10(points[0][0]), math.log10(reach or 10**x_high), 50)
        draw.line([xy(n, a * n**-b) for n in seen], fill=(150, 150, 150), width=1)
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        for seen, kid, error in values:
            x, y = xy(seen, kid)
            draw.line([xy(seen, max(kid - error, 10**y_low)), xy(seen, kid + error)], fill=colour, width=2)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((MARGIN + 8, HEIGHT - MARGIN - 18 - 14 * (len(series) - 1 - index)), name, fill=colour)
    ticks = [m * 10**e for e in range(4, 10) for m in (1, 2, 5) if x_low <= math.log10(m * 10**e) <= x_high]
    for seen in ticks:
        draw.text((xy(seen, 10**y_low)[0] - 16, HEIGHT - MARGIN + 6), f"{seen / 1e6:.2g}M", fill="black")
    for kid in (0.03, 0.05, 0.1, 0.2):
        if y_low <= math.log10(kid) <= y_high:
            draw.text((8, xy(10**x_low, kid)[1] - 6), f"{kid:g}", fill="black")
    draw.text((WIDTH // 2 - 60, HEIGHT - 22), "images seen (log scale)", fill="black")
    law = f"; grey: KID = {a:.3g} n^-{b:.3f} fitted to {fitted}, extrapolated" if b > 0 else ""
    draw.text((MARGIN, 20), f"KID-1k against images seen (log-log){law}", fill="black")
    image.save(out)
    return fitted, reach


def main() -> None:
    parser = arguments(__doc__, model="cifar10", seed="seed of the samples", record=False)
    parser.add_argument("--log", type=Path, default=Path("checkpoints/cifar10.log.csv"))
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--loss-name", default="loss.png", help="file name of the loss curve in --out-dir")
    parser.add_argument("--crops", nargs="*", default=[], help="NAME=PATH of models for photo_crops.png")
    parser.add_argument("--quality", type=Path, default=None, help="sample_quality.py's --log: draws kid.png")
    args = parse(parser)
    if args.quality is not None:
        series = read_quality(args.quality)
        fitted, reach = draw_kid(series, args.out_dir / "kid.png")
        where = "never" if reach is None else f"at {reach:,} images seen"
        print(f"wrote {args.out_dir / 'kid.png'}: the power law fitted to {fitted} ({len(series[fitted])} "
              f"checkpoints) reaches KID {TARGET_KID:g} {where}")  # fmt: skip
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
