"""Speed and peak memory of ``sda denoise`` and ``sda sample`` on this CPU, through the real command line.

What. One row per measurement, with the wall seconds, the seconds per image (or per sample), the peak resident
memory and, where the project sets one, the target and PASS/FAIL:

* ``sda denoise --method M`` for M in ``--methods`` (default mmse, posterior, mean, langevin, guided, sda; any
  method of ``sda_cli.guidance.METHODS``) on a folder of CIFAR-size (32 × 32) noisy images, batched by the command:
  ``--count`` images (default 64) for a method without steps (mmse), ``--slow-count`` (default 8) for the others,
  at each method's default steps (``--steps`` overrides them all; a method that draws several samples by default,
  ``mean``, gets ``--samples K``, default 8);
* ``sda denoise`` (mmse) of one CIFAR image, which is mostly process start and model load: the fixed cost in every
  row's seconds;
* ``--many`` (default 1,000) CIFAR-size images with mmse, target under 15 s;
* one ``--sizes`` × ``--sizes`` RGB image with mmse (default 512, 2048, 4096): target under 3 s at 512 and
  peak memory under 4 GB (4,096 MB) at 2048 and 4096. The images are CIFAR test images upscaled 4× (bicubic)
  and tiled, with the noise added, made with PIL; larger images are tiled by ``sda denoise`` itself (``--tile``);
* ``sda sample -n 16`` for each sampler (``sda_cli.sampler.SAMPLERS``: ancestral, ddim, heun, pc) at its default
  steps (``--sample-steps`` overrides): seconds per sample and the network evaluations (NFE) per sample that the
  command prints.

How. Every noisy input is an 8-bit PNG, y = clip(round((x + sigma n) 255) / 255) with n from
``numpy.random.default_rng(--seed)`` and ``--sigma`` (default 0.2). Each measurement runs
``python -m sda_cli denoise IN -o OUT --sigma S --method M [...] --device cpu --seed 0 --quiet`` (or ``sample``)
inside a fresh wrapper process that times it (wall clock, process start and model load included) and reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak resident memory of that one command (``_common.run``).
The wrapper caps the command's address space at ``--max-memory-gb`` (default 16; 0: no cap) so that a runaway
allocation fails cleanly instead of waking the kernel's out-of-memory killer. Commands run with
``OMP_NUM_THREADS=--threads``. A command that fails (an option this version of the CLI does not have yet, too little
memory) gives the row ``n/a (CLI error: <its error line>)`` and the script goes on.

Run from the repository root (about an hour at 1 thread beside a training run, mostly the sampling methods and
the 4096 × 4096 image; ``--sections`` and ``--sizes`` run a part):

    python benchmarks/denoise_speed.py --model checkpoints/cifar10.safetensors
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from _common import Run, arguments, checkpoint_line, header, parse, report, run_cli, table, work_folder
from PIL import Image

from sda_cli.data import cifar10
from sda_cli.guidance import METHODS
from sda_cli.sampler import SAMPLERS

TITLE = "Speed and peak memory of sda denoise and sda sample on CPU"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

TIMED = ("mmse", "posterior", "mean", "langevin", "guided", "sda")
"""The ``sda denoise`` methods timed by default (``--methods``: any of ``sda_cli.guidance.METHODS``)."""
SECTIONS = ("methods", "many", "large", "sample")
MANY_TARGET = (1000, 15.0)
"""Target: 1,000 CIFAR-size images with mmse in under 15 s."""
LARGE_SECONDS = {512: 3.0}
"""Target wall seconds of one large image with mmse, by side."""
LARGE_MEMORY = {2048: 4096.0, 4096: 4096.0}
"""Target peak resident memory (MB) of one large image with mmse, by side."""


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", count=64, count_help="CIFAR-size images for mmse", data_dir=True, work=True,
        seed="seed of the noise and of every command",
    )  # fmt: skip
    parser.add_argument("--sigma", type=float, default=0.2, help="pixel-unit noise level of every input")
    parser.add_argument("--slow-count", type=int, default=8, help="CIFAR-size images for the sampling methods")
    parser.add_argument("--methods", default=",".join(TIMED), help="denoise methods to time (comma list)")
    parser.add_argument("--steps", type=int, default=None, help="--steps of the sampling methods (default: CLI's)")
    parser.add_argument("--samples", type=int, default=8, help="--samples K of the mean method")
    parser.add_argument("--many", type=int, default=1000, help="CIFAR-size images of the throughput row")
    parser.add_argument("--sizes", default="512,2048,4096", help="sides of the large single images")
    parser.add_argument("--sample-count", type=int, default=16, help="sda sample -n")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="samplers of sda sample (comma list)")
    parser.add_argument("--sample-steps", type=int, default=None, help="--steps of sda sample (default: CLI's)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which groups of rows to run (comma list)")
    parser.add_argument("--max-memory-gb", type=float, default=16.0, help="address-space cap per command (0: none)")
    args = parse(parser)
    for name, known in (("methods", tuple(METHODS)), ("samplers", tuple(SAMPLERS)), ("sections", SECTIONS)):
        chosen = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        if set(chosen) - set(known):
            parser.error(f"--{name} takes a comma list of {', '.join(known)}")
        setattr(args, name, chosen)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def noisy_uint8(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``uint8`` pixels plus white noise of ``sigma`` (pixel units), clipped and quantised to 8 bits."""
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    noisy = pixels.astype(np.float32) / 255 + np.float32(sigma) * noise
    return np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def cifar_folders(images: np.ndarray, counts: set[int], sigma: float, seed: int, workdir: Path) -> dict[int, Path]:
    """A folder of the first N noisy CIFAR test images for each N in ``counts`` (one noise draw for all)."""
    noisy = noisy_uint8(images[: max(counts)], sigma, np.random.default_rng(seed))
    folders = {}
    for count in sorted(counts):
        folder = workdir / f"cifar_{count}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(noisy[:count]):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        folders[count] = folder
    return folders


def large_image(images: np.ndarray, side: int, sigma: float, seed: int, path: Path) -> Path:
    """A ``side × side`` noisy RGB PNG: CIFAR test images upscaled 4× (bicubic) and tiled, row by row."""
    cell = 128
    canvas = Image.new("RGB", (side, side))
    per_row = -(-side // cell)
    for k in range(per_row * per_row):
        tile = Image.fromarray(images[k % len(images)]).resize((cell, cell), Image.Resampling.BICUBIC)
        canvas.paste(tile, ((k % per_row) * cell, (k // per_row) * cell))
    Image.fromarray(noisy_uint8(np.asarray(canvas), sigma, np.random.default_rng(seed))).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def run(command: list[str], args: argparse.Namespace) -> Run:
    """``python -m sda_cli COMMAND`` in a fresh process, its address space capped (module docstring)."""
    return run_cli(*command, threads=args.threads, max_memory_gb=args.max_memory_gb)


def timed(method: str) -> tuple[bool, bool]:
    """Whether ``method`` takes steps (the sampling methods; not mmse) and draws several samples by default (mean)."""
    kind = METHODS[method]
    return kind.STEPS is not None, kind.SAMPLES > 1


def denoise(inputs: Path, method: str, args: argparse.Namespace, workdir: Path, *extra: str) -> Run:
    out = workdir / "out"
    command = ["denoise", str(inputs), "-o", str(out), "--sigma", str(args.sigma), "--method", method]
    command += ["--model", str(args.model), "--device", "cpu", "--seed", str(args.seed), "--quiet", *extra]
    steps, samples = timed(method)
    if steps and args.steps is not None:
        command += ["--steps", str(args.steps)]
    if samples:
        command += ["--samples", str(args.samples)]
    result = run(command, args)
    shutil.rmtree(out, ignore_errors=True)
    return result


def row(what: str, result: Run, count: int, target: str = "—", passed: bool | None = None) -> list[str]:
    """A table row: what, seconds, per image, peak RSS (MB), target, result."""
    if result.error is not None:
        return [what, f"n/a (CLI error: {result.error})", "—", "—", target, "n/a" if target != "—" else "—"]
    verdict = "—" if passed is None else ("PASS" if passed else "FAIL")
    per = result.seconds / count
    return [what, f"{result.seconds:.2f}", f"{per:.4f}", f"{result.memory:.0f}", target, verdict]


def measure(args: argparse.Namespace, workdir: Path) -> list[list[str]]:
    """Every row of the table (module docstring), printed to standard error as it comes."""
    images = cifar10(args.data_dir, train=False, download=False).images.permute(0, 2, 3, 1).numpy()
    counts = {1}
    if "methods" in args.sections:
        counts |= {args.slow_count if timed(m)[0] else args.count for m in args.methods}
    if "many" in args.sections:
        counts.add(args.many)
    folders = cifar_folders(images, counts, args.sigma, args.seed, workdir)
    rows: list[list[str]] = []

    def add(cells: list[str]) -> None:
        rows.append(cells)
        print(" | ".join(cells), file=sys.stderr, flush=True)

    single = folders[1] / "00000.png"
    add(row("denoise 1 CIFAR image, mmse (process start and model load)", denoise(single, "mmse", args, workdir), 1))
    if "methods" in args.sections:
        for method in args.methods:
            steps, samples = timed(method)
            count = args.slow_count if steps else args.count
            what = f"denoise {count} CIFAR images, --method {method}"
            what += f" --samples {args.samples}" if samples else ""
            what += f" --steps {args.steps}" if steps and args.steps is not None else ""
            add(row(what, denoise(folders[count], method, args, workdir), count))
    if "many" in args.sections:
        result = denoise(folders[args.many], "mmse", args, workdir)
        count, limit = MANY_TARGET
        target, passed = "—", None
        if args.many == count:
            target, passed = f"< {limit:g} s", result.seconds < limit
        add(row(f"denoise {args.many} CIFAR images, mmse", result, args.many, target, passed))
    if "large" in args.sections:
        for side in args.sizes:
            path = large_image(images, side, args.sigma, args.seed, workdir / f"large_{side}.png")
            result = denoise(path, "mmse", args, workdir)
            target, passed = "—", None
            if side in LARGE_SECONDS:
                target, passed = f"< {LARGE_SECONDS[side]:g} s", result.seconds < LARGE_SECONDS[side]
            elif side in LARGE_MEMORY:
                target, passed = f"< {LARGE_MEMORY[side]:.0f} MB", result.memory < LARGE_MEMORY[side]
            add(row(f"denoise one {side}×{side} RGB image, mmse", result, 1, target, passed))
            path.unlink()
    if "sample" in args.sections:
        for name in args.samplers:
            out = workdir / f"samples_{name}.png"
            command = ["sample", "-n", str(args.sample_count), "--sampler", name, "-o", str(out)]
            command += ["--model", str(args.model), "--device", "cpu", "--seed", str(args.seed), "--quiet"]
            command += [] if args.sample_steps is None else ["--steps", str(args.sample_steps)]
            result = run(command, args)
            printed = re.search(r"(\d+) steps: (\d+) network evaluations per sample", result.stderr)
            cost = f"{printed[1]} steps, {printed[2]} NFE/sample" if printed else "NFE not printed"
            add(row(f"sample -n {args.sample_count} --sampler {name} ({cost}); per sample", result, args.sample_count))
    return rows


def main() -> None:
    args = parse_args()
    args.model = args.model.resolve()
    checkpoint = checkpoint_line(args.model)
    with work_folder(args.work, "sda-speed-") as workdir:
        rows = measure(args, workdir)
    cap = f"address space capped at {args.max_memory_gb:g} GB" if args.max_memory_gb > 0 else "no memory cap"
    text = "\n".join(
        [
            header(TITLE, checkpoint),
            f"Each row is one `python -m sda_cli ...` command in a fresh process (wall seconds, process start and "
            f"model load included; peak RSS from getrusage(RUSAGE_CHILDREN).ru_maxrss), OMP_NUM_THREADS="
            f"{args.threads}, --device cpu, {cap}. Inputs: 8-bit PNGs of CIFAR-10 test images with noise "
            f"σ = {args.sigma:g} (large images: 4× bicubic upscales, tiled); sampling methods at the CLI's default "
            f"steps unless the row says otherwise.\n",
            table(["what", "seconds", "per image", "peak RSS (MB)", "target", "result"], rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
