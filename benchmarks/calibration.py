"""Calibration of posterior draws and of the ``--std`` map, measured through the command line.

What. For each ``--sigmas`` level, the first ``--count`` exact CIFAR-10 test images ``x`` get exact Gaussian noise
``y = x + sigma n`` written as float ``.npy`` files (no clipping, no quantisation, so p(x | y) is what the model is
asked for). Then, through ``python -m sda_cli denoise``:

* ``--method mmse`` gives the posterior-mean estimate ``m``;
* ``--method mean --samples K --std STD --steps N`` gives the mean ``mean_K`` of K draws and their per-pixel standard
  deviation ``s`` (with Bessel's correction), for each ``--steps`` value N.

Two ratios, each 1 or 2 for exact posterior draws, summed over all pixels and images:

* the draw ratio ``E|x - draw|² / E|x - m|²`` = 2 for exact draws. The K draws are not written, but their average
  squared error follows from what is: ``mean_k |x - d_k|² = |x - mean_K|² + (K - 1)/K · s²``;
* the std ratio ``E|x - mean_K|² / ((1 + 1/K) E[s²])`` = 1 when the ``--std`` map is honest: the error of the
  mean of K exact draws is the posterior variance plus its Monte-Carlo part, (1 + 1/K) times E[s²].

The decomposition row ``oracle`` runs the same sampler (``sda_cli`` core, same steps and grid) on the exact
denoiser of the Gaussian fitted to 20,000 CIFAR-10 training images (mean and full 3072 × 3072 covariance), on draws
of that Gaussian: what the sampler's discretisation alone gives, with no model error. The rest of the gap between
the model row and 2 is the model's.

Run from the repository root:

    python benchmarks/calibration.py --model checkpoints/cifar10.safetensors --count 64 --samples 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_DATA, ROOT, checkpoint_line, header, set_threads, table, work_folder

from sda_cli.data import cifar10


def _cli(*args: str, threads: int) -> float:
    """Run ``python -m sda_cli ARGS`` and return its wall seconds; fail loudly if it fails."""
    start = time.perf_counter()
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sda_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sda {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return time.perf_counter() - start


def _read(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.load(folder / name) for name in names])).double()


def model_rows(args: argparse.Namespace, work: Path, sigma: float) -> list[list[str]]:
    """The draw and std ratios of the model at each step count, through the command line."""
    clean = cifar10(DEFAULT_DATA if args.data is None else args.data, train=False).images[: args.count]
    x = clean.permute(0, 2, 3, 1).double() / 255
    generator = torch.Generator().manual_seed(1234)
    y = x + sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    noisy = work / f"noisy-{sigma}"
    noisy.mkdir(exist_ok=True)
    names = [f"{i:04d}.npy" for i in range(args.count)]
    for name, image in zip(names, y, strict=True):
        np.save(noisy / name, image.float().numpy())
    common = ["--sigma", repr(sigma), "--seed", "0", "--precision", args.precision, "-q", "--model", str(args.model)]
    mmse_dir = work / f"mmse-{sigma}"
    _cli("denoise", str(noisy), "-o", str(mmse_dir), "--method", "mmse", *common, threads=args.threads)
    mmse_error = (_read(mmse_dir, names) - x).square().sum()
    rows = []
    for steps in args.steps:
        mean_dir, std_dir = work / f"mean-{sigma}-{steps}", work / f"std-{sigma}-{steps}"
        seconds = _cli(
            "denoise", str(noisy), "-o", str(mean_dir), "--std", str(std_dir), "--method", "mean",
            "--samples", str(args.samples), "--steps", str(steps), *common, threads=args.threads,
        )  # fmt: skip
        mean, std = _read(mean_dir, names), _read(std_dir, names)
        rows.append(_row("model", sigma, steps, args.samples, x, mmse_error, mean, std, seconds / args.count))
    return rows


def _row(
    kind: str,
    sigma: float,
    steps: int,
    k: int,
    x: torch.Tensor,
    mmse_error: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    seconds: float | None,
) -> list[str]:
    mean_error = (mean - x).square().sum()
    variance = std.square().sum()
    draw_error = mean_error + (k - 1) / k * variance
    draw_ratio = float(draw_error / mmse_error)
    std_ratio = float(mean_error / ((1 + 1 / k) * variance))
    verdict = "pass" if 1.9 <= draw_ratio <= 2.1 and 0.9 <= std_ratio <= 1.1 else "FAIL"
    time_cell = f"{seconds:.2f}" if seconds is not None else "–"
    return [kind, f"{sigma:g} ({255 * sigma:.1f}/255)", str(steps), str(k), f"{draw_ratio:.3f}", f"{std_ratio:.3f}",
            verdict, time_cell]  # fmt: skip


def oracle_rows(args: argparse.Namespace, sigma: float) -> list[list[str]]:
    """The same ratios for the exact denoiser of a Gaussian fitted to CIFAR-10: the sampler's own error."""
    sys.path.insert(0, str(ROOT / "tests"))
    from oracle import GaussianDenoiser

    from sda_cli import guidance
    from sda_cli.schedule import make_schedule

    train = cifar10(DEFAULT_DATA if args.data is None else args.data, train=True).images[:20_000]
    data = train.double().div(127.5).sub(1).flatten(1)
    oracle = GaussianDenoiser(data.mean(0), torch.cov(data.T), make_schedule({"name": "cosine"}))
    generator = torch.Generator().manual_seed(0)
    x = oracle.sample(args.oracle_count, generator)
    sigma_y = 2 * sigma
    y = x + sigma_y * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    mmse_error = (guidance.MatchedPosterior(oracle, y, sigma_y).mean() - x).square().sum()
    rows = []
    for steps in args.steps:
        posterior = guidance.MatchedPosterior(oracle, y, sigma_y, steps=steps)
        draws = torch.stack([posterior.sample(generator=generator) for _ in range(args.samples)])
        mean, std = draws.mean(0), draws.std(0)
        rows.append(_row("oracle", sigma, steps, args.samples, x, mmse_error, mean, std, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints" / "cifar10.safetensors")
    parser.add_argument("--data", type=Path, default=None, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--count", type=int, default=64, help="test images per sigma")
    parser.add_argument("--oracle-count", type=int, default=256, help="Gaussian draws per sigma for the oracle rows")
    parser.add_argument("--samples", type=int, default=2, help="K draws per image")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--steps", type=int, nargs="+", default=[128])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    with work_folder(args.work, "sda-calibration-") as work:
        for sigma in args.sigmas:
            if not args.no_oracle:
                rows += oracle_rows(args, sigma)
            rows += model_rows(args, work, sigma)
            print(table(COLUMNS, rows), file=sys.stderr, flush=True)
    print(header("Calibration of posterior draws and of the --std map", checkpoint_line(args.model)))
    print(f"{args.count} exact CIFAR-10 test images per sigma (float .npy inputs, exact Gaussian noise); oracle: "
          f"{args.oracle_count} draws of the Gaussian fitted to 20,000 train images, its exact denoiser. Required: "
          "draw ratio in [1.9, 2.1] and std ratio in [0.9, 1.1].\n")  # fmt: skip
    print(table(COLUMNS, rows))


COLUMNS = ["denoiser", "sigma", "steps", "K", "draw ratio (2)", "std ratio (1)", "verdict", "s/image"]

if __name__ == "__main__":
    main()
