"""PSNR, SSIM and seconds per image of every denoising method on the same noisy 8-bit files of CIFAR-10 test images.

What. For each ``--sigmas`` level, the first ``--count`` CIFAR-10 test images are noised once and every method
denoises the same noisy files:

* sda's methods (``--methods``, any of ``sda_cli.guidance.METHODS``; by default the six below), called in-process
  through the core API, ``sda_cli.restore.denoise`` (the pipeline ``sda denoise`` runs), on the noisy pixels with
  ``bit_depth=8``, the model loaded once by ``sda_cli.load_model`` (network in float32), images batched
  (``--batch-size`` images per ``denoise`` call, divided by K for a method that draws K samples; ``denoise`` itself
  splits every network evaluation into calls of at most ``sda_cli.tiles.PIXELS_PER_CALL`` pixels, 64 CIFAR images, a
  quarter of that for the methods with backward passes), each at the defaults of its class in ``METHODS`` (steps and
  options, which the table names) but for: ``posterior`` and ``mean``, the exact posterior's draws (a ``calibrated``
  class), with ``--posterior-steps`` (default: theirs, 128), ``mean`` averaging K = ``--samples`` of them (default:
  its own, 8), their draws inflated about the posterior mean by ``--inflation`` (default ``auto``: the model's
  calibrated factor at each sigma, 1 for a model without one, as ``sda denoise``; the table names a factor other
  than 1); ``sda`` with ``--sda-steps`` steps and the corrector's ``--sda-tau`` (defaults: its own, 256 and 0.2). The
  default six are ``mmse`` (the posterior mean, one evaluation), ``posterior`` (one matched-start ancestral sample),
  ``mean``, ``langevin`` (annealed Langevin, 10 levels of 20 steps), ``guided`` (the reverse process from
  ``t_start``) and ``sda``. Each denoises the observation with its clipped pixels imputed (``clipped="auto"``:
  ``sda_cli.clipping``, from the local mean) as ``sda denoise`` does on 8-bit files (``--no-impute``:
  ``clipped="off"``, taken as they are);
* classical denoisers, given the true sigma: CBM3D (``bm3d.bm3d_rgb(noisy, sigma_psd=sigma)``), non-local means
  (``skimage.restoration.denoise_nl_means``, ``h = 0.8 sigma``, ``fast_mode``, patch 5, distance 6), total
  variation (``denoise_tv_chambolle``, its weight chosen per sigma from ``sigma`` × ``TV_FACTORS`` by the best
  mean PSNR on the first ``TV_TUNE_COUNT`` = 50 test images themselves, an oracle tuning that favours TV) and
  wavelets (``denoise_wavelet``, BayesShrink, soft thresholds, ``rescale_sigma``, ``convert2ycbcr``);
* the noisy input itself.

The expensive methods (those with steps: all of sda's but mmse) run on the first ``--slow-count`` images only
(default 100); the table says how many images each row used.

How. The clean images are written as 8-bit PNGs and the noisy ones are made by the real command line,
``python -m sda_cli noise CLEAN --sigma S --seed 0 -o NOISY -q``: y = clip(round((x + sigma n) 255) / 255), exactly
the files ``benchmarks/denoise_quality.py`` uses (the noise of image i does not depend on ``--count``, so the first
``--slow-count`` files are the same in every run). Every estimate is clipped to [0, 1] and rounded to 8 bits, as
``sda denoise`` writes it. PSNR is per image (peak 1) then averaged; SSIM is scikit-image's
``structural_similarity(data_range=1, channel_axis=2)``, averaged (both ``_common``'s). Seconds per image is compute
time only (no process start, model load or file reading; TV's tuning excluded), with ``--threads`` CPU threads;
random draws come from the stream of ``sda denoise --seed`` (independent of the noise files' stream), restarted for
each method and sigma.

The checks (per sigma, on the images both rows used): the MSE of ``posterior`` over that of ``mmse`` within 5% of
2, and that of ``mean`` (K = ``--samples``, default 8) within 5% of 1 + 1/K, which is what exact, independent
posterior draws give; two-sided, so that draws too narrow (closer to ``mmse`` than they should be) fail as well as
draws too wide. ``benchmarks/calibration.py`` measures the same ratios on float inputs, without clipping, with the
std map's. ``sda`` above both ``langevin`` and ``guided``.

Run from the repository root. A full run takes hours on 2 CPU cores: at 1 thread beside a training run the five
slow methods together took about 80 s per image at their default steps (``sda`` 35 s, ``mean`` about 32 s) and
CBM3D 1.9 s per image, so about 7 hours for the defaults; ``--slow-count`` sets most of it:

    python benchmarks/denoise_methods.py --model checkpoints/cifar10.safetensors --count 1000 --slow-count 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import (
    arguments,
    checkpoint_line,
    header,
    option_default,
    parse,
    positive,
    psnr,
    read_folder,
    report,
    run_cli,
    ssim,
    table,
    work_folder,
    write_cifar_pngs,
)

from sda_cli import load_model
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import METHODS
from sda_cli.inflation import inflation_factor
from sda_cli.restore import denoise, parse_inflation
from sda_cli.seeds import seeded_generator

TITLE = "Denoising methods: sda's posterior methods against classical denoisers"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

MODEL_METHODS = ("mmse", "posterior", "mean", "langevin", "guided", "sda")
"""sda's methods of the default ``--methods`` (any of ``sda_cli.guidance.METHODS`` may be named)."""
CLASSICAL_METHODS = ("cbm3d", "nlm", "tv", "wavelet")
CLASSICAL_NAMES = {
    "cbm3d": "CBM3D",
    "nlm": "non-local means (h = 0.8σ, fast)",
    "tv": "TV Chambolle (weight tuned)",
    "wavelet": "wavelet (BayesShrink, YCbCr)",
}

TV_FACTORS = (0.35, 0.5, 0.6, 0.7, 0.85, 1.0, 1.4, 2.0)
"""TV weights tried, in units of sigma (the best lies inside this range at sigma 0.1-0.3 on CIFAR-10)."""
TV_TUNE_COUNT = 50


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", count=1000, count_help="test images (the first ones) for the fast methods",
        data_dir=True, work=True, seed="seed of the noise files and of every method's draws",
    )  # fmt: skip
    parser.add_argument("--slow-count", type=int, default=100, help="images for the methods with steps (not mmse)")
    parser.add_argument("--sigmas", default="0.1,0.2,0.3", help="pixel-unit noise levels")
    default = ("noisy", *MODEL_METHODS, *CLASSICAL_METHODS)
    parser.add_argument(
        "--methods", default=",".join(default), help="comma list of noisy, sda's methods and the classical ones"
    )
    posterior = METHODS["posterior"].STEPS
    parser.add_argument("--posterior-steps", type=positive, default=posterior, help="steps of posterior and mean")
    samples = METHODS["mean"].SAMPLES
    parser.add_argument("--samples", type=positive, default=samples, help="K, the posterior samples averaged by mean")
    parser.add_argument("--sda-steps", type=positive, default=METHODS["sda"].STEPS, help="steps of sda")
    parser.add_argument("--sda-tau", type=float, default=option_default("sda", "tau"), help="corrector step of sda")
    parser.add_argument(
        "--inflation",
        type=parse_inflation,
        default="auto",
        help="posterior, mean: inflation of the draws, auto (the model's calibrated factor) or a number (1: raw draws)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per denoise call (divided by K for mean)")
    parser.add_argument(
        "--impute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="impute the clipped pixels first, as sda denoise --clipped auto does on 8-bit files",
    )
    args = parse(parser)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = ("noisy", *METHODS, *CLASSICAL_METHODS)
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
        parser.error(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(known)}")
    order = [*default[: 1 + len(MODEL_METHODS)], *METHODS, *CLASSICAL_METHODS]  # the table's rows in this order
    args.methods = [method for method in dict.fromkeys(order) if method in args.methods]
    args.slow_count = min(args.slow_count, args.count)
    return args


# ---------------------------------------------------------------------------------------------------------------
# Files


def make_noisy(clean_dir: Path, noisy_dir: Path, sigma: float, seed: int) -> np.ndarray:
    """``sda noise`` (8-bit PNG: clipped and quantised) of every clean file; the noisy files as floats in [0, 1]."""
    run_cli("noise", str(clean_dir), "--sigma", str(sigma), "--seed", str(seed), "-o", str(noisy_dir), "-q",
            threads=1, check=True)  # fmt: skip
    return read_folder(noisy_dir)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8 bits, as an 8-bit output file holds it."""
    return np.round(np.clip(pixels, 0, 1) * 255) / 255


# ---------------------------------------------------------------------------------------------------------------
# Methods


def slow(method: str) -> bool:
    """Whether ``method`` runs on the first ``--slow-count`` images only: sda's methods with steps (not mmse)."""
    return method in METHODS and METHODS[method].STEPS is not None


def inflation_at(denoiser: Denoiser, sigma: float, args: argparse.Namespace) -> float:
    """The factor by which ``restore.denoise`` inflates the draws of posterior and mean at ``sigma``."""
    return inflation_factor(denoiser.inflation, sigma) if args.inflation == "auto" else float(args.inflation)


def model_options(method: str, args: argparse.Namespace) -> dict[str, float | str]:
    """The options of ``restore.denoise`` for ``method`` beside its class's defaults (module docstring)."""
    kind, given = METHODS[method], {}
    if kind.calibrated:  # draws of the exact posterior: posterior, mean
        given |= {"steps": args.posterior_steps, "inflation": args.inflation}
    if kind.SAMPLES > 1:  # mean
        given["samples"] = args.samples
    if method == "sda":
        given |= {"steps": args.sda_steps, "tau": args.sda_tau}
    return given


def describe(method: str, args: argparse.Namespace, inflation: float = 1.0) -> str:
    """The table's name of a method with its settings, read from its class and :func:`model_options`
    (``inflation``: the factor of the draws of a calibrated method)."""
    if method == "noisy":
        return "noisy input"
    if method in CLASSICAL_NAMES:
        return CLASSICAL_NAMES[method]
    kind, given = METHODS[method], model_options(method, args)
    if kind.STEPS is None:
        return f"sda `{method}` (1 evaluation)"
    parts = [f"K = {given['samples']}"] if given.get("samples", 1) > 1 else []
    parts.append(f"{given.get('steps', kind.STEPS)} steps")
    parts += [f"{option.name} {given.get(option.name, option.default):g}" for option in kind.options]
    if kind.calibrated and inflation != 1.0:
        parts.append(f"inflated ×{inflation:.3g}")
    return f"sda `{method}` ({', '.join(parts)})"


def run_model(
    method: str, denoiser: Denoiser, noisy: np.ndarray, sigma: float, args: argparse.Namespace
) -> tuple[np.ndarray, float]:
    """Estimates of every noisy image (HWC pixels) and the compute seconds per image; clipped pixels imputed first, as
    ``sda denoise`` does on 8-bit files (unless ``--no-impute``)."""
    generator, _ = seeded_generator(args.seed, "denoise")  # as sda denoise --seed
    options = model_options(method, args)
    batch = max(1, args.batch_size // args.samples) if options.get("samples", 1) > 1 else args.batch_size
    clipped = "auto" if args.impute else "off"
    outputs, seconds = [], 0.0
    for start in range(0, len(noisy), batch):
        pixels = torch.from_numpy(noisy[start : start + batch]).permute(0, 3, 1, 2).float()
        started = time.perf_counter()
        estimate, _ = denoise(
            denoiser, pixels, sigma, method=method, bit_depth=8, clipped=clipped, generator=generator, **options
        )
        seconds += time.perf_counter() - started
        outputs.append(estimate.permute(0, 2, 3, 1).double().cpu().numpy())
    return np.concatenate(outputs), seconds / len(noisy)


def classical(method: str, sigma: float, tv_weight: float) -> Callable[[np.ndarray], np.ndarray]:
    """The classical denoiser ``method`` at the known ``sigma``, for one HWC image."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    if method == "cbm3d":
        import bm3d

        return lambda image: bm3d.bm3d_rgb(image, sigma_psd=sigma)
    if method == "nlm":
        return lambda image: denoise_nl_means(
            image, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1
        )
    if method == "tv":
        return lambda image: denoise_tv_chambolle(image, weight=tv_weight, channel_axis=-1)
    if method == "wavelet":
        return lambda image: denoise_wavelet(
            image,
            sigma=sigma,
            method="BayesShrink",
            mode="soft",
            rescale_sigma=True,
            channel_axis=-1,
            convert2ycbcr=True,
        )
    raise ValueError(method)


def run_classical(method: str, noisy: np.ndarray, sigma: float, tv_weight: float) -> tuple[np.ndarray, float]:
    """Estimates of every noisy image and the compute seconds per image."""
    fn = classical(method, sigma, tv_weight)
    started = time.perf_counter()
    out = np.stack([fn(image) for image in noisy])
    return out, (time.perf_counter() - started) / len(noisy)


def tune_tv(noisy: np.ndarray, clean: np.ndarray, sigma: float) -> float:
    """The TV weight of ``sigma × TV_FACTORS`` with the best mean PSNR on the first ``TV_TUNE_COUNT`` images."""
    n = min(TV_TUNE_COUNT, len(noisy))
    scores = {}
    for factor in TV_FACTORS:
        estimate, _ = run_classical("tv", noisy[:n], sigma, factor * sigma)
        scores[factor * sigma] = float(psnr(to_8bit(estimate), clean[:n]).mean())
    return max(scores, key=scores.__getitem__)


# ---------------------------------------------------------------------------------------------------------------
# Tables


def gap(results: dict[str, dict], a: str, b: str) -> tuple[float, float, int] | None:
    """Mean PSNR of ``a`` and of ``b`` on the images both used, and that count; None if one did not run."""
    if a not in results or b not in results:
        return None
    n = min(len(results[a]["psnr"]), len(results[b]["psnr"]))
    return float(results[a]["psnr"][:n].mean()), float(results[b]["psnr"][:n].mean()), n


def checks(sigma: float, results: dict[str, dict], samples: int) -> list[list[str]]:
    """The required figures at one sigma (module docstring), each with its numbers and PASS/FAIL; beside the gaps,
    what exact independent draws give (MSE ratio 1 + 1/K for the mean of K, 2 for one sample)."""
    rows = []
    for method, exact in (("mean", 1 + 1 / samples), ("posterior", 2.0)):
        name = f"{method}: MSE / mmse's MSE within 5% of {exact:.3g}"
        if method not in results or "mmse" not in results:
            rows.append([f"{sigma:g}", name, "not run", "—"])
            continue
        n = min(len(results[method]["psnr"]), len(results["mmse"]["psnr"]))
        mse = {m: float(np.power(10.0, -np.asarray(results[m]["psnr"][:n]) / 10).mean()) for m in (method, "mmse")}
        ratio = mse[method] / mse["mmse"]
        figures = f"{ratio:.3f} ({n} images); exact draws: {exact:.3f}"
        rows.append([f"{sigma:g}", name, figures, "PASS" if abs(ratio / exact - 1) <= 0.05 else "FAIL"])
    name = "sda above langevin and guided"
    found = {other: gap(results, "sda", other) for other in ("langevin", "guided")}
    parts, passed = [], True
    for other, pair in found.items():
        if pair is None:
            parts, passed = ["not run"], False
            break
        value, reference, n = pair
        parts.append(f"sda {value:.2f} vs {other} {reference:.2f} ({n} images)")
        passed = passed and value > reference
    result = "—" if parts == ["not run"] else ("PASS" if passed else "FAIL")
    rows.append([f"{sigma:g}", name, "; ".join(parts), result])
    return rows


def main() -> None:
    args = parse_args()
    model = args.model.resolve()
    checkpoint = checkpoint_line(model)
    denoiser = load_model(model, device="cpu", precision="fp32")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    tables: list[tuple[float, list[list[str]], str]] = []
    check_rows: list[list[str]] = []
    with work_folder(args.work, "sda-methods-") as workdir:
        clean = write_cifar_pngs(args.data_dir, args.count, workdir / "clean")
        for sigma in sigmas:
            noisy = make_noisy(workdir / "clean", workdir / f"noisy_{sigma:g}", sigma, args.seed)
            results: dict[str, dict] = {}
            tv_note = ""
            for method in args.methods:
                n = args.slow_count if slow(method) else args.count
                if method == "noisy":
                    estimate, seconds = noisy[:n], None
                elif method in METHODS:
                    estimate, seconds = run_model(method, denoiser, noisy[:n], sigma, args)
                else:
                    tv_weight = 0.0
                    if method == "tv":
                        tv_weight = tune_tv(noisy, clean, sigma)
                        tv_note = f" TV weight {tv_weight:.3g} (best of σ × {TV_FACTORS} on the first "
                        tv_note += f"{min(TV_TUNE_COUNT, args.count)} images)."
                    estimate, seconds = run_classical(method, noisy[:n], sigma, tv_weight)
                estimate = to_8bit(estimate)
                results[method] = {
                    "psnr": psnr(estimate, clean[:n]),
                    "ssim": ssim(estimate, clean[:n]),
                    "seconds": seconds,
                }
                r = results[method]
                print(
                    f"σ={sigma:g} {method}: {n} images, PSNR {r['psnr'].mean():.2f}, SSIM {r['ssim'].mean():.4f}, "
                    f"{'—' if seconds is None else f'{seconds:.4f}'} s/image",
                    file=sys.stderr,
                    flush=True,
                )
            rows = [
                [
                    describe(method, args, inflation_at(denoiser, sigma, args)),
                    str(len(r["psnr"])),
                    f"{r['psnr'].mean():.2f}",
                    f"{r['ssim'].mean():.4f}",
                    "—" if r["seconds"] is None else f"{r['seconds']:.4f}",
                ]
                for method, r in results.items()
            ]
            tables.append((sigma, rows, tv_note))
            check_rows += checks(sigma, results, args.samples)

    slow_ones = [method for method in args.methods if slow(method)]
    parts = [
        header(TITLE, checkpoint),
        f"First {args.count} CIFAR-10 test images ({args.slow_count} for {', '.join(sorted(slow_ones))}); noisy inputs "
        f"are 8-bit PNGs (clipped, quantised) from `sda noise --seed {args.seed}`; every estimate is clipped and "
        f"rounded to 8 bits. PSNR in dB (per image, averaged); s/image is compute time with {args.threads} "
        f"thread(s), model load and file reading excluded; draws as `sda denoise --seed {args.seed}` (a stream "
        "independent of the noise files).\n",
    ]
    for sigma, rows, tv_note in tables:
        parts.append(f"### σ = {sigma:g} ({sigma * 255:.1f}/255)\n")
        parts.append(table(["method", "images", "PSNR", "SSIM", "s/image"], rows))
        if tv_note:
            parts.append(f"\n{tv_note.strip()}")
        parts.append("")
    parts += ["### checks\n", table(["σ", "check", "figures", "result"], check_rows)]
    text = "\n".join(parts)
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
