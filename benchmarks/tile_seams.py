"""Posterior draws across tile overlaps: is their spread in the overlaps that of the rest of the image?

What. A flat grey RGB image (value 0.5, ``--size`` × ``--size``, larger than the model's tile), evaluated in the
model's default tiles by ``sda_cli.tiles.TiledDenoiser``, at two levels:

1. posterior draws: white noise of level ``--sigma`` (pixel units) added once per repeat (seeds ``--seed``,
   ``--seed + 1``, ... for ``--repeats``), then ``--samples`` draws of the exact posterior
   (``sda_cli.denoise(..., method="mean", inflation=1)``: raw draws of the reverse SDE from the matched time,
   ``--steps`` ancestral steps). From the per-pixel variance over the draws (the square of the returned
   standard-deviation map, averaged over the repeats):

   * the variance of each row (averaged over its columns and channels) and of each column; the smallest and the
     median, and the mean over the rows (columns) of the tile overlaps against the mean over the others, with 2
     standard errors from the scatter of the other rows (which neighbours make an underestimate);
   * the profile of the row and column variances in bins of 4 pixels, over their median (``*``: in an overlap);
   * seams of the mean of the draws: the mean absolute difference between neighbouring rows (columns), for the
     pairs inside an overlap against the others;

2. one evaluation, the mechanism: ``--inputs`` inputs :math:`x_t = \\sigma_t n` (the flat image in model units is
   0) at noise ratios :math:`\\sigma_t / \\alpha_t` from the matched one down, through one ``TiledDenoiser``
   evaluation: the variance over the inputs of :math:`\\hat{x}` in the overlaps against elsewhere (each input gives
   the difference of its mean squared deviations there and elsewhere: 2 standard errors of that), the same for the
   whole image in one piece (the network's own variation from the border inwards, the reference), the variance in
   the overlaps tiled over untiled (paired on the same inputs: 2 standard errors of the difference), and, from the
   two upper tiles evaluated alone, the correlation over the inputs of their outputs in their overlap, averaged over
   its pixels: averaging two estimates of correlation :math:`\\rho` with equal weights leaves
   :math:`(1 + \\rho) / 2` of the variance.

A tiling that averages two tiles' different outputs in an overlap lowers the variance there; one that gives each
pixel one tile's output keeps it.

How. In-process, ``--threads`` torch threads; the model at ``--precision`` (default: its own). Run from the
repository root:

    python benchmarks/tile_seams.py --model checkpoints/cifar10.safetensors --steps 128
"""

from __future__ import annotations

import argparse
import math
import time
from itertools import pairwise
from pathlib import Path

import torch
from _common import ROOT, arguments, checkpoint_line, header, parse, report, table
from torch import Tensor

from sda_cli import denoise, load_model
from sda_cli.denoiser import Denoiser
from sda_cli.sampler import alpha_sigma
from sda_cli.tiles import PIXELS_PER_CALL, TiledDenoiser, default_tile, tile_starts

TITLE = "Posterior draws across tile overlaps"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

BIN = 4
"""Pixels per bin of the printed profiles."""

RATIOS = (0.4, 0.2, 0.1, 0.05, 0.02)
"""Noise ratios σ_t/α_t (model units) of the one-evaluation table; the first is the matched one of σ = 0.2."""


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, model=ROOT / "checkpoints" / "cifar10.safetensors", seed="seed of the noise and draws")
    parser.add_argument("--size", type=int, default=96, help="side of the flat image in pixels (default: 96)")
    parser.add_argument("--sigma", type=float, default=0.2, help="noise level in pixel units (default: 0.2)")
    parser.add_argument("--samples", type=int, default=16, help="posterior draws per repeat (default: 16)")
    parser.add_argument("--steps", type=int, default=128, help="ancestral steps of a draw (default: 128)")
    parser.add_argument("--repeats", type=int, default=1, help="noisy observations, each drawn from (default: 1)")
    parser.add_argument("--inputs", type=int, default=32, help="inputs of the one-evaluation table (default: 32)")
    parser.add_argument("--precision", default="auto", help="the network's precision (default: auto)")
    return parse(parser)


def overlaps(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The pixel ranges ``[a, e)`` covered by two neighbouring tiles along an axis."""
    side = min(tile, size)
    return [(after, before + side) for before, after in pairwise(tile_starts(size, tile, overlap))]


def inside(size: int, bands: list[tuple[int, int]]) -> Tensor:
    """Which of ``size`` positions lie in one of ``bands``."""
    mask = torch.zeros(size, dtype=torch.bool)
    for a, e in bands:
        mask[a:e] = True
    return mask


def compare(values: Tensor, band: Tensor) -> tuple[float, float, float]:
    """The smallest value over the median, the mean in ``band`` over the mean outside, and 2 standard errors of it."""
    values = values.double()
    median = float(values.median())
    ratio = float(values[band].mean() / values[~band].mean())
    scatter = float(values[~band].std() / values[~band].mean())
    error = 2 * scatter * math.sqrt(1 / int(band.sum()) + 1 / int((~band).sum()))
    return float(values.min()) / median, ratio, error


def profile(values: Tensor, band: Tensor) -> list[str]:
    """``values`` in bins of :data:`BIN` pixels over their median, ``*`` on bins that touch ``band``."""
    median = float(values.double().median())
    cells = []
    for first in range(0, len(values), BIN):
        part = slice(first, first + BIN)
        mark = "*" if bool(band[part].any()) else ""
        cells.append(f"{float(values[part].double().mean()) / median:.2f}{mark}")
    return cells


def draws(model: Denoiser, args: argparse.Namespace, band: Tensor) -> tuple[list[str], float]:
    """The tables of the posterior draws (module docstring, 1), and their seconds."""
    size, channels = args.size, model.backbone.config.channels
    variance = torch.zeros(channels, size, size, dtype=torch.float64)
    mean = torch.zeros_like(variance)
    began = time.perf_counter()
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        generator = torch.Generator().manual_seed(seed)
        noisy = 0.5 + args.sigma * torch.randn(1, channels, size, size, generator=generator)
        estimate, std = denoise(
            model, noisy, args.sigma, method="mean", samples=args.samples, steps=args.steps, seed=seed, inflation=1.0
        )
        assert std is not None
        variance += std[0].double() ** 2 / args.repeats  # pixel units
        mean += estimate[0].double() / args.repeats
    seconds = time.perf_counter() - began
    per_row, per_col = variance.mean(dim=(0, 2)), variance.mean(dim=(0, 1))
    rows = []
    for name, values in (("rows", per_row), ("columns", per_col)):
        low, ratio, error = compare(values, band)
        where = int(values.argmin())
        rows.append(
            [
                name,
                f"{float(values.min()):.3e} (at {where}{', in an overlap' if band[where] else ''})",
                f"{float(values.median()):.3e}",
                f"{low:.3f}",
                f"{ratio:.3f} ± {error:.3f}",
            ]
        )
    steps_rows = []
    for name, axis in (("rows", -2), ("columns", -1)):
        step = mean.diff(dim=axis).abs()
        step = step.mean(dim=(0, 2)) if axis == -2 else step.mean(dim=(0, 1))
        pair = band[1:] & band[:-1]  # both neighbours in an overlap
        where = int(step.argmax())
        steps_rows.append(
            [
                name,
                f"{float(step[pair].mean()):.3e}",
                f"{float(step[~pair].mean()):.3e}",
                f"{float(step[pair].mean() / step[~pair].mean()):.3f}",
                f"{float(step.max() / step.median()):.2f} (at {where}|{where + 1})",
            ]
        )
    bins = [f"{first}-{min(first + BIN, size) - 1}" for first in range(0, size, BIN)]
    profile_rows = [["rows", *profile(per_row, band)], ["columns", *profile(per_col, band)]]
    half = len(bins) // 2
    lines = [
        table(["axis", "smallest", "median", "smallest / median", "overlaps / elsewhere (± 2 SE)"], rows),
        "",
        f"Variance per bin of {BIN} pixels over the median (`*`: in an overlap):",
        "",
        table(["axis", *bins[:half]], [row[: half + 1] for row in profile_rows]),
        "",
        table(["axis", *bins[half:]], [[row[0], *row[half + 1 :]] for row in profile_rows]),
        "",
        "Seams of the mean of the draws: mean absolute difference between neighbouring rows (columns):",
        "",
        table(["axis", "in overlaps", "elsewhere", "ratio", "largest / median (where)"], steps_rows),
    ]
    return lines, seconds


def evaluations(model: Denoiser, args: argparse.Namespace, band: Tensor) -> list[str]:
    """The table of one evaluation at several noise ratios (module docstring, 2)."""
    size, channels, count = args.size, model.backbone.config.channels, args.inputs
    tile, overlap, grid = default_tile(model)
    starts = tile_starts(size, tile, overlap)
    a, e = overlaps(size, tile, overlap)[0]
    both = band[:, None] | band[None, :]
    generator = torch.Generator().manual_seed(args.seed)
    per_call = max(1, PIXELS_PER_CALL // (tile * tile))
    rows = []
    for ratio in RATIOS:
        t = float(model.schedule.time_of_ratio(torch.tensor(ratio, dtype=torch.float64)))
        _, sigma = alpha_sigma(model.schedule, t)
        x_t = sigma * torch.randn(count, channels, size, size, generator=generator)
        with torch.no_grad():
            x_hat = TiledDenoiser(model, tile, overlap, PIXELS_PER_CALL, grid=grid)(x_t, t).double()
            whole = TiledDenoiser(model, size, overlap, PIXELS_PER_CALL, grid=grid)(x_t, t).double()
            first = x_t[..., starts[0] : starts[0] + tile, :tile]  # the two upper tiles, alone
            second = x_t[..., starts[1] : starts[1] + tile, :tile]
            upper = torch.cat([model(first[i : i + per_call], t) for i in range(0, count, per_call)]).double()
            lower = torch.cat([model(second[i : i + per_call], t) for i in range(0, count, per_call)]).double()
        cells, bands = [f"{ratio:g}", f"{t:.3f}"], []
        for out in (x_hat, whole):
            deviation = (out - out.mean(0)).square().mean(1)  # (inputs, H, W), channels averaged
            there, elsewhere = deviation[:, both].mean(1), deviation[:, ~both].mean(1)
            level = float(elsewhere.mean())
            error = 2 * float((there - elsewhere).std()) / math.sqrt(count) / level
            cells.append(f"{float(there.mean()) / level:.3f} ± {error:.3f}")
            bands.append(there)
        level = float(bands[1].mean())
        error = 2 * float((bands[0] - bands[1]).std()) / math.sqrt(count) / level
        cells.append(f"{float(bands[0].mean()) / level:.3f} ± {error:.3f}")
        p, q = upper[..., a - starts[0] : e - starts[0], :], lower[..., a - starts[1] : e - starts[1], :]
        p, q = p - p.mean(0), q - q.mean(0)
        rho = float(((p * q).mean(0) / (p.square().mean(0) * q.square().mean(0)).sqrt()).mean())
        rows.append([*cells, f"{rho:.4f}", f"{(1 + rho) / 2:.3f}"])
    columns = ["σ_t/α_t", "t", "x̂ variance, overlaps / elsewhere, tiled (± 2 SE)", "the same, untiled"]
    columns.append("in overlaps, tiled / untiled")
    return [table([*columns, "ρ of two tiles", "(1 + ρ) / 2"], rows)]


def main() -> None:
    args = parse_args()
    model = load_model(args.model, device="cpu", precision=args.precision)
    tile, overlap, _ = default_tile(model)
    size = args.size
    if size <= tile:
        raise SystemExit(f"--size {size} must exceed the model's tile {tile}")
    band = inside(size, overlaps(size, tile, overlap))
    began = time.perf_counter()
    one = evaluations(model, args, band)
    one_seconds = time.perf_counter() - began
    lines, seconds = draws(model, args, band)
    where = ", ".join(f"[{a}, {e})" for a, e in overlaps(size, tile, overlap))
    text = "\n".join(
        [
            header(TITLE, checkpoint_line(Path(args.model))),
            f"A flat grey {size}×{size} image (0.5), tile {tile}, overlap {overlap}: overlaps at pixels {where} of "
            f"both axes. Posterior draws: noise σ = {args.sigma:g} (pixel units), {args.repeats} noisy observation(s) "
            f"(seeds from {args.seed}), {args.samples} draws of each (`denoise(method='mean', inflation=1)`), "
            f"{args.steps} ancestral steps; {seconds:.0f} s. Variance over the draws (averaged over the observations), "
            "pixel units², per row (column) the mean over its columns (rows) and channels.",
            "",
            *lines,
            "",
            f"One evaluation: {args.inputs} inputs x_t = σ_t n (the flat image in model units is 0) at each noise "
            "ratio, one `TiledDenoiser` evaluation in tiles and one of the whole image; the pixels in a row or column "
            "overlap against the others; ρ: "
            f"correlation of the two upper tiles' outputs in their overlap, evaluated alone; {one_seconds:.0f} s.",
            "",
            *one,
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
