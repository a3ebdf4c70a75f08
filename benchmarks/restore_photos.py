"""DPIR's deblurring and super-resolution protocol on photos, through ``sda degrade`` and ``sda restore``.

What. The protocol of DPIR (Zhang et al., 2021) as Hu et al. (2024, arXiv 2310.01391, Tables 1-2) report it on
McMaster: a 25 × 25 Gaussian kernel of standard deviation 1.6 or 2.0 pixels, applied with circular boundaries
(DPIR's ``ndimage.convolve(..., mode="wrap")``), then for super-resolution every K-th pixel kept from the first
(K = 2, 3), then white noise of 2.55/255, float observations. One table: a row per restoration and a column per
(task, kernel), mean PSNR in dB (RGB, peak 1, the estimate clipped to [0, 1] and rounded to 8 bits as DPIR saves
it; K pixels of border left out for super-resolution, none for deblurring, as in DPIR's scripts), with DPIR's
published figures as the last row and the wall seconds per photo of each ``sda restore`` command beside its row.
Below it, the check of the issue: the first ``--settings`` row within 1.0 dB of DPIR in every cell.

Rows:

* classical: Wiener deconvolution for deblurring (the exact circular-boundary filter
  :math:`\\bar{K} Y / (|K|^2 + b)`, its balance :math:`b` the best of a grid on ``--tune-count`` BSDS400 crops:
  photos this table never measures on), bicubic interpolation for super-resolution (sample k of the observation
  sits at pixel kK of the image, so the interpolation is aligned to it, not to block centres);
* each ``--settings NAME=ARGS``: ``sda restore OBSERVATIONS --kernel K.npy --boundary circular [--decimate K]
  --sigma 0.01 ARGS``, the arguments split as a shell would (default: ``sda=`` the command's own defaults, the
  photo model and pnp). ``NAME@N=ARGS`` runs it on the first N photos only, and its row says so;
  ``NAME/deblur,sr2=ARGS`` on those tasks only (the other cells show a dash).

How. Each photo (McMaster18: 500 × 500, named 1 to 18, taken in that order; ``--photos bsds400`` takes the BSDS400
photos instead, centre crops of ``--crop`` pixels, to choose settings on photos that McMaster never sees) is cropped
from its top-left corner to a multiple of 8 for deblurring and of K for super-resolution (DPIR's ``modcrop``) and
written as a float ``.npy``. ``sda degrade TRUTH --kernel K.npy --boundary circular [--decimate K] --sigma 0.01
--seed --seed -o OBSERVATIONS/`` observes them all (one noise draw through the files in order), and every row
restores those same files. ``--boundary reflect`` runs the whole protocol with reflecting boundaries instead, to
measure what the boundary changes. With ``--reuse`` (and ``--work``), a row whose output folder holds the
``run.json`` of an earlier run of the same command on the same number of photos is not run again: its estimates are
scored again and its seconds are the earlier run's (the observations are made again, from the same seed, and are the
same files).

Run from the repository root with the benchmark extras. The photo model's pnp at its defaults takes about a minute
per 500 × 500 photo and task on 2 cores (the first table of ``benchmarks/RESULTS.md`` says how long each row took):

    python benchmarks/restore_photos.py --record
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import MCMASTER, PHOTOS, arguments, fmt, header, parse, positive, report, run_cli, table, work_folder
from PIL import Image

TITLE = "Photo restoration: DPIR's protocol on {photos}, {boundary} boundaries"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``, for a photo set and
boundary."""

NOISE = 2.55 / 255
"""The observation noise, pixel units."""
KERNEL_SIZE = 25
STDS = (1.6, 2.0)
TASKS = {"deblur": 1, "sr2": 2, "sr3": 3}
"""Each task's decimation factor (1: none)."""
TASK_NAMES = {"deblur": "deblurring", "sr2": "×2 SR", "sr3": "×3 SR"}
DPIR = {
    ("deblur", 1.6): 32.42, ("deblur", 2.0): 30.78,
    ("sr2", 1.6): 31.16, ("sr2", 2.0): 29.87,
    ("sr3", 1.6): 29.82, ("sr3", 2.0): 29.11,
}  # fmt: skip
"""DPIR's PSNR on McMaster (Hu et al., 2024, arXiv 2310.01391, Tables 1-2)."""
REQUIRED_GAP = 1.0
"""The issue's requirement: the default restoration within this many dB of DPIR in every cell."""
WIENER_BALANCES = tuple(float(b) for b in np.logspace(-5, -1, 17))


def gaussian_kernel(std: float, size: int = KERNEL_SIZE) -> np.ndarray:
    """The ``size × size`` Gaussian kernel of standard deviation ``std`` pixels, summing to 1 (float64)."""
    offsets = np.arange(size) - size // 2
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * std**2))
    return kernel / kernel.sum()


def photos(source: str, count: int | None, crop: int | None) -> list[tuple[str, np.ndarray]]:
    """``(name, HWC float64 pixels)`` of the first ``count`` photos of ``mcmaster18`` (in the order 1 to 18) or
    ``bsds400`` (in name order), centre-cropped to ``crop`` pixels when given."""
    folder = MCMASTER if source == "mcmaster18" else PHOTOS / source
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in {".tif", ".tiff", ".jpg", ".png"}),
                   key=lambda p: (int(p.stem) if p.stem.isdigit() else 0, p.name))  # fmt: skip
    out = []
    for path in files[:count]:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        if crop is not None:
            top, left = (pixels.shape[0] - crop) // 2, (pixels.shape[1] - crop) // 2
            pixels = pixels[top : top + crop, left : left + crop]
        out.append((path.stem, pixels))
    return out


def modcrop(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """The top-left part of ``pixels`` whose sides are multiples of ``multiple`` (DPIR's ``modcrop``)."""
    return pixels[: pixels.shape[0] // multiple * multiple, : pixels.shape[1] // multiple * multiple]


def crop_multiple(task: str) -> int:
    """DPIR's crop: to a multiple of 8 for deblurring, of the scale for super-resolution."""
    return 8 if TASKS[task] == 1 else TASKS[task]


def score(estimate: np.ndarray, truth: np.ndarray, border: int) -> float:
    """PSNR (dB) of the estimate clipped to [0, 1] and rounded to 8 bits, ``border`` pixels left out on each side."""
    saved = np.round(np.clip(estimate, 0, 1) * 255) / 255
    if border:
        saved, truth = saved[border:-border, border:-border], truth[border:-border, border:-border]
    return float(10 * np.log10(1 / np.mean((saved - truth) ** 2)))


def kernel_spectrum(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    """The 2-D Fourier transform of the centred ``kernel`` as a circular convolution of ``height × width`` images."""
    padded = np.zeros((height, width))
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel
    return np.fft.fft2(np.roll(padded, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), axis=(0, 1)))


def wiener(y: np.ndarray, kernel: np.ndarray, balance: float) -> np.ndarray:
    """The circular-boundary Wiener deconvolution :math:`\\bar{K} Y / (|K|^2 + b)` of ``y`` (HWC)."""
    spectrum = kernel_spectrum(kernel, *y.shape[:2])
    filtered = np.conj(spectrum)[..., None] * np.fft.fft2(y, axes=(0, 1)) / (np.abs(spectrum)[..., None] ** 2 + balance)
    return np.real(np.fft.ifft2(filtered, axes=(0, 1)))


def bicubic(y: np.ndarray, scale: int, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic interpolation of ``y`` (HWC) to ``shape``, sample k of ``y`` at pixel kK of the image."""
    h, w = y.shape[:2]
    rows = torch.arange(shape[0], dtype=torch.float64) / scale / max(h - 1, 1) * 2 - 1
    cols = torch.arange(shape[1], dtype=torch.float64) / scale / max(w - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)[None]
    image = torch.from_numpy(y).permute(2, 0, 1)[None]
    out = F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()


def circular_observation(pixels: np.ndarray, kernel: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """A circular blur, decimation and noise in NumPy, to tune Wiener's balance without the command line."""
    spectrum = kernel_spectrum(kernel, *pixels.shape[:2])[..., None]
    blurred = np.real(np.fft.ifft2(spectrum * np.fft.fft2(pixels, axes=(0, 1)), axes=(0, 1)))[::scale, ::scale]
    return blurred + NOISE * rng.standard_normal(blurred.shape)


def tune_balance(std: float, count: int, crop: int) -> float:
    """Wiener's balance with the best mean PSNR on ``count`` BSDS400 crops, deblurring with the kernel ``std``."""
    kernel, rng = gaussian_kernel(std), np.random.default_rng(1)
    train = [modcrop(p, 8) for _, p in photos("bsds400", count, crop)]
    observed = [circular_observation(p, kernel, 1, rng) for p in train]
    scores = [np.mean([score(wiener(y, kernel, b), p, 0) for y, p in zip(observed, train, strict=True)])
              for b in WIENER_BALANCES]  # fmt: skip
    return WIENER_BALANCES[int(np.argmax(scores))]


def operator_args(kernel_file: Path, scale: int, boundary: str) -> list[str]:
    """The operator options of ``sda degrade`` and ``sda restore`` for a task."""
    args = ["--kernel", str(kernel_file), "--boundary", boundary, "--sigma", f"{NOISE:.10g}"]
    return args + (["--decimate", str(scale)] if scale > 1 else [])


def parse_settings(
    items: list[str], parser: argparse.ArgumentParser
) -> list[tuple[str, int | None, list[str], set[str] | None]]:
    """``NAME[@N][/TASK,...]=ARGS`` items as ``(name, photo count or None, arguments, tasks or None)``."""
    out = []
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not name:
            parser.error(f"--settings takes NAME[@N][/TASK,...]=ARGS items, not {item!r}")
        name, _, tasks = name.partition("/")
        label, _, count = name.partition("@")
        only = set(tasks.split(",")) if tasks else None
        out.append((label, int(count) if count else None, shlex.split(rest), only))
    return out


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, count=18, count_help="photos", seed="the noise seed", work=True)
    parser.add_argument("--photos", choices=("mcmaster18", "bsds400"), default="mcmaster18", help="the photo set")
    parser.add_argument("--crop", type=positive, default=None, help="centre crops of this side (default: whole)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--stds", nargs="+", type=float, default=list(STDS), help="kernel standard deviations")
    parser.add_argument("--boundary", choices=("circular", "reflect"), default="circular", help="of the blur")
    parser.add_argument("--settings", nargs="+", default=["sda="], help="NAME[@N]=ARGS rows of sda restore")
    parser.add_argument("--tune-count", type=positive, default=16, help="BSDS400 crops that tune Wiener's balance")
    parser.add_argument(
        "--reuse", action="store_true",
        help="with --work: keep a row's estimates from an earlier run of the same command (its run.json)",
    )  # fmt: skip
    args = parse(parser)
    args.tasks = [t for t in args.tasks.split(",") if t]
    if unknown := [t for t in args.tasks if t not in TASKS]:
        parser.error(f"unknown tasks {unknown}; expected some of {', '.join(TASKS)}")
    args.settings = parse_settings(args.settings, parser)
    return args


def main() -> None:
    args = parse_args()
    images = photos(args.photos, args.count, args.crop)
    cells = [(task, std) for task in args.tasks for std in args.stds]
    results: dict[str, dict[tuple[str, float], float]] = {"classical": {}}
    seconds: dict[str, float] = {}
    counts = {name: min(count or len(images), len(images)) for name, count, _, _ in args.settings}
    balances = {std: tune_balance(std, args.tune_count, 128) for std in args.stds if "deblur" in args.tasks}
    with work_folder(args.work, "sda-restore-photos-") as work:
        for task, std in cells:
            scale = TASKS[task]
            cell = work / f"{task}-{std}-{args.boundary}"
            truth_dir, observed_dir = cell / "truth", cell / "observed"
            truth_dir.mkdir(parents=True, exist_ok=True)
            kernel = gaussian_kernel(std)
            kernel_file = cell / "kernel.npy"
            np.save(kernel_file, kernel)
            truths = {}
            for name, pixels in images:
                truths[name] = modcrop(pixels, crop_multiple(task))
                np.save(truth_dir / f"{name}.npy", truths[name].astype(np.float32))
            operator = operator_args(kernel_file, scale, args.boundary)
            seed = ["--seed", str(args.seed)]
            run_cli("degrade", str(truth_dir), *operator, *seed, "-o", f"{observed_dir}/", "-q", "--force",
                    threads=args.threads, check=True)  # fmt: skip
            border = 0 if scale == 1 else scale
            classical = []
            for name, truth in truths.items():
                y = np.load(observed_dir / f"{name}.npy").astype(np.float64)
                guess = wiener(y, kernel, balances[std]) if scale == 1 else bicubic(y, scale, truth.shape[:2])
                classical.append(score(guess, truth, border))
            results["classical"][(task, std)] = float(np.mean(classical))
            for name, _, extra, only in args.settings:
                if only is not None and task not in only:
                    continue
                out_dir = cell / f"out-{name}"
                names = list(truths)[: counts[name]]
                inputs = [str(observed_dir / f"{n}.npy") for n in names]
                command = ["restore", *inputs, *operator, *extra, "-o", f"{out_dir}/", "-q", "--force"]
                timing = out_dir / "run.json"
                earlier = json.loads(timing.read_text()) if args.reuse and timing.exists() else {}
                if earlier.get("command") == command[1:] and earlier.get("count") == len(names):
                    elapsed = float(earlier["seconds"])
                else:
                    started = time.perf_counter()
                    run_cli(*command, threads=args.threads, check=True)
                    elapsed = time.perf_counter() - started
                    record = {"command": command[1:], "count": len(names), "seconds": elapsed}
                    timing.write_text(json.dumps(record))
                seconds[name] = seconds.get(name, 0.0) + elapsed / counts[name]
                scores = [score(np.load(out_dir / f"{n}.npy"), truths[n], border) for n in list(truths)[: counts[name]]]
                results.setdefault(name, {})[(task, std)] = float(np.mean(scores))
                print(f"{task} std {std} {name}: {results[name][(task, std)]:.2f} dB", flush=True)
            (cell / "results.json").write_text(json.dumps({k: v.get((task, std)) for k, v in results.items()}))

    columns = ["restoration", "photos", *(f"{TASK_NAMES[t]}, std {s}" for t, s in cells), "s/photo (its cells, summed)"]
    rows = [["classical (Wiener; bicubic)", str(len(images)), *(fmt(results["classical"][c]) for c in cells), "—"]]
    for name, _, extra, _ in args.settings:
        label = f"`sda restore {shlex.join(extra)}`" if extra else "`sda restore` (defaults)"
        measured = [fmt(results.get(name, {}).get(c)) for c in cells]
        rows.append([f"{name}: {label}", str(counts[name]), *measured, fmt(seconds.get(name), 1)])
    rows.append(["DPIR (published)", "18", *(fmt(DPIR.get(c)) for c in cells), "—"])
    first = args.settings[0][0]
    gaps = {c: DPIR[c] - results[first][c] for c in cells if c in DPIR}
    shown = ", ".join(f"{b:.2g}" for b in balances.values())
    lines = [f"- observations: {args.photos}, kernel {KERNEL_SIZE}×{KERNEL_SIZE}, {args.boundary} boundaries, "
             f"noise 2.55/255, seed {args.seed}; Wiener balances {shown}"]  # fmt: skip
    if args.photos == "mcmaster18" and args.boundary == "circular" and counts[first] == 18 and gaps:
        worst = max(gaps.values())
        verdict = "PASS" if worst <= REQUIRED_GAP else "FAIL"
        lines.append(
            f"- {verdict}: {first} within {REQUIRED_GAP} dB of DPIR in every cell (largest gap {worst:.2f} dB)"
        )
    checkpoint = "the models named in each row (default: checkpoints/photo.safetensors)"
    title = TITLE.format(photos=args.photos, boundary=args.boundary)
    report(title, header(title, checkpoint) + "\n" + table(columns, rows) + "\n\n" + "\n".join(lines), args.record)


if __name__ == "__main__":
    main()
