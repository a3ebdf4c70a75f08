"""The spread of ``sda restore``'s posterior draws on photo crops: does the ``--std`` map predict the error?

What. For a linear observation y = A x + sigma_y n, the mean mean_K of K exact draws of p(x | y) and their per-pixel
standard deviation s (Bessel's correction) satisfy E|x - mean_K|² = (1 + 1/K) E[s²]: the identity behind the std
ratio of ``benchmarks/calibration.py``, 1 for exact draws. The draw ratio E|x - draw|² / E|x - m|² needs the posterior
mean m, which a restoration method does not give; with E|x - m|² estimated as E|x - mean_K|² - E[s²] / K (mean_K
less its Monte-Carlo part), it is a function of the same std ratio r, (r (K + 1) + K - 1) / (r (K + 1) - 1), and is
shown as such (2 when r = 1): not a second check.

Each of ``--count`` crops (``--crop`` pixels, the McMaster photos, ``calibration.photo_crops``: crops the models never
trained or tuned on) is written as a float ``.npy`` file and observed by ``sda degrade --sigma SIGMA_Y --seed 0`` on
each of ``--tasks``: ``mask``, 50 % of the pixels missing (``--mask``, one seeded mask for all crops); ``blur``, a
Gaussian blur of standard deviation 1.6 pixels (``--blur 1.6``). Then ``sda restore OBS --method M --samples K --std
STD`` with the task's operator at the method's default steps, on ``--model`` (default: restore's own, the photo model).
One row per task and method: the PSNR of :math:`\\bar{x}_K`, the std ratio (1), the implied draw ratio (2) and the
seconds per crop. The issue's ranges: std ratio in [0.9, 1.1], draw ratio in [1.9, 2.1].

Run from the repository root (``mmps`` costs about 10 forward-pass equivalents per step):

    python benchmarks/restore_spread.py --count 8 --crop 64 --samples 4 --record
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from _common import (
    MCMASTER,
    arguments,
    checkpoint_line,
    header,
    parse,
    positive,
    psnr,
    report,
    run_cli,
    table,
    work_folder,
)
from calibration import photo_crops, std_ratio
from PIL import Image

TITLE = "Spread of restore's posterior draws on photo crops"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

TASKS = {"mask": "50 % of the pixels missing", "blur": "Gaussian blur of standard deviation 1.6 pixels"}
COLUMNS = ["task", "method", "K", "PSNR of the mean (dB)", "std ratio (1)", "draw ratio (2, implied)", "verdict",
           "s/crop"]  # fmt: skip


def implied_draw_ratio(std_ratio: float, k: int) -> float:
    """The draw ratio with the posterior mean's error estimated as E|x - mean_K|² - E s² / K (module docstring)."""
    return (std_ratio * (k + 1) + k - 1) / (std_ratio * (k + 1) - 1)


def operator_options(task: str, work: Path, side: int) -> list[str]:
    """The ``sda degrade`` / ``sda restore`` options of ``task``; the mask is written into ``work``."""
    if task == "blur":
        return ["--blur", "1.6"]
    mask = np.zeros(side * side, dtype=np.uint8)
    mask[np.random.default_rng(0).permutation(side * side)[: side * side // 2]] = 255
    path = work / "mask.png"
    Image.fromarray(mask.reshape(side, side)).save(path)
    return ["--mask", str(path)]


def main() -> None:
    parser = arguments(__doc__, model=None, count=8, count_help="McMaster crops", work=True)
    parser.add_argument("--crop", type=positive, default=64, help="the side of the crops")
    parser.add_argument("--samples", type=positive, default=4, help="K draws per crop")
    parser.add_argument("--sigma-y", type=float, default=0.01, help="observation noise, pixel units")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=["mmps"], help="sampling methods of sda restore")
    args = parse(parser)
    x = photo_crops(MCMASTER, args.count, args.crop)
    rows = []
    with work_folder(args.work, "sda-restore-spread-") as work:
        truth = work / "truth"
        truth.mkdir(exist_ok=True)
        names = [f"{i:04d}.npy" for i in range(len(x))]
        for name, crop in zip(names, x, strict=True):
            np.save(truth / name, crop.float().numpy())
        model = ["--model", str(args.model)] if args.model else []
        for task in args.tasks:
            options = [*operator_options(task, work, args.crop), "--sigma", repr(args.sigma_y)]
            observed = work / f"{task}-observed"
            run_cli("degrade", str(truth), *options, "--seed", "0", "-o", str(observed), threads=args.threads,
                    check=True)  # fmt: skip
            for method in args.methods:
                mean_dir, std_dir = work / f"{task}-{method}-mean", work / f"{task}-{method}-std"
                done = run_cli(
                    "restore", str(observed), *options, "--method", method, "--samples", str(args.samples),
                    "--std", str(std_dir), "--seed", "0", "-q", *model, "-o", str(mean_dir),
                    threads=args.threads, check=True,
                )  # fmt: skip
                mean = torch.from_numpy(np.stack([np.load(mean_dir / name) for name in names])).double()
                std = torch.from_numpy(np.stack([np.load(std_dir / name) for name in names])).double()
                k = args.samples
                ratio = std_ratio(x, mean, std, k)
                draw = implied_draw_ratio(ratio, k)
                verdict = "pass" if 0.9 <= ratio <= 1.1 and 1.9 <= draw <= 2.1 else "FAIL"
                quality = float(psnr(mean.clamp(0, 1), x).mean())
                rows.append([task, method, str(k), f"{quality:.2f}", f"{ratio:.3f}", f"{draw:.3f}", verdict,
                             f"{done.seconds / len(x):.1f}"])  # fmt: skip
                print(table(COLUMNS, rows), file=sys.stderr, flush=True)
    tasks = "; ".join(f"{task}: {TASKS[task]}" for task in args.tasks)
    text = "\n".join(
        [
            header(TITLE, checkpoint_line(args.model)),
            f"{args.count} crops of {args.crop}×{args.crop} pixels of the McMaster photos (float .npy), observed by "
            f"`sda degrade --sigma {args.sigma_y:g} --seed 0` ({tasks}), restored by `sda restore --samples "
            f"{args.samples} --std` at each method's defaults. Std ratio E|x − mean|² / ((1 + 1/K) E s²), 1 for exact "
            "draws; the draw ratio implied by it (module docstring). Ranges: std ratio in [0.9, 1.1], draw ratio in "
            "[1.9, 2.1].\n",
            table(COLUMNS, rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
