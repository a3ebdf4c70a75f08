"""Denoising PSNR of the three parametrisations of the denoiser (edm, v, eps) at equal training budget.

For each parametrisation (see ``sda_cli/denoiser.py``) the same small U-Net is trained from the same seed,
with the same batches, learning rate and number of steps on the CIFAR-10 training set; then its EMA weights (the
network in float32) give the MMSE estimate ``sda_cli.guidance.MatchedPosterior(denoiser, y, 2 * sigma).mean()`` of
the first ``--count`` test images from float, unclipped observations ``y = x + 2 sigma n`` (model space; the same
noise for every parametrisation).
PSNR is per image in [0, 1] pixel units (peak 1, estimate clipped to [0, 1]), then averaged.

Run from the repository root:

    python benchmarks/parametrisation.py --steps 800 --batch-size 32
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import arguments, header, parse, psnr, report, table, work_folder

from sda_cli.data import cifar10
from sda_cli.denoiser import PARAMETRISATIONS, Denoiser
from sda_cli.guidance import MatchedPosterior
from sda_cli.train import TrainConfig, train

TITLE = "Parametrisation: MMSE PSNR (dB) at equal training budget"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""


def parse_args() -> argparse.Namespace:
    parser = arguments(
        __doc__, count=500, count_help="test images (the first ones)", threads=1, seed="seed of the training runs",
        data_dir=True, work=True,
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=800, help="training steps per parametrisation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    parser.add_argument("--widths", default="32,64,64", help="U-Net widths per level")
    parser.add_argument("--parametrisations", default=",".join(PARAMETRISATIONS))
    parser.add_argument("--sigmas", default="0.05,0.1,0.2,0.3,0.5", help="pixel-unit noise levels")
    return parse(parser)


def evaluate(denoiser: Denoiser, x: torch.Tensor, sigma: float, seed: int, batch: int = 100) -> float:
    """Mean PSNR (dB) of the MMSE estimate of ``x`` (model space) from ``y = x + 2 sigma n``."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    y = x + 2 * sigma * noise
    scores = []
    for start in range(0, len(x), batch):
        estimate = MatchedPosterior(denoiser, y[start : start + batch], 2 * sigma).mean()
        scores.append(psnr(((estimate + 1) / 2).clamp(0, 1), (x[start : start + batch] + 1) / 2))
    return float(torch.cat(scores).mean())


def main() -> None:
    args = parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    train_set = cifar10(args.data_dir, train=True, download=False)
    x = cifar10(args.data_dir, train=False, download=False).images[: args.count].float() / 127.5 - 1
    model = {"channels": 3, "widths": [int(w) for w in args.widths.split(",")], "blocks": 1, "attention_levels": [2]}
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        checkpoint_every=args.steps,
        seed=args.seed,
    )

    rows, params = [], 0
    with work_folder(args.work, "sda-param-") as workdir:
        for name in args.parametrisations.split(","):
            started = time.perf_counter()
            model_config = {"model": model, "denoiser": {"parametrisation": name}, "schedule": {"name": "cosine"}}
            out = workdir / f"{name}.safetensors"
            _, denoiser = train(model_config, config, train_set, out, device=torch.device("cpu"))
            seconds = time.perf_counter() - started
            denoiser.eval()
            params = sum(p.numel() for p in denoiser.backbone.parameters())
            scores = [evaluate(denoiser, x, sigma, seed=1000 + i) for i, sigma in enumerate(sigmas)]
            rows.append([name, *(f"{s:.2f}" for s in scores), f"{seconds:.0f}"])
            print(f"{name}: {' '.join(f'{s:.2f}' for s in scores)} dB (trained in {seconds:.0f} s)", flush=True)

    text = "\n".join(
        [
            header(TITLE, "none (models are trained in this run)"),
            f"U-Net widths {model['widths']}, 1 block, attention at level 2, {params:,} parameters; {args.steps} "
            f"steps, batch {args.batch_size}, lr {args.lr}, warm-up {args.warmup}, seed {args.seed}, EMA weights; "
            f"first {len(x)} CIFAR-10 test images, float unclipped y = x + sigma n.\n",
            table(["parametrisation", *(f"σ={s:g}" for s in sigmas), "train s"], rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
