"""The published diffusers DDPMs as sda priors: seconds per network evaluation, and the time and peak memory of each
command on a 256 × 256 photo.

What. The architectures of ``google/ddpm-cifar10-32`` (35.7M parameters, trained at 32 × 32) and
``google/ddpm-celebahq-256`` (113.7M, at 256 × 256), built from their published ``config.json`` with random weights
(``torch.manual_seed(0)``) and their scheduler config (``DDPMScheduler``, linear betas 1e-4 to 0.02 over 1,000
steps, epsilon prediction), saved as pipeline folders (``DDPMPipeline.save_pretrained``: ``model_index.json``,
``unet/``, ``scheduler/``, safetensors weights) and passed to ``sda`` as ``--model DIR``, as a user passes a
downloaded one. Per model:

* seconds per network evaluation at its own size, batch 1, at the CLI's default precision (``auto``: bf16 where
  the CPU computes it natively), the median of ``--repeats`` timed calls after one warm-up, in this process;
* on a 256 × 256 crop of the first McMaster photo (8-bit PNG; timing only, never tuned on), the wall seconds and
  the peak resident memory of the whole command (``_common.run_cli``; process start and model load included):
  ``sda denoise --sigma 0.1`` (mmse: one evaluation, tiled), ``sda denoise --method posterior --sigma 0.1`` (one
  posterior draw at the default steps), ``sda sample -n 1`` (at the model's own size, default sampler and steps),
  and ``sda restore`` (pnp, default settings) of that crop blurred by a Gaussian of std 1.6 pixels with noise 0.01
  (``sda degrade``). The 32 × 32 model covers the 256² crop in overlapping tiles of its own size.

What this verifies, and what it cannot. The arithmetic of a diffusers DDPM in sda (x̂ equal to diffusers'
``pred_original_sample``, DDIM equal to ``DDIMScheduler``) is tested in ``tests/test_diffusers.py``; this script
measures the cost of the published architectures through every command. With random weights the images mean
nothing: the quality of the real weights cannot be measured here (no download), only their speed and memory, which
do not depend on the weights' values.

How: ``python benchmarks/diffusers_speed.py --threads 2`` on an otherwise idle machine (``--architectures
cifar10-32`` for a quicker run).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import MCMASTER, arguments, header, parse, report, run_cli, table, work_folder
from PIL import Image

TITLE = "Pretrained diffusers DDPMs as priors: speed and memory"

_COMMON = {
    "in_channels": 3, "out_channels": 3, "layers_per_block": 2, "act_fn": "silu", "attention_head_dim": None,
    "center_input_sample": False, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-6, "norm_num_groups": 32, "time_embedding_type": "positional",
}  # fmt: skip
ARCHITECTURES: dict[str, dict[str, object]] = {
    "cifar10-32": {
        **_COMMON,
        "sample_size": 32,
        "block_out_channels": [128, 256, 256, 256],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    },
    "celebahq-256": {
        **_COMMON,
        "sample_size": 256,
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    },
}
"""The UNet2DModel configs of ``google/ddpm-cifar10-32`` and ``google/ddpm-celebahq-256`` as published."""
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
             "clip_sample": True, "variance_type": "fixed_small"}  # fmt: skip


def build(name: str, folder: Path) -> tuple[Path, int]:
    """The pipeline folder of architecture ``name`` with random weights, and its parameter count."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**ARCHITECTURES[name])
    path = folder / name
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**SCHEDULER)).save_pretrained(path)
    return path, sum(p.numel() for p in unet.parameters())


def seconds_per_evaluation(path: Path, repeats: int) -> float:
    """The median seconds of one network evaluation at the model's own size, batch 1, default precision."""
    from sda_cli import load_model

    model = load_model(path)
    size = model.image_size
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.no_grad():
        model(x, 0.5)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, 0.5)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo(folder: Path) -> Path:
    """A 256 × 256 crop of the first McMaster photo, as an 8-bit PNG."""
    source = sorted(MCMASTER.glob("*"), key=lambda p: (len(p.stem), p.stem))[0]
    pixels = np.asarray(Image.open(source).convert("RGB"))[:256, :256]
    path = folder / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def main() -> None:
    parser = arguments(__doc__, threads=2, work=True)
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=3, help="timed network evaluations (default: 3)")
    args = parse(parser)
    rows, evaluations = [], []
    with work_folder(args.work, "sda-diffusers-") as work:
        image = photo(work)
        blurred = work / "blurred.png"
        run_cli("degrade", str(image), "--blur", "1.6", "--sigma", "0.01", "--seed", "0", "-o", str(blurred),
                threads=args.threads, check=True)  # fmt: skip
        for name in args.architectures:
            path, count = build(name, work)
            per_eval = seconds_per_evaluation(path, args.repeats)
            size = ARCHITECTURES[name]["sample_size"]
            evaluations.append([name, f"{count / 1e6:.1f}M", f"{size}²", f"{per_eval:.3f}"])
            commands = {
                "denoise (mmse)": ["denoise", str(image), "--sigma", "0.1", "-o", str(work / "mmse.png")],
                "denoise --method posterior (1 draw)": [
                    "denoise", str(image), "--sigma", "0.1", "--method", "posterior", "-o", str(work / "draw.png")
                ],
                f"sample -n 1 ({size}²)": ["sample", "-n", "1", "-o", str(work / "sample.png")],
                "restore (pnp, blur 1.6)": ["restore", str(blurred), "--blur", "1.6", "--sigma", "0.01", "-o",
                                            str(work / "restored.png")],
            }  # fmt: skip
            for command, cli_args in commands.items():
                done = run_cli(*cli_args, "--model", str(path), "--seed", "0", "-q", threads=args.threads)
                seconds = f"{done.seconds:.1f}" if done.error is None else f"failed: {done.error}"
                rows.append([name, command, seconds, f"{done.memory / 1024:.2f}"])
                print(name, command, seconds, flush=True)
    text = header(TITLE, "none: the published architectures with random weights (speed and memory only)")
    text += "\n" + table(["model", "parameters", "size", "seconds per evaluation"], evaluations)
    text += "\n\n" + table(["model", "command (on a 256×256 photo)", "seconds", "peak memory (GiB)"], rows)
    text += (
        "\n\nRandom weights: these are the costs of the real models, not their quality, which cannot be measured "
        "here (no download). Their arithmetic in sda equals diffusers' own (tests/test_diffusers.py)."
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
