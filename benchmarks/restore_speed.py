"""One photo through ``sda restore``: wall time and peak memory of each method on each restoration task.

What. A ``--size`` RGB photo (``512`` or ``WIDTHxHEIGHT``; default 512 × 512), the first McMaster photo by name
(500 × 500) resized (bicubic), saved as an 8-bit PNG, observed by ``sda degrade`` with noise σ = 0.01
(``--seed 0``) on each of ``--tasks``:

* ``sr2``: ×2 super-resolution, ``sda degrade CLEAN --scale 2 --sigma 0.01 --seed 0``;
* ``random50``: half of the pixels missing, ``sda degrade CLEAN --mask MASK --sigma 0.01 --seed 0``, MASK a
  one-channel PNG, white at exactly half of the pixels, drawn by ``numpy.random.default_rng(0)``;
* ``deblur``: DPIR's deblurring (``benchmarks/restore_photos.py``), ``--kernel K.npy --boundary circular``, K the
  25 × 25 Gaussian of standard deviation 1.6;
* ``sr2-decimate``: DPIR's ×2 super-resolution, the same kernel then ``--decimate 2``;
* ``denoise``: no operator, noise 25/255 (``--methods mean --samples 4``: the mean of 4 posterior draws and their
  std map, ``--std``).

Each of ``--methods`` (default ``pnp`` and ``diffpir``; any method of ``sda restore`` is allowed, ``mmps`` takes far
longer) restores each
observation with ``sda restore OBS -o OUT OPERATOR --sigma 0.01 --method M --seed 0`` at its default steps, tile
and precision (``--precision P`` adds that option), with ``--model NAME`` when given, else the CLI's default model:
one row per task and method with the network evaluations of the method (its object's ``nfe``, each evaluation tiled
as the CLI tiles it), the wall seconds of the whole command (process start, model load, reading and writing the PNGs
included), the peak resident memory of that process, and the target where one is set for the size: at 512 × 512,
under 120 s (a 512×512 photo with ×2 super-resolution and with 50% of its pixels missing, on the default model, each
in under 2 minutes with the fastest method on 2 cores); at 1600 × 1200 (2 megapixels), under 60 s (deblurring or ×2
super-resolution with the default settings in under a minute). Below the table, the fastest method of each task
and whether it meets the target. PSNR against the clean resized photo is shown for reference only. The model the
command loaded is the one its ``--verbose`` line names, so the table reports ``sda restore``'s own default, whatever
it is.

How. ``_common.run_cli``: ``OMP_NUM_THREADS=--threads``, the peak RSS of the command alone.
Run from the repository root on an otherwise idle machine (a training run beside it halves the speed); fewer
threads than 2 give an upper bound of the time on 2 cores. ``--size 128`` makes a quick trial:

    python benchmarks/restore_speed.py --threads 2
    python benchmarks/restore_speed.py --size 1600x1200 --tasks deblur sr2-decimate --methods pnp --record
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from pathlib import Path

import numpy as np
import torch
from _common import (
    MCMASTER,
    MEASURED,
    arguments,
    checkpoint_line,
    header,
    parse,
    psnr,
    report,
    run_cli,
    table,
    work_folder,
)
from large_photo import read
from PIL import Image
from restore_photos import gaussian_kernel

from sda_cli.guidance import METHODS

TITLE = "A {width}×{height} photo through sda restore"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``, for a size."""

TARGETS = {(512, 512): 120.0, (1600, 1200): 60.0}
"""Seconds each task may take with the fastest method, for the sizes a target is stated for (module docstring)."""

SIGMA = "0.01"
"""The observation noise in pixel units."""
DENOISE_SIGMA = "25/255"
"""The noise of the denoising task."""

TASKS = {
    "sr2": "×2 super-resolution (2×2 block average)",
    "random50": "50% of the pixels missing (random mask)",
    "deblur": "deblurring (25×25 Gaussian kernel of std 1.6, circular boundaries)",
    "sr2-decimate": "×2 super-resolution (the same kernel, then every second pixel)",
    "denoise": "denoising at sigma 25/255 (no operator; with --samples K and a --std map)",
}

MODEL_LINE = re.compile(r"^model: (?P<path>.+?); device:", re.MULTILINE)
"""The line ``sda restore --verbose`` prints on stderr for the model it loaded."""


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, model=None, threads=2, work=True)
    parser.add_argument(
        "--methods", nargs="+", default=["pnp", "diffpir"], choices=list(METHODS), help="sda restore --method"
    )
    parser.add_argument("--samples", type=int, default=None, help="sda restore --samples K (with a --std map)")
    parser.add_argument("--tasks", nargs="+", default=["sr2", "random50"], choices=list(TASKS))
    parser.add_argument("--size", default="512", help="side of the photo, or WIDTHxHEIGHT (even)")
    parser.add_argument("--precision", default=None, help="sda restore --precision (default: the command's own)")
    args = parse(parser)
    width, _, height = args.size.partition("x")
    try:
        args.width, args.height = int(width), int(height or width)
    except ValueError:
        parser.error(f"--size must be a number or WIDTHxHEIGHT, not {args.size!r}")
    if min(args.width, args.height) < 32 or args.width % 2 or args.height % 2:
        parser.error("--size must be even and at least 32")
    args.methods = list(dict.fromkeys(args.methods))
    args.tasks = list(dict.fromkeys(args.tasks))
    return args


def photo(width: int, height: int, path: Path) -> None:
    """The first McMaster photo, resized (bicubic) to ``width`` × ``height``."""
    source = Image.open(sorted(MCMASTER.glob("*.tif"), key=lambda p: int(p.stem))[0]).convert("RGB")
    source.resize((width, height), Image.BICUBIC).save(path)


def random_mask(width: int, height: int, path: Path) -> None:
    """A one-channel PNG, white (observed) at exactly half of the pixels, drawn by ``default_rng(0)``."""
    count = width * height
    observed = np.zeros(count, dtype=np.uint8)
    observed[np.random.default_rng(0).permutation(count)[: count // 2]] = 255
    Image.fromarray(observed.reshape(height, width), mode="L").save(path)


@functools.cache
def nfe(method: str, model: str, task: str) -> str:
    """Network evaluations of one draw of ``method`` with ``model`` (a file or a shipped name) on ``task``: the
    ``nfe`` of its object at its default steps, which may depend on the operator (``pnp``'s)."""
    from sda_cli import load_model
    from sda_cli.guidance import METHODS
    from sda_cli.operators import make_operator

    denoiser = load_model(model, device="cpu", precision="fp32")
    kernel = torch.from_numpy(gaussian_kernel(1.6))
    stages = {
        "sr2": {"scale": 2}, "random50": {"mask": torch.ones(4, 4)}, "deblur": {"kernel": kernel},
        "sr2-decimate": {"kernel": kernel, "decimate": 2}, "denoise": {},
    }[task]  # fmt: skip
    operator = make_operator(**stages)  # type: ignore[arg-type]
    y = operator(torch.zeros(1, 3, 4, 4))
    return str(METHODS[method](denoiser, y, 0.2, operator=operator, shape=(3, 4, 4)).nfe)


def main() -> None:
    args = parse_args()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    limit = TARGETS.get((args.width, args.height))
    rows: list[list[str]] = []
    best: dict[str, tuple[str, float]] = {}
    loaded: Path | None = None
    with work_folder(args.work, "sda-restore-speed-") as work:
        clean, mask, kernel = work / "clean.png", work / "mask.png", work / "kernel.npy"
        photo(args.width, args.height, clean)
        random_mask(args.width, args.height, mask)
        np.save(kernel, gaussian_kernel(1.6))
        blur = ["--kernel", str(kernel), "--boundary", "circular"]
        options = {"sr2": ["--scale", "2"], "random50": ["--mask", str(mask)], "deblur": blur,
                   "sr2-decimate": [*blur, "--decimate", "2"], "denoise": []}  # fmt: skip
        truth = read(clean)[None]
        for task in args.tasks:
            observed = work / f"{task}_obs.png"
            sigma = DENOISE_SIGMA if task == "denoise" else SIGMA
            degrade = ["degrade", str(clean), *options[task], "--sigma", sigma, "--seed", "0", "-o", str(observed)]
            run_cli(*degrade, "-q", threads=1, check=True)
            for method in args.methods:
                out = work / f"{task}_{method}.png"
                command = ["restore", str(observed), "-o", str(out), *options[task], "--sigma", sigma]
                if args.samples:
                    command += ["--samples", str(args.samples), "--std", str(work / f"{task}_{method}_std.png")]
                command += ["--method", method, "--seed", "0", "-q", "-v"]
                command += [] if args.precision is None else ["--precision", args.precision]
                command += [] if args.model is None else ["--model", str(args.model)]
                result = run_cli(*command, threads=args.threads)
                found = MODEL_LINE.search(result.stderr)
                name = Path(found["path"]).stem if found else (args.model.stem if args.model else "?")
                if found and loaded is None:
                    loaded = Path(found["path"])
                source = found["path"] if found else (str(args.model) if args.model else None)
                evaluations = nfe(method, source, task) if source and not result.error else "—"
                if result.error:
                    rows.append([task, method, name, evaluations, f"n/a ({result.error})", "—", "—", "—"])
                    print(" | ".join(rows[-1]), flush=True)
                    continue
                quality = float(psnr(read(out)[None], truth)[0])
                verdict = "PASS" if limit is not None and result.seconds < limit else "FAIL"
                target = f"< {limit:g} s: {verdict}" if limit is not None else "—"
                rows.append(
                    [
                        task,
                        method,
                        name,
                        evaluations,
                        f"{result.seconds:.1f}",
                        f"{result.memory:.0f}",
                        f"{quality:.2f}",
                        target,
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
                if task not in best or result.seconds < best[task][1]:
                    best[task] = (method, result.seconds)
    verdicts = []
    for task in args.tasks:
        if task not in best:
            verdicts.append(f"- {task}: no method finished")
            continue
        method, seconds = best[task]
        if limit is None:
            meets = f"no target at {args.width}×{args.height}"
        else:
            meets = f"{'PASS' if seconds < limit else 'FAIL'} (< {limit:g} s)"
        verdicts.append(f"- {task}: fastest method {method}, {seconds:.1f} s: {meets}")
    title = TITLE.format(width=args.width, height=args.height)
    precision = "" if args.precision is None else f" --precision {args.precision}"
    where = "the command's default" if args.model is None else f"`--model {args.model}`"
    if loaded is None:
        checkpoint = f"{where}: not found (no command named its model)"
    else:
        checkpoint = f"{where}: {checkpoint_line(loaded)}"
    bound = (
        f" At {args.threads} thread(s) the times are an upper bound of those on the target's 2 cores."
        if args.threads < 2
        else ""
    )
    text = "\n".join(
        [
            header(title, checkpoint),
            f"One {args.width}×{args.height} RGB photo (the first McMaster photo resized, bicubic), 8-bit PNG, "
            f"observed by `sda degrade --sigma {SIGMA} --seed 0` on each task: "
            + "; ".join(f"{task}: {TASKS[task]}" for task in args.tasks)
            + " (one-channel mask, exactly half white, numpy `default_rng(0)`). Restored by `sda restore --sigma "
            f"{SIGMA} --method M --seed 0{precision}` with the task's operator option, at the method's default "
            f"steps, tile and precision, in a fresh process with OMP_NUM_THREADS={args.threads}, on {affinity} of "
            f"{os.cpu_count()} CPUs (CPU affinity), load average {load:.2f} at the start.{bound} NFE: network "
            f"evaluations of the whole image (each one tiled as the CLI tiles it). Seconds and memory: {MEASURED}. "
            "PSNR against the clean photo, for reference only.",
            "",
            table(["task", "method", "model", "NFE", "seconds", "peak RSS (MB)", "PSNR (dB)", "target"], rows),
            "",
            "Fastest method per task, against the target for this size:",
            *verdicts,
        ]
    )
    report(title, text, args.record)


if __name__ == "__main__":
    main()
