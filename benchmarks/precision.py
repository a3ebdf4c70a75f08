"""What bf16 autocast changes in the MMSE estimate, and what it saves, against float32.

The first ``--count`` exact CIFAR-10 test images get float noise (``torch.Generator`` seed 0) at each ``--sigmas``
level and are denoised in-process by the posterior mean (``sda_cli.guidance.MatchedPosterior(denoiser, y,
2 sigma).mean()``), once with the network in float32 and once under bf16 autocast: the checkpoint is loaded twice,
``sda_cli.load_model(path, device="cpu", precision=p)`` for p = fp32 and bf16, as ``sda denoise --precision fp32``
and ``bf16`` load it. Printed: PSNR of each (peak 1, estimates clipped to
[0, 1]), the largest absolute difference of the two estimates in pixel units, and the seconds of each pass (after
one untimed warm-up batch) with their ratio.

Run from the repository root:

    python benchmarks/precision.py --model checkpoints/cifar10.safetensors --count 500
"""

from __future__ import annotations

import time

import torch
from _common import arguments, checkpoint_line, header, parse, psnr, report, table

from sda_cli import load_model
from sda_cli.data import cifar10
from sda_cli.denoiser import Denoiser
from sda_cli.guidance import MatchedPosterior

TITLE = "bf16 autocast against float32 (mmse)"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""


def main() -> None:
    parser = arguments(__doc__, model="cifar10", count=500, count_help="test images (the first ones)", data_dir=True)
    parser.add_argument("--sigmas", default="0.1,0.2,0.3")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parse(parser)
    # The same weights twice, each with its network's precision set at loading (channels-last, eval mode).
    exact_model = load_model(args.model, device="cpu", precision="fp32")
    fast_model = load_model(args.model, device="cpu", precision="bf16")
    clean = cifar10(args.data_dir, train=False, download=False).images[: args.count].float() / 255

    def denoise(y: torch.Tensor, sigma: float, denoiser: Denoiser) -> tuple[torch.Tensor, float]:
        def mmse(part: torch.Tensor) -> torch.Tensor:
            return MatchedPosterior(denoiser, 2 * part - 1, 2 * sigma).mean()

        mmse(y[: args.batch_size])  # warm-up
        started = time.perf_counter()
        out = [(mmse(part) + 1) / 2 for part in y.split(args.batch_size)]
        return torch.cat(out).clamp(0, 1), time.perf_counter() - started

    rows = []
    generator = torch.Generator().manual_seed(0)
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        y = clean + sigma * torch.randn(clean.shape, generator=generator)
        exact, exact_seconds = denoise(y, sigma, exact_model)
        fast, fast_seconds = denoise(y, sigma, fast_model)
        row = [f"{sigma:g}", f"{float(psnr(exact, clean).mean()):.3f}", f"{float(psnr(fast, clean).mean()):.3f}"]
        row += [f"{float((exact - fast).abs().max()):.4f}", f"{exact_seconds:.2f}", f"{fast_seconds:.2f}"]
        row.append(f"{exact_seconds / fast_seconds:.2f}")
        rows.append(row)
        print(" | ".join(row), flush=True)

    columns = ["σ", "PSNR fp32", "PSNR bf16", "max abs Δ (pixels)", "s fp32", "s bf16", "speed-up"]
    text = "\n".join(
        [
            header(TITLE, checkpoint_line(args.model)),
            f"First {args.count} exact CIFAR-10 test images, float noise (seed 0), batches of {args.batch_size}.\n",
            table(columns, rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
