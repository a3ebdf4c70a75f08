"""PSNR, SSIM, calibration and seconds per image of sda restore's methods against classical restorations.

What. The first ``--count`` exact CIFAR-10 test images ``x`` (``sda_cli.data.cifar10``, the 1,000 of
``test_batch``) are observed through five operators (``sda_cli.operators.make_operator``), in pixel units, with
exact Gaussian noise of ``SIGMA`` = 0.01, ``y = A x + 0.01 n``, kept as float (no clipping, no quantisation):

* ``sr2`` and ``sr4``: ×2 and ×4 super-resolution, the average of each 2×2 or 4×4 block (``sda restore --scale``);
* ``random75``: 75% of the pixels missing (all three channels of 768 of the 1,024 pixels), a different seeded
  random mask for each image (:class:`ImageMasks`: ``sda_cli.operators.Mask`` holds one mask for every image of a
  batch, so this adapter of it holds one per image);
* ``box``: the centre 16×16 pixels missing (``--mask``);
* ``blur``: Gaussian blur of S = 1 pixel (``--blur 1``), symmetric boundaries.

The observations (noise and masks seeded by ``--seed``) are made once per task and every method gets the same ones.

Methods. Each of ``--methods`` (default: every method of ``sda_cli.guidance.METHODS`` that takes an operator, those
of ``sda restore``: ``pnp``, ``mmps``, ``dps``, ``diffpir``, ``sda``) runs in-process through
``sda_cli.restore.restore`` at its own defaults (``--steps`` overrides the step count of all), the model loaded once
(``sda_cli.load_model``, float32). ``pnp`` gives one deterministic estimate per image (its class does not
``draw``). For the samplers, ``restore(..., samples=K)`` draws K samples of each observation as one batch, the
observation repeated K times; here that same batch is passed with ``samples=1`` (each observation repeated K times,
draw-major, as ``restore`` repeats it), which gives the same draws from the same random stream and keeps each one.
From them:

* ``default``: what ``sda restore --method M`` writes without ``--samples``: ``pnp``'s estimate, a sampler's one
  draw;
* ``one draw``: the first draw of each image;
* ``mean of K``: the mean of the K = ``--samples`` draws, the default output of ``sda restore --samples K``;
* ``std ratio``: ``E|x - mean_K|² / ((1 + 1/K) E[s²])`` summed over all pixels and images, ``s`` the draws'
  per-pixel standard deviation (Bessel's correction, the ``--std`` map): 1 when the draws are exact posterior
  draws, as the error of the mean of K of them is the posterior variance plus its Monte-Carlo part;
* ``NFE/draw``: the network evaluations of one draw, the method object's ``nfe`` (``mmps``: each evaluation also
  runs ``solver_steps + 1`` backward passes);
* ``s/image``: wall seconds of the ``restore`` calls divided by the images, all K draws included, with
  ``--threads`` CPU threads. Images and their draws are batched into calls of at most what one network call takes
  (``sda_cli.restore.batch_pixels``: ``sda_cli.tiles.PIXELS_PER_CALL`` pixels, a quarter of it for the methods with
  backward passes), so that the vector-Jacobian products keep their forward pass.

Classical baselines, on the same observations: bicubic upsampling (``torch.nn.functional.interpolate``, bicubic,
``align_corners=False``, the centres of the blocks where the averages sit) for super-resolution; biharmonic
inpainting (``skimage.restoration.inpaint_biharmonic``, ``channel_axis=-1``) for both masks; Wiener deconvolution
(``skimage.restoration.wiener``, per channel, the blur's own 7×7 kernel) for the blur, its ``balance`` chosen from
``WIENER_BALANCES`` by the best mean PSNR on ``WIENER_TUNE_COUNT`` = 200 CIFAR-10 training images (the first ones,
observed the same way with their own noise): other images than the test ones the table uses.

PSNR is per image (peak 1), then averaged; SSIM is scikit-image's ``structural_similarity(data_range=1,
channel_axis=2)``, averaged (both ``_common``'s). Every estimate is clipped to [0, 1] for both, as an 8-bit output
file holds it; the std ratio uses the unclipped draws. The checks below the tables take, per task, the best PSNR of
any method (default, one draw or mean of K) against the baseline: ×2 at least 2.0 dB above bicubic, ×4 1.5 dB,
75% missing 2.0 dB above biharmonic, box 0.5 dB, blur 1.5 dB above Wiener; and ``mmps``'s std ratio within
[0.8, 1.25] on every task.

Run from the repository root. ``pnp`` takes about 2 s per 32×32 image on one core (24 forward passes), so 1,000
images and five tasks take about 3 hours. A full run of the samplers takes days, not hours, on this 2-core CPU: at
1 thread beside a training run, ``mmps`` (Heun's 64 steps, 3 solver steps) took about 46 s per draw per
32×32 image (about 6 minutes per image at K = 8) and ``diffpir`` about 6.5 s per draw; at K = 8 that is about 20
days of one core for ``mmps`` alone on 1,000 images and five tasks, and ``dps`` (1,000 steps with backward passes)
and ``sda`` (256 predictor-corrector steps) run more network passes per draw than ``mmps``. ``--count``,
``--tasks``, ``--methods`` and ``--samples`` cut it:

    python benchmarks/restore_quality.py --count 1000 --samples 8 --threads 2
    python benchmarks/restore_quality.py --count 200 --methods pnp --threads 1 --record
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import arguments, checkpoint_line, header, parse, psnr, report, restore_methods, ssim, table
from torch import Tensor

from sda_cli import load_model
from sda_cli.data import cifar10
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import METHODS
from sda_cli.operators import LinearOperator, Mask, gaussian_kernel, make_operator
from sda_cli.restore import batch_pixels, image_size, restore
from sda_cli.seeds import seeded_generator

TITLE = "Restoration: sda restore's methods against classical restorations"
"""The heading of this script's tables, and of its section of ``benchmarks/RESULTS.md``."""

SIGMA = 0.01
"""The observation noise in pixel units."""

TASKS = ("sr2", "sr4", "random75", "box", "blur")
TASK_NAMES = {
    "sr2": "×2 super-resolution (2×2 block average)",
    "sr4": "×4 super-resolution (4×4 block average)",
    "random75": "random 75% of pixels missing (a mask per image)",
    "box": "centre 16×16 box missing",
    "blur": "Gaussian blur S = 1",
}
BASELINES = {"sr2": "bicubic", "sr4": "bicubic", "random75": "biharmonic", "box": "biharmonic", "blur": "Wiener"}
MARGINS = {"sr2": 2.0, "sr4": 1.5, "random75": 2.0, "box": 0.5, "blur": 1.5}
"""The dB by which the best estimate must beat the task's baseline."""

STD_RANGE = (0.8, 1.25)
"""The range ``mmps``'s std ratio must fall in on every task."""

BLUR = 1.0
WIENER_BALANCES = tuple(float(b) for b in np.logspace(-4, 0, 17))
WIENER_TUNE_COUNT = 200

COLUMNS = ["method", "steps", "NFE/draw", "PSNR default", "PSNR one draw", "PSNR mean of K", "SSIM default",
           "SSIM one draw", "SSIM mean of K", "std ratio (1)", "s/image"]  # fmt: skip


class ImageMasks(Mask):
    """``sda_cli.operators.Mask`` with one mask per image: ``masks`` ``(N, 1, H, W)`` of 0 (missing) and 1 (observed)
    for a batch of ``N`` images. ``Mask`` holds one ``(C, H, W)`` mask for every image of a batch and has no
    per-image form, so this adapter keeps ``Mask``'s product, adjoint and ``observed`` (and its check of the values)
    and changes only the shape check: ``N`` images, or one (``restore`` probes the operator with one image of ones),
    which every mask then masks in turn."""

    def __init__(self, masks: Tensor) -> None:
        super().__init__(masks.reshape(-1, *masks.shape[-2:]))  # Mask's checks, the N masks read as channels
        self.mask = self.mask.reshape(masks.shape)

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        b, c, h, w = (int(n) for n in shape)
        if b not in (1, len(self.mask)) or (h, w) != tuple(self.mask.shape[-2:]):
            raise ValueError(f"{len(self.mask)} masks of {tuple(self.mask.shape[-2:])} for images {tuple(shape)}")
        return len(self.mask), c, h, w

    def part(self, index: slice | Tensor) -> ImageMasks:
        """The masks of the images ``index``."""
        return ImageMasks(self.mask[index])


def random_masks(count: int, size: int, missing: float, generator: np.random.Generator) -> Tensor:
    """``count`` masks ``(count, 1, size, size)``, each with ``round(missing · size²)`` pixels missing at random."""
    pixels = size * size
    masks = np.ones((count, pixels))
    for mask in masks:
        mask[generator.permutation(pixels)[: round(missing * pixels)]] = 0
    return torch.from_numpy(masks).reshape(count, 1, size, size)


def box_mask(size: int, box: int) -> Tensor:
    mask = torch.ones(size, size, dtype=torch.float64)
    start = (size - box) // 2
    mask[start : start + box, start : start + box] = 0
    return mask


def observe(task: str, x: Tensor, seed: int) -> tuple[Tensor, LinearOperator]:
    """The observation ``A x + SIGMA n`` in pixel units (float64, missing values 0) and the operator."""
    index = TASKS.index(task)
    size = x.shape[-1]
    if task in ("sr2", "sr4"):
        operator: LinearOperator = make_operator(scale=2 if task == "sr2" else 4)
    elif task == "random75":
        operator = ImageMasks(random_masks(len(x), size, 0.75, np.random.default_rng([seed, index])))
    elif task == "box":
        operator = make_operator(mask=box_mask(size, 16))
    else:
        operator = make_operator(blur=BLUR)
    clean = operator(x)
    generator = torch.Generator().manual_seed(1000 * seed + index)
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return operator.observed(clean + SIGMA * noise), operator


def missing_of(operator: LinearOperator, shape: Sequence[int]) -> np.ndarray:
    """``(N, H, W)`` booleans, True where a pixel is missing."""
    return (operator.observed(torch.ones(tuple(shape), dtype=torch.float64))[:, 0] == 0).numpy()


def baseline(task: str, y: Tensor, operator: LinearOperator, shape: Sequence[int], balance: float) -> Tensor:
    """The classical estimate of the task from its observations, ``(N, C, H, W)`` float64, clipped to [0, 1]."""
    if task in ("sr2", "sr4"):
        up = F.interpolate(y, size=tuple(shape[-2:]), mode="bicubic", align_corners=False)
        return up.clamp(0, 1)
    pixels = y.permute(0, 2, 3, 1).numpy()
    if task in ("random75", "box"):
        from skimage.restoration import inpaint_biharmonic

        holes = missing_of(operator, shape)
        out = [inpaint_biharmonic(image, hole, channel_axis=-1) for image, hole in zip(pixels, holes, strict=True)]
    else:
        from skimage.restoration import wiener

        psf = gaussian_kernel(BLUR).numpy()
        out = [
            np.stack([wiener(image[..., c], psf, balance) for c in range(image.shape[-1])], axis=-1) for image in pixels
        ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).clamp(0, 1)


def tune_wiener(data: Path | None, seed: int) -> tuple[float, float]:
    """The balance of ``WIENER_BALANCES`` with the best mean PSNR on the first training images, and that PSNR."""
    train = cifar10(data, train=True).images[:WIENER_TUNE_COUNT].double() / 255
    y, operator = observe("blur", train, seed + 1)
    scores = [float(psnr(baseline("blur", y, operator, train.shape, b), train).mean()) for b in WIENER_BALANCES]
    best = int(np.argmax(scores))
    return WIENER_BALANCES[best], scores[best]


def nfe(method: str, model: Denoiser, operator: LinearOperator, shape: Sequence[int], steps: int | None) -> int:
    """Network evaluations of one draw: the ``nfe`` of the method's object as ``restore`` builds it."""
    probe = torch.zeros((1, *shape[1:]))
    if isinstance(operator, ImageMasks):
        operator = operator.part(slice(0, 1))
    given = {"steps": steps} if steps is not None else {}
    kind = METHODS[method]
    return kind(model, operator(probe), 2 * SIGMA, operator=operator, shape=tuple(shape[1:]), **given).nfe


def run_method(
    method: str, model: Denoiser, y: Tensor, operator: LinearOperator, args: argparse.Namespace, **options: float
) -> tuple[Tensor, float]:
    """The K draws ``(K, N, C, H, W)`` in pixel units (unclipped; ``pnp``: its one estimate, K = 1) and the seconds
    per image; ``options`` are the method's own (``sda_cli.guidance.METHODS[method].options``), its defaults when
    none."""
    k, count = (args.samples if METHODS[method].draws else 1), y.shape[0]
    height, width = image_size(operator, *y.shape[-2:])
    per_call = batch_pixels(METHODS[method])
    chunk = max(1, per_call // (height * width) // k)
    generator, _ = seeded_generator(args.seed, "restore")
    parts = []
    start = time.perf_counter()
    for first in range(0, count, chunk):
        index = torch.arange(first, min(first + chunk, count))
        repeated = y[index].repeat(k, 1, 1, 1).float()  # draw-major, as restore repeats it
        op = operator.part(index.repeat(k)) if isinstance(operator, ImageMasks) else operator
        given = {"samples": 1, "steps": args.steps, "generator": generator, **options}
        drawn, _ = restore(model, repeated, SIGMA, op, method=method, **given)  # type: ignore[arg-type]
        parts.append(drawn.double().reshape(k, len(index), *drawn.shape[1:]))
        print(f"  {args.task} {method}: {min(first + chunk, count)}/{count} images, "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    seconds = (time.perf_counter() - start) / count
    return torch.cat(parts, dim=1), seconds


def method_row(method: str, draws: Tensor, x: Tensor, evaluations: int, seconds: float, steps: str) -> dict:
    """A table row: the default output of ``sda restore --method M`` (a sampler's one draw, ``pnp``'s estimate), and
    for the samplers one draw, the mean of K and the std ratio."""
    k = draws.shape[0]
    mean = draws.mean(0)
    one, averaged = draws[0].clamp(0, 1), mean.clamp(0, 1)
    ratio = float((mean - x).square().sum() / ((1 + 1 / k) * draws.var(0).sum())) if k >= 2 else math.nan
    sampler = METHODS[method].draws
    psnr_one, ssim_one = float(psnr(one, x).mean()), float(ssim(one, x).mean())
    return {
        "method": method, "steps": steps, "nfe": str(evaluations), "psnr_default": psnr_one, "ssim_default": ssim_one,
        "psnr_one": psnr_one if sampler else math.nan, "ssim_one": ssim_one if sampler else math.nan,
        "psnr_mean": float(psnr(averaged, x).mean()) if sampler else math.nan,
        "ssim_mean": float(ssim(averaged, x).mean()) if sampler else math.nan,
        "ratio": ratio, "seconds": seconds,
    }  # fmt: skip


def cells(row: dict) -> list[str]:
    def number(value: float | None, digits: int) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    return [row["method"], row["steps"], row["nfe"], number(row["psnr_default"], 2), number(row["psnr_one"], 2),
            number(row["psnr_mean"], 2), number(row["ssim_default"], 4), number(row["ssim_one"], 4),
            number(row["ssim_mean"], 4), number(row["ratio"], 3), number(row["seconds"], 3)]  # fmt: skip


def checks(results: dict[str, list[dict]]) -> list[list[str]]:
    """The required margins over the baselines and ``mmps``'s std ratio, from the tables' numbers."""
    rows = []
    for task, task_rows in results.items():
        base = task_rows[0]
        ours = task_rows[1:]
        if not ours:
            continue
        outputs = {"default": "psnr_default", "one draw": "psnr_one", "mean of K": "psnr_mean"}
        value, which, best = max(
            (row[key], name, row) for row in ours for name, key in outputs.items() if not math.isnan(row[key])
        )
        gain = value - base["psnr_default"]
        rows.append([
            task, f"best ({best['method']}, {which}) ≥ {base['method']} + {MARGINS[task]} dB",
            f"{value:.2f} − {base['psnr_default']:.2f} = {gain:+.2f} dB", "PASS" if gain >= MARGINS[task] else "FAIL",
        ])  # fmt: skip
        mmps = next((r for r in ours if r["method"] == "mmps"), None)
        if mmps is None:
            rows.append([task, f"mmps std ratio in [{STD_RANGE[0]}, {STD_RANGE[1]}]", "mmps not run", "–"])
        else:
            ratio = mmps["ratio"]
            ok = not math.isnan(ratio) and STD_RANGE[0] <= ratio <= STD_RANGE[1]
            shown = "needs K ≥ 2" if math.isnan(ratio) else f"{ratio:.3f}"
            rows.append([task, f"mmps std ratio in [{STD_RANGE[0]}, {STD_RANGE[1]}]", shown, "PASS" if ok else "FAIL"])
    return rows


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, model="cifar10", count=1000, count_help="test images (the first ones)", data_dir=True,
        seed="seed of the observations, masks and draws",
    )  # fmt: skip
    methods = restore_methods()
    parser.add_argument("--methods", default=",".join(methods), help="comma list of sda restore's methods")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--samples", type=int, default=8, help="K, the draws per image")
    parser.add_argument("--steps", type=int, default=None, help="steps of every method (default: each its own)")
    args = parse(parser)
    args.methods = [m for m in args.methods.split(",") if m]
    args.tasks = [t for t in args.tasks.split(",") if t]
    for method in args.methods:
        if method not in methods:
            parser.error(f"unknown method {method!r}; expected some of {', '.join(methods)}")
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r}; expected some of {', '.join(TASKS)}")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    model = load_model(args.model, device="cpu", precision="fp32")
    x = cifar10(args.data_dir, train=False).images[: args.count].double() / 255
    balance, tuned = tune_wiener(args.data_dir, args.seed) if "blur" in args.tasks else (math.nan, math.nan)
    results: dict[str, list[dict]] = {}
    sections = []
    for task in args.tasks:
        args.task = task
        y, operator = observe(task, x, args.seed)
        start = time.perf_counter()
        classical = baseline(task, y, operator, x.shape, balance)
        base_seconds = (time.perf_counter() - start) / len(x)
        name = f"{BASELINES[task]} (balance {balance:.3g})" if task == "blur" else BASELINES[task]
        base_psnr, base_ssim = float(psnr(classical, x).mean()), float(ssim(classical, x).mean())
        rows = [{
            "method": name, "steps": "–", "nfe": "–", "psnr_default": base_psnr, "psnr_one": math.nan,
            "psnr_mean": math.nan, "ssim_default": base_ssim, "ssim_one": math.nan, "ssim_mean": math.nan,
            "ratio": math.nan, "seconds": base_seconds,
        }]  # fmt: skip
        for method in args.methods:
            draws, seconds = run_method(method, model, y, operator, args)
            evaluations = nfe(method, model, operator, x.shape, args.steps)
            steps = str(args.steps if args.steps is not None else METHODS[method].STEPS)
            rows.append(method_row(method, draws, x, evaluations, seconds, steps))
        results[task] = rows
        sections.append(f"### {TASK_NAMES[task]} (`{task}`)\n\n{table(COLUMNS, [cells(r) for r in rows])}\n")
        print(sections[-1], file=sys.stderr, flush=True)
    notes = [
        f"{args.count} exact CIFAR-10 test images, observations in float with exact Gaussian noise σ_y = {SIGMA} "
        f"(pixel units), the same for every method; K = {args.samples} draws per image; methods at their own "
        "defaults" + (f" but {args.steps} steps" if args.steps is not None else "") + "; estimates clipped to [0, 1] "
        "for PSNR (dB) and SSIM. Default: what `sda restore --method M` writes without --samples (pnp's one "
        "estimate, a sampler's one draw, the baseline's estimate); s/image includes all K draws.",
    ]
    if "blur" in args.tasks:
        notes.append(
            f"Wiener's balance {balance:.3g} is the best of {len(WIENER_BALANCES)} values from 1e-4 to 1 by mean PSNR "
            f"({tuned:.2f} dB) on the first {WIENER_TUNE_COUNT} CIFAR-10 training images, not the test images."
        )
    text = "\n".join(
        [
            header(TITLE, checkpoint_line(args.model)),
            *[note + "\n" for note in notes],
            *sections,
            "### Required checks\n",
            table(["task", "check", "measured", "verdict"], checks(results)),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
