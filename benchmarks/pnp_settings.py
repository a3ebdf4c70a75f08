"""PSNR of ``pnp`` (plug-and-play HQS) over a grid of its settings, on CIFAR-10 training images, per restoration task.

What. ``pnp``'s defaults are DPIR's (Zhang et al., 2021), chosen for deblurring and super-resolution of large
photos: 24 iterations, noise ratios from ``rho_max`` = 49/255 (pixel units) down to the observation's noise,
``lam`` = 0.23. Whether they suit 32×32 images and masks is measured here, on images the test tables never use: the
``--count`` CIFAR-10 *training* images from index ``--first`` (default 1000: past the 200 that tune Wiener's balance
in ``restore_quality.py``), observed exactly as there (``restore_quality.observe``: the same operators, float
observations, σ_y = 0.01, seeded masks and noise), with seed ``--seed`` + 1 so that the noise differs from the test
tables'. For each task of ``--tasks``, one table: the task's classical baseline, then ``pnp`` at each combination of
``--rho-max`` and ``--rho-min`` (pixel units; the last noise ratio is the larger of ``rho_min`` and the observation's
noise), ``--steps`` and ``--lam``, with its mean PSNR (dB, per image, peak 1, clipped to
[0, 1]) and its gain over the baseline; the best row is marked. A setting is worth making a default only when it
wins on these images by more than the spread between neighbouring settings; the test tables then say whether it
holds on the test images.

Run from the repository root; each setting costs ``steps`` forward passes per image (about 0.02 s each for a 32×32
image with the CIFAR-10 model on one core of an AVX-512 EPYC, float32), so the default grid (6 settings: 3 values of
``rho_max`` × 2 of ``steps``; 4 tasks, 32 images) took 12 minutes on one core:

    python benchmarks/pnp_settings.py --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import sys

from _common import arguments, checkpoint_line, header, option_default, parse, positive, psnr, report, table
from restore_quality import BASELINES, SIGMA, TASK_NAMES, TASKS, baseline, observe, run_method, tune_wiener

from sda_cli import load_model
from sda_cli.data import cifar10
from sda_cli.guidance import METHODS

TITLE = "pnp's settings on CIFAR-10 training images"
"""The heading of this script's tables, and of its section of ``benchmarks/RESULTS.md``."""


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", count=32, count_help="training images", data_dir=True,
        seed="the test tables' seed; these images use seed + 1",
    )  # fmt: skip
    parser.add_argument("--first", type=int, default=1000, help="index of the first training image")
    parser.add_argument("--tasks", default="sr2,sr4,random75,box", help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument(
        "--rho-max", nargs="+", type=float, default=[49 / 255, 0.4, 0.8], help="first noise ratios, pixel units"
    )
    rho_min = option_default("pnp", "rho_min") / 2  # model units are twice pixel units
    parser.add_argument("--rho-min", nargs="+", type=float, default=[rho_min], help="last noise ratios, pixel units")
    parser.add_argument("--steps", nargs="+", type=positive, default=[METHODS["pnp"].STEPS, 64], help="iterations")
    parser.add_argument("--lam", nargs="+", type=float, default=[option_default("pnp", "lam")], help="data weights")
    args = parse(parser)
    args.tasks = [t for t in args.tasks.split(",") if t]
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r}; expected some of {', '.join(TASKS)}")
    if args.first < 0:
        parser.error("--first must be at least 0")
    if min(args.rho_min) <= 0 or max(args.rho_min) > min(args.rho_max):
        parser.error("--rho-min must be positive and at most every --rho-max")
    if min(args.lam) <= 0:
        parser.error("--lam must be positive")
    return args


def main() -> None:
    args = parse_args()
    model = load_model(args.model, device="cpu", precision="fp32")
    images = cifar10(args.data_dir, train=True).images[args.first : args.first + args.count].double() / 255
    if len(images) < args.count:
        raise SystemExit(f"only {len(images)} training images from index {args.first}")
    balance = tune_wiener(args.data_dir, args.seed)[0] if "blur" in args.tasks else float("nan")
    grid = list(itertools.product(args.rho_max, args.rho_min, args.steps, args.lam))
    sections = []
    for task in args.tasks:
        y, operator = observe(task, images, args.seed + 1)
        base = float(psnr(baseline(task, y, operator, images.shape, balance), images).mean())
        rows = []
        for setting in grid:
            rho_max, rho_min, steps, lam = setting
            run = argparse.Namespace(samples=1, seed=args.seed, steps=steps, task=task)
            options = {"rho_max": 2 * rho_max, "rho_min": 2 * rho_min, "lam": lam}  # model units: twice pixel units
            estimates, seconds = run_method("pnp", model, y, operator, run, **options)
            value = float(psnr(estimates[0].clamp(0, 1), images).mean())
            rows.append((value, setting, seconds))
            print(f"{task} rho_max, rho_min, steps, lam {setting}: {value:.2f} dB ({value - base:+.2f}), "
                  f"{seconds:.2f} s/image", file=sys.stderr, flush=True)  # fmt: skip
        best = max(rows)[1]
        cells = [[BASELINES[task], "–", "–", "–", "–", f"{base:.2f}", "–", "–"]]
        cells += [
            [
                "pnp" + (" (best)" if (rho_max, rho_min, steps, lam) == best else ""),
                f"{rho_max:.3f} ({rho_max * 255:.0f}/255)",
                f"{rho_min:.3f} ({rho_min * 255:.1f}/255)",
                str(steps),
                f"{lam:g}",
                f"{value:.2f}",
                f"{value - base:+.2f}",
                f"{seconds:.2f}",
            ]
            for value, (rho_max, rho_min, steps, lam), seconds in rows
        ]
        columns = ["method", "rho_max (pixel units)", "rho_min", "steps", "lam", "PSNR (dB)", "gain (dB)", "s/image"]
        sections.append(f"### {TASK_NAMES[task]} (`{task}`)\n\n{table(columns, cells)}\n")
    rho_max, rho_min = (option_default("pnp", name) / 2 for name in ("rho_max", "rho_min"))
    note = (
        f"CIFAR-10 training images {args.first} to {args.first + args.count - 1}, observed as in `restore_quality.py` "
        f"(σ_y = {SIGMA}, float) with seed {args.seed + 1}; `sda_cli.restore.restore(method='pnp')` at each "
        f"setting, estimates clipped to [0, 1]; PSNR per image, then averaged. Defaults: rho_max {rho_max:.3f} "
        f"({rho_max * 255:.0f}/255), rho_min {rho_min:.4f} ({rho_min * 255:.0f}/255; the last ratio is σ_y = 0.01 "
        f"when larger), {METHODS['pnp'].STEPS} steps, lam {option_default('pnp', 'lam')}.\n"
    )
    report(TITLE, "\n".join([header(TITLE, checkpoint_line(args.model)), note, *sections]), args.record)


if __name__ == "__main__":
    main()
