"""What clipping costs the MMSE denoiser, and what imputing the clipped pixels wins back.

For each ``--sigmas`` level, the first ``--count`` exact CIFAR-10 test images get the same noise n (seed 0) and
are denoised by the posterior mean ``sda_cli.guidance.MatchedPosterior(denoiser, y, 2 sigma).mean()`` (in-process,
the checkpoint's network at ``--precision``, ``sda_cli.load_model``) from three versions of one observation:

* float: ``y = x + sigma n``, unclipped (the exact matched-time identity holds);
* 8-bit: ``round(clip(y, 0, 1) 255) / 255``, what ``sda noise`` writes to a PNG, taken at face value
  (``sda denoise --clipped off``);
* 8-bit imputed: the same file with its pixels at 0 and 1 replaced by their truncated-normal means
  (``sda_cli.clipping.impute_clipped``) around an estimate of the clean image: the network's MMSE estimate (one
  round, one more evaluation), or the local mean of the observation (``--rounds`` rounds of a one-pixel Gaussian
  blur; ``sda denoise --clipped auto`` uses three).

PSNR per image (peak 1, estimates clipped to [0, 1]), averaged; the fraction of clipped pixel values.

Run from the repository root:

    python benchmarks/clipping.py --model checkpoints/cifar10.safetensors --count 1000
"""

from __future__ import annotations

import torch
from _common import arguments, checkpoint_line, header, parse, psnr, report, table

from sda_cli import load_model
from sda_cli.clipping import impute_clipped
from sda_cli.data import cifar10
from sda_cli.guidance import MatchedPosterior

TITLE = "Clipped 8-bit inputs: MMSE PSNR lost and recovered"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""


def main() -> None:
    parser = arguments(__doc__, model="cifar10", count=1000, count_help="test images (the first ones)", data_dir=True)
    parser.add_argument("--sigmas", default="0.1,0.2,0.3")
    parser.add_argument("--rounds", default="1,3", help="local-mean imputation rounds to compare")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--precision", default="auto")
    args = parse(parser)
    denoiser = load_model(args.model, device="cpu", precision=args.precision)  # channels-last
    clean = cifar10(args.data_dir, train=False, download=False).images[: args.count].float() / 255
    rounds = [int(r) for r in args.rounds.split(",")]

    def denoise(y: torch.Tensor, sigma: float, imputation: str = "none", rounds: int = 1) -> torch.Tensor:
        """MMSE pixels of pixel observations, batch by batch, after ``imputation`` (none, network, local mean)."""
        out = []
        for part in y.split(args.batch_size):
            observation = 2 * part - 1

            def estimate(v: torch.Tensor) -> torch.Tensor:
                return MatchedPosterior(denoiser, v, 2 * sigma).mean()

            if imputation == "network":
                observation = impute_clipped(observation, 2 * sigma, estimate, rounds=1)
            elif imputation == "local mean":
                observation = impute_clipped(observation, 2 * sigma, rounds=rounds)
            out.append((estimate(observation) + 1) / 2)
        return torch.cat(out).clamp(0, 1)

    rows = []
    generator = torch.Generator().manual_seed(0)
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        y = clean + sigma * torch.randn(clean.shape, generator=generator)
        quantised = (y.clamp(0, 1) * 255).round() / 255
        fraction = float(((quantised == 0) | (quantised == 1)).float().mean())
        values = [psnr(denoise(y, sigma), clean).mean(), psnr(denoise(quantised, sigma), clean).mean()]
        values.append(psnr(denoise(quantised, sigma, "network"), clean).mean())
        values += [psnr(denoise(quantised, sigma, "local mean", r), clean).mean() for r in rounds]
        row = [f"{sigma:g}", f"{fraction:.3f}", *(f"{float(v):.2f}" for v in values)]
        row.append(f"{float(values[0] - values[1]):.2f}")
        row += [f"{float(values[0] - v):.2f}" for v in values[2:]]
        rows.append(row)
        print(" | ".join(row), flush=True)

    imputations = ["network", *(f"local mean ×{r}" for r in rounds)]
    columns = ["σ", "clipped fraction", "float", "8-bit as is", *(f"imputed: {name}" for name in imputations)]
    columns += ["loss as is", *(f"loss: {name}" for name in imputations)]
    text = "\n".join(
        [
            header(TITLE, checkpoint_line(args.model)),
            f"First {args.count} exact CIFAR-10 test images, noise seed 0, mmse, precision {args.precision}. dB.\n",
            table(columns, rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
