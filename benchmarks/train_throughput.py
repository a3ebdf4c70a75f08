"""Training throughput (images per second) of sda's U-Net against diffusers' UNet2DModel of about the same size.

Both networks train through the same step: ``Denoiser.loss`` (edm parametrisation, cosine schedule) at
``--precision`` (``auto``, as in ``sda train``: bf16 autocast on CPUs that run it natively, float32 elsewhere),
channels-last tensors, AdamW (``foreach``), gradient clipping and the EMA update, on random 32x32 batches.
sda's model is the shipped architecture (widths 64,128,192, 2 blocks, attention at level 2); diffusers'
``UNet2DModel`` gets 2 layers per block, attention at the lowest resolution, the same head width and group count,
and ``--their-widths`` chosen to match the parameter count (both printed). The two alternate (ours, theirs, ours,
...) for ``--repeats`` rounds of ``--steps`` timed steps each, after an untimed warm-up round; the table gives
medians and the ratio ours/theirs. ``--compile`` adds our step with ``torch.compile`` (as ``sda train
--compile``), compiled during the warm-up. Also our forward FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode``; a multiply-add counts 2).

Run from the repository root:

    python benchmarks/train_throughput.py --batch-size 64 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import arguments, header, parse, report, table
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from sda_cli.checkpoint import build_denoiser
from sda_cli.denoiser import Denoiser, autocast_dtype

TITLE = "Training throughput: sda U-Net against diffusers UNet2DModel"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model (medians are reported)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--widths", default="64,128,192", help="our U-Net widths")
    parser.add_argument("--their-widths", default="64,144,192", help="UNet2DModel block_out_channels")
    parser.add_argument("--precision", default="auto", help="autocast of both steps, as `sda train --precision`")
    parser.add_argument("--compile", action="store_true", help="also time our step with torch.compile")
    return parse(parser)


class DiffusersBackbone(nn.Module):
    """``UNet2DModel`` behind our backbone interface ``F(z, c_noise)``."""

    def __init__(self, widths: tuple[int, ...], head_width: int, groups: int) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        levels = len(widths)
        self.net = UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=widths,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            attention_head_dim=head_width,
            norm_num_groups=groups,
        )

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.net(z, 1000 * c).sample


class Trainer:
    """One model's training step, as in ``sda_cli.train``: loss, backward, clip, AdamW, EMA."""

    def __init__(self, denoiser: Denoiser, batch_size: int, precision: torch.dtype | None) -> None:
        self.denoiser = denoiser.train()
        self.precision = precision
        self.denoiser.backbone.to(memory_format=torch.channels_last)
        self.params = list(denoiser.backbone.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, foreach=True)
        self.generator = torch.Generator().manual_seed(0)
        self.x = (2 * torch.rand(batch_size, 3, 32, 32, generator=self.generator) - 1).contiguous(
            memory_format=torch.channels_last
        )

    def step(self) -> None:
        t = self.denoiser.sample_times(len(self.x), generator=self.generator)
        noise = torch.randn(self.x.shape, generator=self.generator).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=self.precision or torch.float32, enabled=self.precision is not None):
            loss = self.denoiser.loss(self.x, t, noise).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1e-3)

    def images_per_second(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * len(self.x) / (time.perf_counter() - started)


def forward_flops(backbone: nn.Module) -> int:
    """FLOPs of one fp32 forward pass on one 32x32 RGB image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(torch.zeros(1, 3, 32, 32), torch.zeros(1))
    return counter.get_total_flops()


def main() -> None:
    args = parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    config = {
        "model": {"channels": 3, "widths": widths, "blocks": 2, "attention_levels": [len(widths) - 1]},
        "denoiser": {"parametrisation": "edm"},
        "schedule": {"name": "cosine"},
    }
    torch.manual_seed(0)
    ours = build_denoiser(config)
    unet = ours.backbone.config
    theirs_backbone = DiffusersBackbone(
        tuple(int(w) for w in args.their_widths.split(",")), widths[-1] // unet.heads, unet.groups
    )
    theirs = Denoiser(theirs_backbone, copy.deepcopy(ours.schedule), ours.config)
    models = {"sda UNet": ours, "diffusers UNet2DModel": theirs}
    counts = {name: sum(p.numel() for p in m.backbone.parameters()) for name, m in models.items()}
    flops = {name: forward_flops(m.backbone.eval()) for name, m in models.items()}
    precision = autocast_dtype(args.precision, torch.device("cpu"))
    if args.compile:  # the same weights, compiled (as `sda train --compile`)
        compiled = Denoiser(torch.compile(ours.backbone), ours.schedule, ours.config)
        models = {"sda UNet": ours, "sda UNet, torch.compile": compiled, "diffusers UNet2DModel": theirs}
        counts["sda UNet, torch.compile"], flops["sda UNet, torch.compile"] = counts["sda UNet"], flops["sda UNet"]

    trainers = {name: Trainer(m, args.batch_size, precision) for name, m in models.items()}
    for trainer in trainers.values():  # warm-up: allocator, autocast caches, optimiser state, compilation
        trainer.images_per_second(2)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats):
        for name, trainer in trainers.items():
            rates[name].append(trainer.images_per_second(args.steps))
        print(f"round {repeat + 1}: " + ", ".join(f"{n} {r[-1]:.1f} img/s" for n, r in rates.items()), flush=True)

    medians = {name: statistics.median(r) for name, r in rates.items()}
    rows = []
    for name in models:
        rounds = " ".join(f"{r:.1f}" for r in rates[name])
        rows.append([name, f"{counts[name]:,}", f"{flops[name] / 1e9:.3f}", f"{medians[name]:.1f}", rounds])
    parts = [
        header(TITLE, "none (untrained weights)"),
        f"Batch {args.batch_size} of 32x32 RGB, {precision or torch.float32} on CPU (--precision {args.precision}), "
        "channels-last, AdamW foreach, grad clip, EMA; "
        f"{args.repeats} alternating rounds of {args.steps} steps (after a warm-up step), medians.\n",
        table(["model", "parameters", "forward GFLOPs/img", "median img/s", "rounds img/s"], rows),
    ]
    for name in models:
        if name != "diffusers UNet2DModel":
            ratio = medians[name] / medians["diffusers UNet2DModel"]
            parts.append(f"\nratio {name} / diffusers UNet2DModel (images per second): {ratio:.3f}")
    text = "\n".join(parts)
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
