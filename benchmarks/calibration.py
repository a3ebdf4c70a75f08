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

Rows. ``model, raw draws`` are the draws as the sampler gives them; ``model (inflation λ)`` the draws inflated about
the posterior mean by the factor the checkpoint holds (``sda_cli/inflation.py``; λ = 1 for a checkpoint without a
table, whose default, SURE per image, ``--inflation sure`` measures).
Both come from one run: the raw mean and spread follow from the inflated ones, ``mean_raw = m + (mean - m) / λ`` and
``s_raw = s / λ``. The column ``K = 8 (predicted)`` gives the std ratio that the default ``--method mean`` (K = 8)
would have, from the same sums, for draws centred on ``m``: ``(E|x - m|² + E s²/8) / ((1 + 1/8) E s²)``.

``--inflation sure`` replaces both rows by one, ``model (SURE, per image)``: the draws of ``--inflation sure``, each
image inflated by its own factor from Stein's unbiased risk estimate of its error (``sda_cli/inflation.py``), which
needs no images held out.

Fit. ``--fit`` measures the factor λ = (E|x - m|² / E|draw - m|²)^½ at each ``--fit-sigmas`` level on
``--fit-count`` CIFAR-10 test images that are neither trained on nor used for the table (the lossy JPEG copies of the
9,000 test images outside the exact 1,000, evenly spread over the classes), from K = ``--samples`` raw draws at the
first ``--steps``, and writes the table into the checkpoint's config (``calibration.inflation``, with a note of what it
was fitted on); the weights are untouched. The fit is ``sda_cli.calibration`` (``calibrate`` then
``write_calibrated``, with the checkpoint as its own output), what ``sda calibrate`` runs, in this process at
``--precision``, with the noise and draws of seed 0.

Photos. ``--photos N`` measures on N crops of the McMaster photos instead (``--crop`` pixels a side, default 96:
crop i is taken from photo i mod 18, at the i div 18-th of a fixed set of positions, float noise as above), with no
oracle row; ``--fit --fit-photos N`` fits on N crops of the BSDS400 photos (the photo model's training photos,
chosen the same way), never on McMaster; ``--fit --fit-mosaics N`` fits on N mosaics of held-out CIFAR-10 test images
(3 × 3 for the default crop of 96: :func:`held_out_mosaics`), which the photo model has not seen: the JPEG copies, or
with ``--exact-mosaics`` the exact 1,000 (full colour resolution).

The decomposition row ``oracle`` runs the same sampler (``sda_cli`` core, same steps and grid) on the exact
denoiser of the Gaussian fitted to 20,000 CIFAR-10 training images (mean and full 3072 × 3072 covariance), on draws
of that Gaussian: what the sampler's discretisation alone gives, with no model error. The rest of the gap between
the model row and 2 is the model's.

Run from the repository root:

    python benchmarks/calibration.py --model checkpoints/cifar10.safetensors --fit --fit-count 32
    # the same fit on your own images, into a copy: sda calibrate IMAGES --model M -o M-calibrated.safetensors
    python benchmarks/calibration.py --model checkpoints/cifar10.safetensors --count 64 --samples 2 --record
    python benchmarks/calibration.py --model checkpoints/photo.safetensors --fit --fit-photos 32 \
        --fit-sigmas 0.0588 0.098 0.196          # 15, 25 and 50/255
    python benchmarks/calibration.py --model checkpoints/photo.safetensors --photos 18 --samples 4 \
        --sigmas 0.0588 0.098 0.196 --steps 32 64 128 --record
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from _common import (
    DEFAULT_DATA,
    MCMASTER,
    PHOTOS,
    ROOT,
    arguments,
    checkpoint_line,
    header,
    parse,
    report,
    run_cli,
    table,
    work_folder,
)
from PIL import Image

from sda_cli.calibration import STEPS, calibrate, write_calibrated
from sda_cli.checkpoint import read_metadata
from sda_cli.data import cifar10, cifar_mosaics
from sda_cli.inflation import inflation_factor
from sda_cli.models import load_model

TITLE = "Calibration of posterior draws and of the --std map"
FIT_TITLE = "Inflation factors of posterior draws"
COLUMNS = ["denoiser", "sigma", "steps", "K", "draw ratio (2)", "std ratio (1)", "std ratio, K = 8 (predicted)",
           "verdict", "s/image"]  # fmt: skip


def _read(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.load(folder / name) for name in names])).double()


def held_out_images(count: int) -> torch.Tensor:
    """``count`` test images outside the exact 1,000 (lossy JPEG copies), evenly spread, ``(N, H, W, 3)`` float64."""
    archive = np.load(DEFAULT_DATA / "cifar10_test10k_jpeg.npz")
    candidates = np.flatnonzero(archive["official_index"] == -1)
    chosen = candidates[np.linspace(0, len(candidates) - 1, count).round().astype(int)]
    data, offsets = archive["jpeg_bytes"], archive["offsets"]
    images = [
        np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in chosen
    ]
    return torch.from_numpy(np.stack(images)).double() / 255


def held_out_mosaics(count: int, side: int, exact: Path | None = None) -> torch.Tensor:
    """``count`` mosaics of ``side // 32`` × ``side // 32`` CIFAR-10 test images that the photo model never saw, each
    in one mosaic, in a seeded random order (``sda_cli.data.cifar_mosaics``, as the photo model's training mixes in
    mosaics of the training images): the JPEG copies outside the exact 1,000 (:func:`held_out_images`: 4:2:0 chroma,
    as the BSDS400 photos), or with ``exact`` (the folder holding ``cifar-10-batches-py/``) the exact 1,000 (full
    colour resolution, as the McMaster photos); ``(N, 3, H, W)`` float32."""
    k = side // 32
    if k < 1:
        raise SystemExit(f"mosaics need --crop of at least 32, got {side}")
    if exact is None:
        images = held_out_images(count * k * k).permute(0, 3, 1, 2).float()
    else:
        images = cifar10(exact, train=False, download=False).images[: count * k * k].float() / 255
    return torch.stack(cifar_mosaics(images, count, torch.Generator().manual_seed(0)))


CROP_POSITIONS = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25))
"""Centres of the crops taken from each photo, as fractions of its height and width, in the order they are used."""


def photo_crops(folder: Path, count: int, side: int) -> torch.Tensor:
    """``count`` crops of ``side`` pixels from the photos of ``folder`` (numeric names in their order, else by name):
    crop i from photo i mod P at position i div P of :data:`CROP_POSITIONS`; ``(N, side, side, 3)`` float64."""
    files = sorted((f for f in folder.iterdir() if f.suffix.lower() in {".tif", ".tiff", ".jpg", ".png"}),
                   key=lambda f: (int(f.stem) if f.stem.isdigit() else 0, f.name))  # fmt: skip
    if count > len(files) * len(CROP_POSITIONS):
        raise SystemExit(f"at most {len(files) * len(CROP_POSITIONS)} crops of {folder}, asked for {count}")
    crops = []
    for i in range(count):
        image = np.asarray(Image.open(files[i % len(files)]).convert("RGB"))
        across, down = CROP_POSITIONS[i // len(files)]
        top = min(max(round(down * image.shape[0]) - side // 2, 0), image.shape[0] - side)
        left = min(max(round(across * image.shape[1]) - side // 2, 0), image.shape[1] - side)
        crops.append(image[top : top + side, left : left + side])
    return torch.from_numpy(np.stack(crops)).double() / 255


def _denoise_files(
    args: argparse.Namespace, work: Path, tag: str, x: torch.Tensor, sigma: float, steps: int, inflation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Float noisy files of ``x``; then through the CLI the mmse estimate and the mean and std of K draws:
    ``(m, mean, s, seconds per image of the draws)``, pixel units, ``(N, H, W, C)``."""
    generator = torch.Generator().manual_seed(1234)
    y = x + sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    noisy = work / f"{tag}-noisy-{sigma}"
    noisy.mkdir(exist_ok=True)
    names = [f"{i:04d}.npy" for i in range(len(x))]
    for name, image in zip(names, y, strict=True):
        np.save(noisy / name, image.float().numpy())
    common = ["--sigma", repr(sigma), "--seed", "0", "--precision", args.precision, "-q", "--model", str(args.model)]
    mmse_dir = work / f"{tag}-mmse-{sigma}"
    run_cli("denoise", str(noisy), "-o", str(mmse_dir), "--method", "mmse", *common, threads=args.threads, check=True)
    mean_dir, std_dir = work / f"{tag}-mean-{sigma}-{steps}", work / f"{tag}-std-{sigma}-{steps}"
    seconds = run_cli(
        "denoise", str(noisy), "-o", str(mean_dir), "--std", str(std_dir), "--method", "mean", "--inflation", inflation,
        "--samples", str(args.samples), "--steps", str(steps), *common, threads=args.threads, check=True,
    ).seconds  # fmt: skip
    return _read(mmse_dir, names), _read(mean_dir, names), _read(std_dir, names), seconds / len(x)


def std_ratio(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, k: int) -> float:
    """E|x - mean_K|² / ((1 + 1/K) E s²) over all pixels: 1 when the std map of K draws is honest (module
    docstring)."""
    return float((mean - x).square().sum() / ((1 + 1 / k) * std.square().sum()))


def _row(
    kind: str,
    sigma: float,
    steps: int,
    k: int,
    x: torch.Tensor,
    m: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    seconds: float | None,
) -> list[str]:
    """The ratios from the sums over all pixels: mean_k |x - d_k|² = |x - mean|² + (K - 1)/K s²."""
    mmse_error = (m - x).square().sum()
    mean_error = (mean - x).square().sum()
    variance = std.square().sum()
    draw_ratio = float((mean_error + (k - 1) / k * variance) / mmse_error)
    spread = std_ratio(x, mean, std, k)
    predicted = float((mmse_error + variance / 8) / ((1 + 1 / 8) * variance))
    verdict = "pass" if 1.9 <= draw_ratio <= 2.1 and 0.9 <= spread <= 1.1 and 0.9 <= predicted <= 1.1 else "FAIL"
    time_cell = f"{seconds:.2f}" if seconds is not None else "–"
    return [kind, f"{sigma:g} ({255 * sigma:.1f}/255)", str(steps), str(k), f"{draw_ratio:.3f}", f"{spread:.3f}",
            f"{predicted:.3f}", verdict, time_cell]  # fmt: skip


def fit(args: argparse.Namespace) -> list[list[str]]:
    """Fit the inflation factor at each sigma on held-out images (``sda_cli.calibration``, as ``sda calibrate``) and
    write the table into the checkpoint. Rows: sigma, the raw draws' spread over the MMSE error (1/λ²), λ."""
    if args.fit_photos:
        x = photo_crops(PHOTOS / "bsds400", args.fit_photos, args.crop).permute(0, 3, 1, 2).float()
        what = f"{args.fit_photos} crops of {args.crop}×{args.crop} pixels of BSDS400 photos, float Gaussian noise"
    elif args.fit_mosaics:
        x = held_out_mosaics(args.fit_mosaics, args.crop, args.data_dir if args.exact_mosaics else None)
        what = f"{fitted_on(args)}, float Gaussian noise"
    else:
        x = held_out_images(args.fit_count).permute(0, 3, 1, 2).float()
        what = f"{args.fit_count} CIFAR-10 test images outside the exact 1,000 (JPEG copies), float Gaussian noise"
    model = load_model(args.model, device="cpu", precision=args.precision)
    fitted = calibrate(model, x, args.fit_sigmas, samples=args.samples, steps=args.steps[0], seed=0)
    write_calibrated(args.model, args.model, fitted, fitted_on=what)
    return [[f"{level.sigma:g}", f"{level.factor**-2:.3f}", f"{level.factor:.4f}"] for level in fitted.levels]


def fitted_on(args: argparse.Namespace) -> str:
    """What the fit was measured on, for the table."""
    if args.fit_photos:
        return f"{args.fit_photos} crops of {args.crop}×{args.crop} pixels of BSDS400 photos (never McMaster)"
    if args.fit_mosaics:
        k = args.crop // 32
        source = "the exact 1,000" if args.exact_mosaics else "JPEG copies outside the exact 1,000"
        return f"{args.fit_mosaics} mosaics of {k}×{k} CIFAR-10 test images ({source}), each image in one mosaic"
    return f"{args.fit_count} held-out CIFAR-10 test images (JPEG copies outside the exact 1,000)"


def model_rows(args: argparse.Namespace, work: Path, sigma: float) -> list[list[str]]:
    """The ratios of the model's raw and inflated draws at each step count, through the command line."""
    if args.photos:
        x = photo_crops(MCMASTER, args.photos, args.crop)
    else:
        x = cifar10(args.data_dir, train=False).images[: args.count].permute(0, 2, 3, 1).double() / 255
    table = read_metadata(args.model).get("calibration", {}).get("inflation", [])
    factor = inflation_factor(table, sigma)
    table_or_raw = "auto" if table else "1"  # auto without a table is SURE, which the other branch measures
    rows = []
    for steps in args.steps:
        if args.inflation == "sure":
            m, mean, std, seconds = _denoise_files(args, work, "sure", x, sigma, steps, "sure")
            rows.append(_row("model (SURE, per image)", sigma, steps, args.samples, x, m, mean, std, seconds))
            continue
        m, mean, std, seconds = _denoise_files(args, work, "test", x, sigma, steps, table_or_raw)
        raw_mean, raw_std = m + (mean - m) / factor, std / factor
        rows.append(_row("model, raw draws", sigma, steps, args.samples, x, m, raw_mean, raw_std, None))
        rows.append(_row(f"model (inflation {factor:.3f})", sigma, steps, args.samples, x, m, mean, std, seconds))
    return rows


def oracle_rows(args: argparse.Namespace, sigma: float) -> list[list[str]]:
    """The same ratios for the exact denoiser of a Gaussian fitted to CIFAR-10: the sampler's own error."""
    sys.path.insert(0, str(ROOT / "tests"))
    from oracle import GaussianDenoiser

    from sda_cli import guidance
    from sda_cli.schedule import make_schedule

    train = cifar10(args.data_dir, train=True).images[:20_000]
    data = train.double().div(127.5).sub(1).flatten(1)
    oracle = GaussianDenoiser(data.mean(0), torch.cov(data.T), make_schedule({"name": "cosine"}))
    generator = torch.Generator().manual_seed(0)
    x = oracle.sample(args.oracle_count, generator)
    sigma_y = 2 * sigma
    y = x + sigma_y * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    m = guidance.MatchedPosterior(oracle, y, sigma_y).mean()
    rows = []
    for steps in args.steps:
        posterior = guidance.MatchedPosterior(oracle, y, sigma_y, steps=steps)
        draws = torch.stack([posterior.sample(generator=generator) for _ in range(args.samples)])
        mean, std = draws.mean(0), draws.std(0)
        rows.append(_row("oracle (exact denoiser)", sigma, steps, args.samples, x, m, mean, std, None))
    return rows


def measured_title(args: argparse.Namespace) -> str:
    """The heading of a measurement's table: one section of ``RESULTS.md`` per image set and kind of inflation."""
    kinds = [*(["photos"] if args.photos else []), *(["SURE per image"] if args.inflation == "sure" else [])]
    return TITLE + (f" ({', '.join(kinds)})" if kinds else "")


def main() -> None:
    parser = arguments(
        __doc__, model="cifar10", count=64, count_help="test images per sigma", threads=2, data_dir=True, work=True
    )
    parser.add_argument("--oracle-count", type=int, default=256, help="Gaussian draws per sigma for the oracle rows")
    parser.add_argument("--samples", type=int, default=2, help="K draws per image")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--steps", type=int, nargs="+", default=[STEPS], help=f"sampler steps (default: {STEPS})")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--inflation", choices=["auto", "sure"], default="auto", help="sure: each image's factor from SURE instead"
    )
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--fit", action="store_true", help="fit the inflation factors and write them into --model")
    parser.add_argument("--fit-count", type=int, default=32)
    parser.add_argument("--photos", type=int, default=0, help="measure on this many McMaster crops instead")
    parser.add_argument("--fit-photos", type=int, default=0, help="fit on this many BSDS400 crops instead")
    parser.add_argument(
        "--fit-mosaics", type=int, default=0, help="fit on this many mosaics of held-out CIFAR-10 test images instead"
    )
    parser.add_argument("--exact-mosaics", action="store_true", help="mosaics of the exact 1,000 test images")
    parser.add_argument("--crop", type=int, default=96, help="the side of the photo crops")
    parser.add_argument("--fit-sigmas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    args = parse(parser)
    with work_folder(args.work, "sda-calibration-") as work:
        if args.fit:
            rows = fit(args)
            title = FIT_TITLE + (" (photos)" if args.fit_photos or args.fit_mosaics else "")
            text = "\n".join(
                [
                    header(title, checkpoint_line(args.model)),
                    f"{fitted_on(args)}, K = {args.samples} raw draws at {args.steps[0]} steps; the factors go into "
                    "the checkpoint.\n",
                    table(["sigma", "E‖draw − m‖² / E‖x − m‖²", "inflation λ"], rows),
                ]
            )
        else:
            rows = []
            images = (
                f"{args.photos} crops of {args.crop}×{args.crop} pixels of the McMaster photos per sigma (float .npy "
                "inputs, exact Gaussian noise). "
                if args.photos
                else f"{args.count} exact CIFAR-10 test images per sigma (float .npy inputs, exact Gaussian noise); "
                f"oracle: {args.oracle_count} draws of the Gaussian fitted to 20,000 train images, with its exact "
                "denoiser. "
            )
            for sigma in args.sigmas:
                if not args.no_oracle and not args.photos:
                    rows += oracle_rows(args, sigma)
                rows += model_rows(args, work, sigma)
                print(table(COLUMNS, rows), file=sys.stderr, flush=True)
            text = "\n".join(
                [
                    header(measured_title(args), checkpoint_line(args.model)),
                    images + "Required: draw ratio in [1.9, 2.1] and std ratio in [0.9, 1.1].\n",
                    table(COLUMNS, rows),
                ]
            )
            title = measured_title(args)
    report(title, text, args.record)


if __name__ == "__main__":
    main()
